"""Shared-prefix (cascade) decode (issue 15): infernb's cascade (`ib.ops.CascadeRunner`), infernb's plain decode,
FlashInfer's best plain decode (tensor-core and CUDA-core paths) and its MultiLevelCascadeAttentionWrapper, in one
run, against the bound: the unique KV bytes (the shared prefix once, each request's own keys) at the copy rate and
the prefix's FLOPs at the GEMM rate, both measured here.

    python benchmarks/bench_cascade.py [--out DIR] [--runs N] [--flashinfer 0|1] [--sweep 0|1]

bf16, head dim 128, 32 query / 8 KV heads, page 16. Cases: 64 requests sharing a 32768-token prefix + 512 own
tokens each (target >= 3x FlashInfer's cascade and >= 3x its best plain decode), 16 sharing 8192 + 256 (target
>= 1.0x FlashInfer's best path); ``--sweep 1`` adds prefixes {1k, 4k, 16k, 64k} x batches {8, 32, 128} (+ 256 own).
Every path is checked against infernb's plain decode (itself checked against the float64 reference on 2 rows) before
it is timed. Writes ``cascade_<device>_<date>.json``.
"""
from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parse_args, write_result  # noqa: E402

HQ, HKV, D, PAGE = 32, 8, 128, 16
CASES = {"64x(32768+512)": (32768, 64, 512), "16x(8192+256)": (8192, 16, 256)}
SWEEP = [(p, b, 256) for p in (1024, 4096, 16384, 65536) for b in (8, 32, 128)]
#: the cascade runner's alternatives timed on the two main cases: (level_tile_q, overlap, level_min_keys, the levels'
#: build options)
ALTERNATIVES = [(128, False, 0, ()), (64, True, 0, ()), (64, True, 2048, ()), (64, False, 1024, ()),
                (64, True, 1024, ("-DINFERNB_PREFILL_MERGE_BATCHED",))]


def shared_batch(prefix: int, batch: int, own: int, seed: int = 0, device: str = "cuda"):
    """A cache whose `batch` sequences are forks of one `prefix`-token sequence, each with `own` tokens more; the
    queries of one decode step. Returns (cache, seq_ids, q)."""
    import torch

    import infernb as ib

    g = torch.Generator(device=device).manual_seed(seed)
    rnd = lambda n: torch.randn(n, HKV, D, device=device, dtype=torch.bfloat16, generator=g)  # noqa: E731
    cache = ib.PagedKVCache(prefix // PAGE + batch * (own // PAGE + 2) + 4, PAGE, HKV, D, dtype=torch.bfloat16,
                            device=device)
    (root,) = cache.add_sequences(1)
    cache.append([root], rnd(prefix), rnd(prefix), [prefix])
    ids = [cache.fork(root) for _ in range(batch)]
    cache.append(ids, rnd(batch * own), rnd(batch * own), [own] * batch)
    cache.free([root])                     # (its pages stay: the forks hold them)
    q = torch.randn(batch, HQ, D, device=device, dtype=torch.bfloat16, generator=g)
    return cache, ids, q


def run_case(name, prefix, batch, own, *, runs, fi, copy_tbps, gemm_tflops, parts=True):
    import torch

    from infernb import reference
    from infernb.ops.cascade import CascadeRunner
    from infernb.ops.paged_decode import DecodeRunner, plan_decode
    from infernb.profile import cuda_time_interleaved
    from infernb.profile.prefill import flashinfer_cascade, flashinfer_decode
    from infernb.testing import rel_error

    cache, ids, q = shared_batch(prefix, batch, own)
    table = cache.page_table(ids)
    kv = cache.lengths(ids)
    dp = plan_decode(kv, num_qo_heads=HQ, num_kv_heads=HKV, head_dim=D, page_size=PAGE, dtype=q.dtype)
    plain = DecodeRunner(dp, cache, table)
    casc = CascadeRunner(cache, ids)
    ref_o = plain(q, cache)[0]
    errs = {}
    # the plain decode against the float64 reference on two rows (their own tables)
    for b in (0, batch - 1):
        t1 = cache.page_table([ids[b]])
        o1, _ = reference.paged_attention(q[b:b + 1], cache.pool, t1.indptr, t1.indices, t1.last_page_len, [0, 1],
                                          causal=True)
        errs[f"infernb_decode_row{b}"] = rel_error(ref_o[b:b + 1].float().cpu(), o1.float().cpu())
        assert errs[f"infernb_decode_row{b}"] < 2e-2, errs
    fns = {"infernb_decode": lambda: plain(q, cache), "infernb_cascade": lambda: casc(q)}
    casc(q)
    level, own = casc._runners                      # the cascade's parts, timed alone (where its time goes)
    if not parts and level is not None:              # the sweep: the default and one alternative (env SWEEP_ALT)
        import os
        tq, ov, mk = (int(x) for x in os.environ.get("SWEEP_ALT", "64,1,2048").split(","))
        alt = CascadeRunner(cache, ids, level_tile_q=tq, overlap=bool(ov), level_min_keys=mk)
        fns[f"infernb_cascade_t{tq}{'_ov' if ov else ''}_k{mk}"] = lambda: alt(q)
    if parts and level is not None:
        # alternatives: the levels on 64-row tiles (t64), the own keys on a side stream beside the levels (ov), the
        # levels' units cut into pieces of at least K keys (kK: fewer CTAs, fewer partial states to merge)
        for tq, ov, mk, opts in ALTERNATIVES:
            alt = CascadeRunner(cache, ids, level_tile_q=tq, overlap=ov, level_min_keys=mk, level_options=opts)
            tag = "_mb" if opts else ""                    # (the batched split merge)
            fns[f"infernb_cascade_t{tq or 'd'}{'_ov' if ov else ''}_k{mk}{tag}"] = (lambda r_: lambda: r_(q))(alt)
        lq = q if casc._level_rows is None else q[casc._level_rows]
        fns["cascade_part_levels"] = lambda: level(lq, cache=cache)
        mb = CascadeRunner(cache, ids, level_options=("-DINFERNB_PREFILL_MERGE_BATCHED",))
        mb(q)
        level_mb = mb._runners[0]                      # the same levels with the batched split merge
        fns["cascade_part_levels_mb"] = lambda: level_mb(lq, cache=cache)
        fns["cascade_part_own"] = lambda: own(q, cache=cache)
    if fi is not None:
        for tc in (True, False):
            fns[f"flashinfer_{'tc' if tc else 'cc'}"] = flashinfer_decode(fi, q, cache.pool, table, use_tensor_cores=tc)
        fns["flashinfer_cascade"] = flashinfer_cascade(fi, q, cache.pool, casc.tree, table)
    for label, fn in fns.items():
        if label.startswith("cascade_part_"):
            continue
        out = fn()
        out = out[0] if isinstance(out, tuple) else out
        errs[label] = rel_error(out.float().cpu(), ref_o.float().cpu())
        assert errs[label] < 2e-2, (label, errs[label])
    times = cuda_time_interleaved(fns, warmup=5, runs=runs)
    # without the host: each infernb path captured in a CUDA graph and replayed; and the host's time per call
    # (back-to-back calls, no flush: where it exceeds the GPU time, the host sets the pace)
    extra = {}
    if parts:
        import time

        from infernb.profile import cuda_graph_time
        for k in [k for k in fns if k.startswith(("infernb", "cascade_part", "flashinfer_cascade"))]:
            try:
                extra[f"{k}_graph_ms"] = cuda_graph_time(fns[k], runs=runs).median_ms
            except Exception as e:  # noqa: BLE001
                extra[f"{k}_graph_error"] = f"{type(e).__name__}: {e}"
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(50):
                fns[k]()
            extra[f"{k}_host_us"] = (time.perf_counter() - t0) / 50 * 1e6
            torch.cuda.synchronize()
    st = casc.tree.stats()
    kv_bytes = 2 * st["cascade_tokens"] * HKV * D * 2          # K and V, bf16, the shared prefix read once
    prefix_flops = 4 * HQ * D * sum(lv.tokens * len(lv.rows) for lv in casc.tree.levels)
    bound_read_ms = kv_bytes / (copy_tbps * 1e12) * 1e3
    bound_flop_ms = prefix_flops / (gemm_tflops * 1e12) * 1e3
    import infernb as ib

    choice = ib.cascade_choice(cache, ids, num_qo_heads=HQ)
    row = dict(case=name, prefix=prefix, batch=batch, own=own, levels=st["levels"], read_ratio=st["read_ratio"],
               auto_choice="cascade" if choice.use else "plain", auto_reason=choice.reason,
               kv_bytes_unique=kv_bytes, prefix_flops=prefix_flops, bound_read_ms=bound_read_ms,
               bound_flops_ms=bound_flop_ms, bound_ms=max(bound_read_ms, bound_flop_ms), errors=errs)
    row.update(extra)
    for k, t in times.items():
        row[f"{k}_ms"] = t.median_ms
        row[f"{k}_p10_ms"], row[f"{k}_p90_ms"] = t.p10_ms, t.p90_ms
    best_fi = min((row[f"{k}_ms"] for k in ("flashinfer_tc", "flashinfer_cc", "flashinfer_cascade") if k in times),
                  default=None)
    if best_fi is not None:
        row["flashinfer_best_ms"] = best_fi
        row["cascade_vs_flashinfer_best"] = best_fi / row["infernb_cascade_ms"]
        row["cascade_vs_flashinfer_cascade"] = row["flashinfer_cascade_ms"] / row["infernb_cascade_ms"]
    row["cascade_vs_plain_decode"] = row["infernb_decode_ms"] / row["infernb_cascade_ms"]
    # what ib.decode runs (cascade="auto"), and the faster of infernb's two paths (did the choice pick it?)
    row["infernb_auto_ms"] = row["infernb_cascade_ms"] if choice.use else row["infernb_decode_ms"]
    row["auto_picked_faster"] = row["infernb_auto_ms"] == min(row["infernb_cascade_ms"], row["infernb_decode_ms"])
    if best_fi is not None:
        row["auto_vs_flashinfer_best"] = best_fi / row["infernb_auto_ms"]
    row["cascade_over_bound"] = row["infernb_cascade_ms"] / row["bound_ms"]
    print(name, {k: round(v, 4) for k, v in row.items() if k.endswith("_ms") and "p10" not in k and "p90" not in k},
          f"cascade x{row['cascade_vs_plain_decode']:.2f} plain", flush=True)
    del cache, q
    torch.cuda.empty_cache()
    return row


def main(argv=None) -> int:
    args = parse_args(argv, runs=30, flashinfer=1, sweep=0)
    from infernb.profile import copy_ceiling_tbps, device_name, gemm_ceiling_tflops, optional_flashinfer

    fi = optional_flashinfer() if args.flashinfer else None
    copy, gemm = copy_ceiling_tbps(), gemm_ceiling_tflops()
    print(f"copy {copy:.2f} TB/s, GEMM {gemm:.0f} TFLOP/s", flush=True)
    cases = [(n, *c) for n, c in CASES.items()]
    if args.sweep:
        cases += [(f"sweep_{b}x({p}+{o})", p, b, o) for p, b, o in SWEEP]
    rows = []
    for n, p, b, o in cases:
        try:
            rows.append(run_case(n, p, b, o, runs=args.runs, fi=fi, copy_tbps=copy, gemm_tflops=gemm,
                                 parts=not n.startswith("sweep")))
        except Exception as e:  # noqa: BLE001 -- one failing case is recorded, the others still run
            import traceback
            traceback.print_exc()
            rows.append(dict(case=n, prefix=p, batch=b, own=o, error=f"{type(e).__name__}: {e}"))
    from infernb.jit.spec import kernels_digest

    result = dict(benchmark="cascade", device=device_name(), date=dt.date.today().isoformat(),
                  flashinfer=getattr(fi, "__version__", None), kernels_digest=kernels_digest()[:16],
                  shape=dict(heads=[HQ, HKV], head_dim=D, page_size=PAGE, dtype="bf16"), copy_tbps=copy,
                  gemm_tflops=gemm, cases=rows)
    path = write_result(args.out, f"cascade_{result['device']}_{result['date']}", result)
    print(f"wrote {path}")
    return int(any("error" in r for r in rows))


if __name__ == "__main__":
    sys.exit(main())
