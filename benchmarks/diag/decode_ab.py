"""A/B of decode kernels in one device call: run this script once per checkout (PYTHONPATH=<checkout>) on the same
machine and compare the JSON lines. Each run times, on the benchmark's shape (bf16, 32 q / 8 KV heads, d 128,
page 16), its own infernb beside FlashInfer (best of its two decode paths, the cross-run noise reference), plus
RoPE / soft-cap on 64 x 4096, the HND layout, CUDA-graph replay of the small case, and (with --trace,
infernb.profile.decode_trace) each CTA's timeline. Every infernb output is checked against the float64
reference first. Diagnostic: prints, and writes the rows to --out.

    python benchmarks/diag/decode_ab.py --tag new --out /tmp/new.jsonl [--trace] [--runs 30]
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

import infernb as ib
from infernb.ops.paged_decode import DecodeRunner
from infernb.profile import cuda_graph_time, cuda_time, random_decode_batch
from infernb.testing import rel_error

SHAPE = dict(num_qo_heads=32, num_kv_heads=8, head_dim=128, page_size=16)
CASES = {"64x4096": [4096] * 64, "16x16384": [16384] * 16, "skewed": [65536] + [512] * 63, "1x32768": [32768]}


def reference(c, table, q, rope=None, variant=None):
    """float64 reference of the batch (infernb.reference.paged_attention, on the GPU)."""
    kw = {} if variant is None else variant.reference_kwargs()
    return ib.reference.paged_attention(q, c.pool, table.indptr, table.indices, table.last_page_len,
                                        layout=c.layout, rope=rope, **kw)[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tag", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--trace", action="store_true")
    ap.add_argument("--tuning", type=int, nargs="*", default=[], help="also time plans for these CTAs per SM")
    ap.add_argument("--fixed-cost", type=float, nargs="*", default=[], help="also time plans with this fixed_cost")
    ap.add_argument("--plan-fixed-cost", type=float, default=None, help="the main plans' fixed_cost")
    ap.add_argument("--cases", nargs="*", default=list(CASES))
    ap.add_argument("--define", nargs="*", default=[], help="extra -D options for every infernb kernel")
    args = ap.parse_args()
    import flashinfer as fi

    defines = tuple(f"-D{d}" for d in args.define)
    def runner(*a, extra_options=(), **kw):
        return DecodeRunner(*a, extra_options=tuple(extra_options) + defines, **kw)

    rows = []

    def emit(**r):
        r = dict(tag=args.tag, **r)
        rows.append(r)
        print(json.dumps(r), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(r) + "\n")

    ms = lambda fn: cuda_time(fn, runs=args.runs).median_ms  # noqa: E731
    ws = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    # host time per call (a one-token batch: the GPU work is shorter than the Python around it)
    import time
    cache, ids, q = random_decode_batch([16], **SHAPE)
    table = cache.page_table(ids)
    r = runner(ib.plan([1], [16], page_table=table, **SHAPE), cache, table)
    w = fi.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD", use_tensor_cores=True)
    w.plan(table.indptr, table.indices, table.last_page_len, 32, 8, 128, 16, data_type=q.dtype, q_data_type=q.dtype)
    host = {}
    for tag, fn in (("infernb", lambda: r(q)), ("flashinfer", lambda: w.run(q, cache.pool))):
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(300):
            fn()
        host[tag] = (time.perf_counter() - t0) / 300 * 1e6
        torch.cuda.synchronize()
    emit(case="1x16", variant="host_us", ms=host["infernb"] / 1e3, slowdown=host["infernb"] / host["flashinfer"],
         err=0.0, fi_host_us=host["flashinfer"])
    for name in args.cases:
        lens = CASES[name]
        layouts = ("NHD", "HND") if name in ("64x4096", "1x32768") else ("NHD",)
        for layout in layouts:
            cache, ids, q = random_decode_batch(lens, **SHAPE)
            table = cache.page_table(ids)
            c = cache if layout == "NHD" else cache.to_layout("HND")   # same page ids: the table is reused
            pool = c.pool
            nbytes = 2 * sum(lens) * 8 * 128 * 2
            pkw = {} if args.plan_fixed_cost is None else {"fixed_cost": args.plan_fixed_cost}
            p = ib.plan([1] * len(lens), lens, page_table=table, **pkw, **SHAPE)
            r = runner(p, c, table)
            ref = reference(c, table, q)
            err = rel_error(r(q)[0], ref)
            t = ms(lambda: r(q))
            row = dict(case=name, layout=layout, ms=t, TBps=nbytes / t / 1e9, err=err)
            best = None
            for tc in (True, False):
                w = fi.BatchDecodeWithPagedKVCacheWrapper(ws, layout, use_tensor_cores=tc)
                w.plan(table.indptr, table.indices, table.last_page_len, 32, 8, 128, 16, data_type=q.dtype,
                       q_data_type=q.dtype)
                ft = ms(lambda: w.run(q, pool))
                row[f"fi_{'tc' if tc else 'cc'}_ms"] = ft
                row[f"fi_{'tc' if tc else 'cc'}_err"] = rel_error(w.run(q, pool), ref)
                best = ft if best is None else min(best, ft)
            row.update(fi_ms=best, ratio=best / t)
            if name == "1x32768" and layout == "NHD":
                row["graph_ms"] = cuda_graph_time(lambda: r(q), runs=args.runs).median_ms
            emit(**row)
            if layout == "NHD" and args.tuning:          # the same kernel on plans for more CTAs than slots
                for ctas in args.tuning:
                    pt = ib.plan([1] * len(lens), lens, page_table=table, ctas_per_sm=ctas, **SHAPE)
                    rt = runner(pt, c, table)
                    terr = rel_error(rt(q)[0], ref)
                    tt = ms(lambda: rt(q))
                    emit(case=name, variant=f"plan_ctas{ctas}", ms=tt, slowdown=tt / t, err=terr, ratio=best / tt)
            if layout == "NHD":
                for fc in args.fixed_cost:
                    pt = ib.plan([1] * len(lens), lens, page_table=table, fixed_cost=fc, **SHAPE)
                    rt = runner(pt, c, table)
                    terr = rel_error(rt(q)[0], ref)
                    tt = ms(lambda: rt(q))
                    emit(case=name, variant=f"fixed_cost{fc:g}", ms=tt, slowdown=tt / t, err=terr, ratio=best / tt,
                         items=int(pt.num_items))
            if name == "64x4096" and layout == "NHD":
                for vname, kw in (("rope", dict(rope=ib.RoPE())), ("softcap", dict(variant=ib.variants.softcap(30.)))):
                    rv = runner(p, c, table, **kw)
                    verr = rel_error(rv(q)[0], reference(c, table, q, rope=kw.get("rope"), variant=kw.get("variant")))
                    vt = ms(lambda: rv(q))
                    emit(case=name, variant=vname, ms=vt, slowdown=vt / t, err=verr)
            if args.trace and layout == "NHD":
                from infernb.profile import decode_trace, trace_phases, trace_summary   # (checkouts that have it)

                raw = decode_trace(p, c, table, q, extra_options=defines)
                np.save(f"{args.out}.{name}.trace.npy", raw)
                emit(case=name, trace=trace_summary(trace_phases(raw)))
            del cache, c, pool, q, r
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
