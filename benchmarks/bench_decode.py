"""Decode attention over a paged KV cache: infernb vs FlashInfer (best of its tensor-core and CUDA-core decode)
vs torch SDPA on contiguous (unpaged) KV, bf16, 32 query / 8 KV heads, head dim 128, page 16, one run.

    python benchmarks/bench_decode.py [--out DIR] [--runs N]

The comparison itself is :func:`infernb.profile.profile_decode` (what notebook 05 shows); this script adds the
copy ceiling, references for each case's KV bytes (a streaming read that computes nothing and a device copy moving
them, infernb.profile.read), the variants and tuning alternatives against plain decode on the 64 x 4096 case (checked
against the reference, timed in the same rounds), and writes
``decode_<device>_<date>.json``. L2 is flushed before every timed call (infernb.profile.cuda_time).
"""
from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parse_args, write_result  # noqa: E402

SHAPE = dict(num_qo_heads=32, num_kv_heads=8, head_dim=128, page_size=16)
CASES = {  # name -> kv lengths
    "64x4096": [4096] * 64,
    "16x16384": [16384] * 16,
    "skewed_1x65536+63x512": [65536] + [512] * 63,
    "1x32768": [32768],
}
TARGETS = {"64x4096": 1.00, "16x16384": 1.00, "skewed_1x65536+63x512": 1.30, "1x32768": 1.30}  # x FlashInfer
VARIANT_CASE = "64x4096"
TUNING = [(3, 2)]                 # (stages, CTAs per SM) tried beside the default on VARIANT_CASE


def main(argv=None) -> int:
    args = parse_args(argv, runs=50)
    import torch

    import infernb as ib
    from infernb.ops.paged_decode import DecodeRunner
    from infernb.profile import copy_ceiling_tbps, device_name, profile_decode

    variant_rows = []

    def extra(name, ctx, row):
        cache, table, q, p = ctx["cache"], ctx["table"], ctx["q"], ctx["plan"]
        if name != VARIANT_CASE:
            return
        # occupancy / pipeline alternatives and the variants, each checked against the reference, then timed in the
        # same rounds as plain decode
        runners = {"plain": ctx["runner"]}
        for stages, ctas in TUNING:                  # (plans for the same CTAs)
            pt = ib.plan([1] * p.batch_size, p.kv_lens, page_table=table, ctas_per_sm=ctas, **SHAPE)
            r = runners[f"tuning_s{stages}_c{ctas}"] = DecodeRunner(pt, cache, table, stages=stages, ctas_per_sm=ctas)
            row[f"tuning_s{stages}_c{ctas}_err"] = ctx["rel"](r(q)[0], ctx["out"])
        slopes = ib.variants.alibi_slopes(SHAPE["num_qo_heads"]).to("cuda")
        variants = {"softcap_30": dict(variant=ib.variants.softcap(30.0)), "alibi": dict(variant=ib.variants.alibi(slopes)),
                    "rope": dict(rope=ib.RoPE()), "sliding_window_1024": dict(variant=ib.variants.sliding_window(1024))}
        from diag.decode_ab import reference      # float64 reference of a batch (rope, variant)
        errs = {}
        for vname, kw in variants.items():
            r = runners[vname] = DecodeRunner(p, cache, table, **kw)
            errs[vname] = ctx["rel"](r(q)[0], reference(cache, table, q, **kw))
        t = ctx["time_interleaved"]({k: (lambda r: lambda: r(q))(r) for k, r in runners.items()})
        pm = t["plain"].median_ms
        for k in runners:
            if k.startswith("tuning_"):
                row[f"{k}_ms"], row[f"{k}_vs_plain"] = t[k].median_ms, t[k].median_ms / pm
        for vname in variants:
            vm = t[vname].median_ms
            variant_rows.append(dict(case=name, variant=vname, ms=vm, plain_ms=pm, slowdown=vm / pm,
                                     err_vs_reference=errs[vname]))

    copy_tbps = copy_ceiling_tbps()
    rows = profile_decode(CASES, runs=args.runs, extra=extra, progress=False, **SHAPE)
    from infernb.profile.read import read_references
    for r in rows:
        r["target"] = TARGETS[r["case"]]
        r["copy_fraction"] = r["infernb_TBps"] / copy_tbps
        # references for the same bytes (not floors: a decode can beat a simple kernel): a streaming read that
        # computes nothing (the best of 24 grid shapes in a short search, then timed in rounds with the next one)
        # and torch's device copy of half of them (the same bytes moved)
        ref = read_references(r["kv_bytes"], runs=args.runs)
        r.update(read_ref_ms=ref["read_ms"], copy_same_bytes_ms=ref["copy_ms"], read_ref_shape=ref["shape"])
        for k in ("read_ref", "copy_same_bytes"):
            r[f"{k}_TBps"] = r["kv_bytes"] / (r[f"{k}_ms"] * 1e-3) / 1e12
        if "flashinfer_ms" in r:
            r["target_ms"] = r["flashinfer_ms"] / r["target"]
        if "speedup_vs_flashinfer" in r:
            r["meets_target"] = r["speedup_vs_flashinfer"] >= r["target"]
    fi = sys.modules.get("flashinfer")
    result = dict(benchmark="decode", device=device_name(), date=dt.date.today().isoformat(), torch=torch.__version__,
                  flashinfer=getattr(fi, "__version__", None), copy_TBps=copy_tbps, shape=dict(SHAPE, dtype="bf16"),
                  rows=rows, variants=variant_rows)
    path = write_result(args.out, f"decode_{device_name()}_{result['date']}", result)
    print(f"copy ceiling {copy_tbps:.2f} TB/s")
    print(f"{'case':<24}{'infernb':>18}{'flashinfer':>18}{'sdpa':>18}{'speedup':>9}{'target':>8}{'of copy':>9}"
          f"{'read ref':>10}{'copy':>9}{'target':>10}")
    for r in rows:
        f = lambda k: f"{r[k + '_ms'] * 1e3:8.1f}us {r[k + '_TBps']:4.2f}TB/s" if k + "_ms" in r else f"{'-':>18}"  # noqa
        print(f"{r['case']:<24}{f('infernb')}{f('flashinfer')}{f('sdpa')}"
              f"{r.get('speedup_vs_flashinfer', float('nan')):8.2f}x{r['target']:7.2f}x{r['copy_fraction']:8.0%}"
              f"{r['read_ref_ms'] * 1e3:8.1f}us{r['copy_same_bytes_ms'] * 1e3:7.1f}us"
              f"{r.get('target_ms', float('nan')) * 1e3:8.1f}us")
        for k in [k for k in r if k.startswith("tuning_") and k.endswith("_ms")]:
            print(f"  {r['case']} {k[7:-3]:<24} {r[k] * 1e3:8.1f}us  x{r[k[:-3] + '_vs_plain']:.3f} of plain"
                  f"  (err {r[k[:-3] + '_err']:.1e})")
    for v in variant_rows:
        print(f"  {v['case']} {v['variant']:<22} {v['ms'] * 1e3:8.1f}us  x{v['slowdown']:.3f} of plain"
              f"  (err {v['err_vs_reference']:.1e})")
    print(f"device {device_name()} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
