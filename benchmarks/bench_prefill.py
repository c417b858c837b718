"""Prefill and append attention on tensor cores, side by side with FlashInfer (fa2) and PyTorch in one run.

    python benchmarks/bench_prefill.py [--out DIR] [--runs N] [--flashinfer 0|1|2] [--flex 0|1]

Cases (issue 18; bf16, head_dim 128, 32 query / 8 KV heads):

- ``causal_8192`` / ``causal_16384``: one request of n new tokens, causal, ragged K/V: infernb, FlashInfer's ragged
  fa2 prefill, SDPA flash and cuDNN (K/V expanded to 32 heads outside the timing);
- ``append_16x512_on_8192``: 16 requests x 512 new tokens onto 8192 cached, causal, paged (page 16, NHD): infernb's
  append, FlashInfer's paged fa2 prefill;
- ``skewed``: ragged causal 1 x 16384 + 63 x 512 new tokens: infernb's balanced plan, the same kernel on a naive
  plan (one item per unit, round robin), FlashInfer fa2;
- variants on ``causal_8192``: soft-cap 30 (accurate tanhf, and the SFU's tanh as FlashInfer computes it), ALiBi,
  RoPE (Llama; ``rope_path`` auto, here the rotation pass, and the in-tile rotation), each against plain causal in
  the same rounds (FlashInfer fa2's logits_soft_cap / ALIBI /
  ROPE_LLAMA with ``--flashinfer 2``: each one more JIT build);
- FlexAttention (``--flex 1``, ``torch.compile``d, GQA, causal / window block mask) on the one-request cases, plain
  and with the same score_mods (the variants' Python functions, unchanged);
- ``window_1024``: sliding window 1024 on 8192 causal: only the window's keys are read (FlashInfer fa2's
  window_left with ``--flashinfer 2``).

Every path is checked against the float64 reference (a row sample of the long cases) before it is timed. Times:
CUDA events, median, L2 flushed, paths interleaved per round (``infernb.profile.cuda_time_interleaved``).
TFLOP/s count the visible (q, k) pairs: 4 x heads x d x pairs. The bf16 GEMM ceiling (8192^3, torch) is measured
in the same run. Writes ``prefill_<device>_<date>.json``.
"""
from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import optional_flashinfer, parse_args, prefill_config, write_result  # noqa: E402

HQ, HKV, D = 32, 8, 128
#: planner settings compared on some cases: an item's fixed cost in key tokens (pipeline restart, Q tile, epilogue)
FIXED_COSTS = [(f"fixed_cost{c}", dict(fixed_cost=float(c))) for c in (64, 1024)]


def configs():
    """Kernel configurations compared with the default on the causal cases (``PrefillRunner(config=...)``); the
    environment's ``BENCH_CONFIGS="m,block_n,sub_n,stages,ctas;..."`` replaces the list (experiments)."""
    import os

    from infernb.ops.prefill import PrefillTraits
    spec = os.environ.get("BENCH_CONFIGS")
    if spec is None:
        return [PrefillTraits(D, 64, 1, 32, 3, 3)]
    return [prefill_config(part, D) for part in filter(None, spec.split(";"))]


def wanted(case: str) -> bool:
    """``BENCH_CASES="causal_8192,..."`` runs those cases only (experiments); all by default."""
    import os
    cases = os.environ.get("BENCH_CASES")
    return cases is None or case in cases.split(",")


def main(argv=None) -> int:
    args = parse_args(argv, runs=30, flashinfer=1, flex=1)
    import numpy as np
    import torch

    import infernb as ib
    from infernb import reference
    from infernb.ops.prefill import PrefillRunner
    from infernb.ops.prefill import plan_batch
    from infernb.profile import (cuda_time, cuda_time_interleaved, device_name, flashinfer_ragged, flex_path, sdpa_paths,
                                 timing_fields, visible_pairs)
    from infernb.testing import rel_error

    fi = optional_flashinfer() if args.flashinfer else None
    dev, dt_ = "cuda", torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)
    rnd = lambda *s: torch.randn(*s, device=dev, generator=g, dtype=dt_)  # noqa: E731
    runs = args.runs
    result = dict(device=device_name(), date=str(dt.date.today()), torch=torch.__version__,
                  flashinfer=getattr(fi, "__version__", None), heads=[HQ, HKV], head_dim=D, dtype="bf16", cases=[])

    # the GEMM ceiling, measured here
    a, b = rnd(8192, 8192), rnd(8192, 8192)
    t = cuda_time(lambda: a @ b, warmup=3, runs=10)
    gemm = 2 * 8192 ** 3 / (t.median_ms * 1e-3) / 1e12
    result["gemm_tflops"] = gemm
    a = b = None
    print(f"bf16 GEMM 8192^3: {gemm:.0f} TFLOP/s")
    ws = {}

    def workspace(name):
        if name not in ws:
            ws[name] = torch.zeros(256 * 2**20, dtype=torch.uint8, device=dev)
        return ws[name]

    def check(name, out, ref_rows, rows):
        """out rows `rows` against the float64 reference rows."""
        err = rel_error(out[rows].float().cpu(), ref_rows.cpu())
        assert err < 2e-2, f"{name}: relative error {err:.2e} against the float64 reference"
        return err

    def ragged_case(name, qo, kv, *, causal=True, window=-1, variants=(), rope_cmp=False, naive=False,
                    tile_cmp=False, plan_variants=(), configs=()):
        q, k, v = rnd(sum(qo), HQ, D), rnd(sum(kv), HKV, D), rnd(sum(kv), HKV, D)
        qo_ptr, kv_ptr = np.r_[0, np.cumsum(qo)], np.r_[0, np.cumsum(kv)]
        pairs = visible_pairs(qo, kv, causal, window)
        flops = 4 * HQ * D * pairs
        # reference on a sample of rows: the last 64 queries of the first and of the last request
        ends = sorted({0, len(qo) - 1})
        rows = torch.cat([torch.arange(qo_ptr[r + 1] - min(64, qo[r]), qo_ptr[r + 1]) for r in ends])
        fns, errs = {}, {}

        def ref_rows(variant=None, rope=None):
            kw = {} if variant is None else variant.reference_kwargs()
            outs = []
            for r in ends:
                L = min(64, qo[r])
                o, _ = reference.attention(q[qo_ptr[r + 1] - L:qo_ptr[r + 1]], k[kv_ptr[r]:kv_ptr[r + 1]],
                                           v[kv_ptr[r]:kv_ptr[r + 1]], [0, L], [0, kv[r]], causal=causal,
                                           window_left=window, rope=rope, **kw)
                outs.append(o)
            return torch.cat(outs)

        def add(label, plan, variant=None, rope=None, config=None, rope_path="auto"):
            r = PrefillRunner(plan, variant=variant, rope=rope, config=config, rope_path=rope_path)
            out = r(q, k, v)[0]
            errs[label] = check(label, out, ref_rows(variant, rope), rows)
            fns[label] = lambda: r(q, k, v)

        shape = dict(num_qo_heads=HQ, num_kv_heads=HKV, head_dim=D, causal=causal, window_left=window)
        p = plan_batch(qo, kv, dtype=dt_, **shape)       # what ib.prefill plans
        fc = p.fixed_cost
        add("infernb", p)
        if tile_cmp:                                # the other query tile, same kernel family, same rounds
            add(f"infernb_tile{192 - p.tile_q}", plan_batch(qo, kv, dtype=dt_, tile_q=192 - p.tile_q, **shape))
        for cfg in configs:                          # kernel configurations, planned for their CTAs per SM
            add(f"infernb_m{cfg.m_tiles}n{cfg.block_n}k{cfg.step_n}s{cfg.stages}c{cfg.ctas_per_sm}",
                ib.plan(qo, kv, tile_q=cfg.tile_q, ctas_per_sm=cfg.ctas_per_sm, fixed_cost=cfg.fixed_cost, **shape),
                config=cfg)
        for pv_name, kw in plan_variants:           # planner settings, same kernel, same rounds
            add(f"infernb_{pv_name}", ib.plan(qo, kv, tile_q=p.tile_q, ctas_per_sm=2, **kw, **shape))
        if naive:
            add("infernb_naive_plan", ib.plan(qo, kv, tile_q=p.tile_q, ctas_per_sm=2, strategy="naive", fixed_cost=fc,
                                              **shape))
        for v_name, variant in variants:
            add(f"infernb_{v_name}", p, variant=variant)
        if rope_cmp:
            add("infernb_rope", p, rope=ib.RoPE(theta=1e4))                      # auto: the rotation pass here
            add("infernb_rope_tile", p, rope=ib.RoPE(theta=1e4), rope_path="tile")
        if fi is not None:
            def fi_ragged(label, **kw):
                fns[label] = flashinfer_ragged(fi, q, k, v, qo, kv, causal=causal, workspace=workspace(label), **kw)
                return fns[label]()
            out = fi_ragged("flashinfer_fa2", window_left=window)
            errs["flashinfer_fa2"] = check("flashinfer_fa2", out, ref_rows(), rows)
            if args.flashinfer >= 2:
                for v_name, variant in variants:
                    if v_name == "softcap30_approx":
                        continue                    # (FlashInfer's soft-cap is one path: its tanh is the SFU's)
                    kw = dict(logits_soft_cap=30.0) if v_name == "softcap30" else dict(pos_encoding_mode="ALIBI")
                    fi_ragged(f"flashinfer_fa2_{v_name}", **kw)
                if rope_cmp:
                    fi_ragged("flashinfer_fa2_rope", pos_encoding_mode="ROPE_LLAMA", rope_theta=1e4)
        if len(qo) == 1 and args.flex:             # FlexAttention on the one request, plain and each variant
            for label, smod in [("flex", None)] + [(f"flex_{n}", v.bound_mods()[0]) for n, v in variants
                                                   if n != "softcap30_approx"]:
                call, why = flex_path(q, k, v, causal=causal, score_mod=smod, window_left=window)
                if call is None:
                    print(f"{name}: {label} unavailable: {why}", flush=True)
                    continue
                fns[label] = call
                if smod is None:
                    errs[label] = check(label, call(), ref_rows(), rows)
        if len(qo) == 1 and window < 0:             # SDPA on the one request (K/V expanded to the query heads)
            calls, missing = sdpa_paths(q, k, v, causal=causal)
            for label, call in calls.items():
                errs[label] = check(label, call(), ref_rows(), rows)
                fns[label] = call
            for label, why in missing.items():
                print(f"{name}: {label} unavailable ({why})")
        times = cuda_time_interleaved(fns, warmup=5, runs=runs)
        row = dict(case=name, qo_lens=_short(qo), kv_lens=_short(kv), causal=causal, window_left=window,
                   plan_tile_q=p.tile_q, plan_ctas=p.num_ctas, plan_items=p.num_items,
                   plan_split_units=int(len(p.merge_unit)), visible_pairs=pairs, flops=flops, errors=errs,
                   **timing_fields(times, flops))
        _ratios(row, times)
        result["cases"].append(row)
        _print(row, times, gemm)

    def paged_case(name, qo, kv, page=16):
        cache = ib.PagedKVCache(sum(-(-n // page) for n in kv) + 8, page, HKV, D, dtype=dt_, device=dev)
        ids = cache.add_sequences(len(kv))
        cache.append(ids, rnd(sum(kv), HKV, D), rnd(sum(kv), HKV, D), kv)
        q = rnd(sum(qo), HQ, D)
        table = cache.page_table(ids)
        pairs = visible_pairs(qo, kv, True)
        flops = 4 * HQ * D * pairs
        p = plan_batch(qo, kv, num_qo_heads=HQ, num_kv_heads=HKV, head_dim=D, dtype=dt_, page_size=page, causal=True,
                       page_table=table)                 # what ib.append plans
        r = PrefillRunner(p, cache, table)
        out = r(q)[0]
        qo_ptr = np.r_[0, np.cumsum(qo)]
        ref, _ = reference.paged_attention(q[:qo[0]], cache.pool, table.indptr[:2], table.indices[:table.indptr[1]],
                                           table.last_page_len[:1], [0, qo[0]], causal=True)
        errs = {"infernb": check("infernb", out, ref, torch.arange(qo[0]))}
        fns = {"infernb": lambda: r(q)}
        if fi is not None:
            w = fi.BatchPrefillWithPagedKVCacheWrapper(workspace("paged"), "NHD", backend="fa2")
            i32 = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.int32, device=dev)  # noqa: E731
            w.plan(i32(qo_ptr), table.indptr, table.indices, table.last_page_len, HQ, HKV, D, page, causal=True,
                   q_data_type=dt_)
            out = w.run(q, cache.pool)
            errs["flashinfer_fa2"] = check("flashinfer_fa2", out, ref, torch.arange(qo[0]))
            fns["flashinfer_fa2"] = lambda: w.run(q, cache.pool)
        times = cuda_time_interleaved(fns, warmup=5, runs=runs)
        row = dict(case=name, qo_lens=_short(qo), kv_lens=_short(kv), causal=True, page_size=page,
                   plan_tile_q=p.tile_q, plan_ctas=p.num_ctas, plan_items=p.num_items,
                   plan_split_units=int(len(p.merge_unit)), visible_pairs=pairs, flops=flops, errors=errs)
        row.update(timing_fields(times, flops))
        _ratios(row, times)
        result["cases"].append(row)
        _print(row, times, gemm)

    alibi = ib.variants.alibi(ib.variants.alibi_slopes(HQ).to(dev))
    if wanted("causal_8192"):
        ragged_case("causal_8192", [8192], [8192], variants=[("softcap30", ib.variants.softcap(30.0)),
                                                             ("softcap30_approx",
                                                              ib.variants.softcap(30.0, approx=True)),
                                                             ("alibi", alibi)],
                    rope_cmp=True, tile_cmp=True, plan_variants=FIXED_COSTS, configs=configs())
    if wanted("causal_16384"):
        ragged_case("causal_16384", [16384], [16384], configs=configs())
    if wanted("append_16x512_on_8192"):
        paged_case("append_16x512_on_8192", [512] * 16, [8192 + 512] * 16)
    if wanted("skewed_1x16384_63x512"):
        ragged_case("skewed_1x16384_63x512", [16384] + [512] * 63, [16384] + [512] * 63, naive=True)
    if wanted("window_1024_on_8192"):
        ragged_case("window_1024_on_8192", [8192], [8192], window=1024)
    subset = "" if wanted("any-case") else "_subset"
    path = write_result(args.out, f"prefill_{result['device']}_{result['date']}{subset}", result)
    print(f"wrote {path}")
    return 0


def _short(lens):
    return lens if len(lens) <= 4 else f"{lens[0]} + {len(lens) - 1} x {lens[1]}" if len(set(lens[1:])) == 1 \
        else f"{len(lens)} requests"


def _ratios(row, times):
    """Each other path's time over infernb's (> 1: infernb is faster)."""
    base = times["infernb"].median_ms
    for label, tm in times.items():
        if label != "infernb":
            row[f"{label}_over_infernb"] = tm.median_ms / base


def _print(row, times, gemm):
    parts = [f"{k}={t.median_ms:.3f}ms ({row[k + '_tflops']:.0f} TF)" for k, t in times.items()]
    print(f"{row['case']}: " + ", ".join(parts) + f"  [GEMM {gemm:.0f} TF]", flush=True)


if __name__ == "__main__":
    sys.exit(main())
