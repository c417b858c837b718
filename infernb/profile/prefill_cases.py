"""The prefill benchmark's cases as library code (``benchmarks/bench_prefill.py`` lists the cases and writes the
JSON): each case checked against the float64 reference on a sample of rows, then every path timed in interleaved
rounds -- infernb (its planner and kernel variations), FlashInfer fa2 (and its variants with ``flashinfer=2``),
FlexAttention, SDPA flash and cuDNN -- with the bf16 GEMM ceiling measured in the same run."""
from __future__ import annotations

import datetime as dt

import numpy as np
import torch

from ..testing import rel_error
from ._optional import optional_flashinfer
from .prefill import (flashinfer_block_sparse, flashinfer_paged, flashinfer_ragged, flex_path, gemm_ceiling_tflops,
                      sdpa_paths, timing_fields, visible_pairs)
from .summary import short_lens
from .timing import cuda_time_interleaved, device_name

def prefill_cases(cases: list[dict], *, runs: int = 30, flashinfer: int = 1, flex: bool = True,
                  heads: tuple[int, int] = (32, 8), head_dim: int = 128, seed: int = 0, fa2: bool = True) -> dict:
    """Run the benchmark ``cases`` (bf16; ``heads`` query / KV heads, default 32 / 8; ``head_dim``). Each case is
    ``dict(kind="ragged" | "paged", name=..., qo=[...], kv=[...], **options)``; ragged options: ``causal``,
    ``window``, ``variants`` (``[(label, Variant)]``), ``masks`` (``[(label, Variant)]`` with a mask_mod: planned with
    its block structure, and again without it as ``<label>_dense``: every causal key read, the mask evaluated on
    each; FlexAttention with the same mask_mod on one request), ``rope_cmp`` (RoPE by the pass and in the tile), ``naive`` (the
    same kernel on a naive plan), ``tile_cmp`` (the other query tile), ``plan_variants`` (``[(label, plan kwargs)]``),
    ``configs`` (``[PrefillTraits]``), ``sm90`` (the Hopper kernel, ``backend="sm90"``, and FlashInfer's fa3 backend
    beside fa2), ``sm90_configs`` (``[Sm90Traits]``: its other stages / schedules); paged: ``page``, ``sm90``,
    ``sm90_configs``; ``kind="block_sparse"``: ``n``, ``block``, ``blocks_per_row`` (a
    block-aligned sliding window, against FlashInfer's BlockSparseAttentionWrapper and FlexAttention). ``flashinfer``: 0 none, 1 plain fa2, 2 also its variant
    paths; ``fa2=False`` leaves FlashInfer's fa2 out of the ``sm90`` cases (fa3 only: each FlashInfer kernel is a JIT
    build of about a minute on a bare machine). Returns the benchmark JSON: ``{device, date, torch, flashinfer, heads, head_dim, dtype, gemm_tflops,
    cases: [rows]}``, rows with ``<path>_ms``, ``<path>_tflops``, errors and ``<path>_over_infernb``."""
    import infernb as ib
    from ..ops.prefill import PrefillRunner, plan_batch
    from ..ops.prefill_sm90 import config_tag
    from .. import reference

    HQ, HKV = heads
    D = head_dim

    fi = optional_flashinfer() if flashinfer else None
    dev, dt_ = "cuda", torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, device=dev, generator=g, dtype=dt_)  # noqa: E731
    result = dict(device=device_name(), date=str(dt.date.today()), torch=torch.__version__,
                  flashinfer=getattr(fi, "__version__", None), heads=[HQ, HKV], head_dim=D, dtype="bf16", cases=[])

    gemm = result["gemm_tflops"] = gemm_ceiling_tflops()          # the GEMM ceiling, measured here
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
                    tile_cmp=False, plan_variants=(), configs=(), masks=(), sm90=False, sm90_configs=()):
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

        def add(label, plan, variant=None, rope=None, config=None, rope_path="auto", backend="mma"):
            r = PrefillRunner(plan, variant=variant, rope=rope, config=config, rope_path=rope_path, backend=backend)
            out = r(q, k, v)[0]
            errs[label] = check(label, out, ref_rows(variant, rope), rows)
            fns[label] = lambda: r(q, k, v)

        shape = dict(num_qo_heads=HQ, num_kv_heads=HKV, head_dim=D, causal=causal, window_left=window)
        p = plan_batch(qo, kv, dtype=dt_, **shape)       # what ib.prefill plans
        fc = p.fixed_cost
        add("infernb", p)
        if sm90:                                    # the Hopper kernel on its own plan (and its other schedules)
            p90 = plan_batch(qo, kv, dtype=dt_, backend="sm90", **shape)
            add("infernb_sm90", p90, backend="sm90")
            for cfg in sm90_configs:
                add(f"infernb_sm90_{config_tag(cfg)}", p90, backend="sm90", config=cfg)
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
            if sm90:
                add(f"infernb_sm90_{v_name}", p90, variant=variant, backend="sm90")
        mask_pairs = {}                             # the masks' visible pairs (the _tflops fields count the case's)
        for m_name, variant in masks:               # a mask_mod: with its block structure, and without
            pm = plan_batch(qo, kv, dtype=dt_, variant=variant, **shape)
            mask_pairs[m_name] = sum(bm.stats()["visible"] for bm in variant.block_masks(qo, kv, num_qo_heads=HQ))
            add(f"infernb_{m_name}", pm, variant=variant)
            add(f"infernb_{m_name}_dense", plan_batch(qo, kv, dtype=dt_, variant=variant, block_sparse=False, **shape),
                variant=variant)
        if rope_cmp:
            add("infernb_rope", p, rope=ib.RoPE(theta=1e4))                      # auto: the rotation pass here
            add("infernb_rope_tile", p, rope=ib.RoPE(theta=1e4), rope_path="tile")
            if sm90:                                # the Hopper kernel after the rotation pass
                add("infernb_sm90_rope", p90, rope=ib.RoPE(theta=1e4), backend="sm90")
        if fi is not None:
            def fi_ragged(label, **kw):
                fns[label] = flashinfer_ragged(fi, q, k, v, qo, kv, causal=causal, workspace=workspace(label), **kw)
                return fns[label]()
            if fa2 or not sm90:
                out = fi_ragged("flashinfer_fa2", window_left=window)
                errs["flashinfer_fa2"] = check("flashinfer_fa2", out, ref_rows(), rows)
            if sm90:
                out = fi_ragged("flashinfer_fa3", window_left=window, backend="fa3")
                errs["flashinfer_fa3"] = check("flashinfer_fa3", out, ref_rows(), rows)
            if flashinfer >= 2:
                for v_name, variant in variants:
                    if v_name == "softcap30_approx":
                        continue                    # (FlashInfer's soft-cap is one path: its tanh is the SFU's)
                    kw = dict(logits_soft_cap=30.0) if v_name == "softcap30" else dict(pos_encoding_mode="ALIBI")
                    fi_ragged(f"flashinfer_fa2_{v_name}", **kw)
                if rope_cmp:
                    fi_ragged("flashinfer_fa2_rope", pos_encoding_mode="ROPE_LLAMA", rope_theta=1e4)
        if len(qo) == 1 and flex:             # FlexAttention on the one request, plain and each variant
            for label, smod in [("flex", None)] + [(f"flex_{n}", v.bound_mods()[0]) for n, v in variants
                                                   if n != "softcap30_approx"]:
                call, why = flex_path(q, k, v, causal=causal, score_mod=smod, window_left=window)
                if call is None:
                    print(f"{name}: {label} unavailable: {why}", flush=True)
                    continue
                fns[label] = call
                if smod is None:
                    errs[label] = check(label, call(), ref_rows(), rows)
            for m_name, variant in masks:
                call, why = flex_path(q, k, v, causal=causal, window_left=window, mask_mod=variant.bound_mods()[1])
                if call is None:
                    print(f"{name}: flex_{m_name} unavailable: {why}", flush=True)
                    continue
                fns[f"flex_{m_name}"] = call
                errs[f"flex_{m_name}"] = check(f"flex_{m_name}", call(), ref_rows(variant), rows)
        if len(qo) == 1 and window < 0:             # SDPA on the one request (K/V expanded to the query heads)
            calls, missing = sdpa_paths(q, k, v, causal=causal)
            for label, call in calls.items():
                errs[label] = check(label, call(), ref_rows(), rows)
                fns[label] = call
            for label, why in missing.items():
                print(f"{name}: {label} unavailable ({why})")
        times = cuda_time_interleaved(fns, warmup=5, runs=runs)
        row = dict(case=name, qo_lens=short_lens(qo), kv_lens=short_lens(kv), causal=causal, window_left=window,
                   plan_tile_q=p.tile_q, plan_ctas=p.num_ctas, plan_items=p.num_items,
                   plan_split_units=int(len(p.merge_unit)), visible_pairs=pairs, flops=flops, errors=errs,
                   **timing_fields(times, flops, mask_flops(mask_pairs)))
        if mask_pairs:
            row["mask_visible_pairs"] = mask_pairs
        _ratios(row, times)
        result["cases"].append(row)
        _print(row, times, gemm)

    def mask_flops(mask_pairs):
        """A mask's paths (its block structure, dense, FlexAttention's) count the mask's visible pairs."""
        return {f"{pre}{m}{post}": 4 * HQ * D * n for m, n in mask_pairs.items()
                for pre, post in (("infernb_", ""), ("infernb_", "_dense"), ("flex_", ""))}

    def paged_case(name, qo, kv, page=16, sm90=False, sm90_configs=()):
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
        ref, _ = reference.paged_attention(q[:qo[0]], cache.pool, table.indptr[:2], table.indices[:table.indptr[1]],
                                           table.last_page_len[:1], [0, qo[0]], causal=True)
        errs = {"infernb": check("infernb", out, ref, torch.arange(qo[0]))}
        fns = {"infernb": lambda: r(q)}
        if sm90:                                    # the Hopper kernel (its producer copies the pages), own plan
            p90 = plan_batch(qo, kv, num_qo_heads=HQ, num_kv_heads=HKV, head_dim=D, dtype=dt_, page_size=page,
                             causal=True, page_table=table, backend="sm90")
            r90 = PrefillRunner(p90, cache, table, backend="sm90")
            errs["infernb_sm90"] = check("infernb_sm90", r90(q)[0], ref, torch.arange(qo[0]))
            fns["infernb_sm90"] = lambda: r90(q)
            for cfg in sm90_configs:                # its other configurations (e.g. the asynchronous arrivals)
                label = f"infernb_sm90_{config_tag(cfg, cache.layout)}"
                rc = PrefillRunner(p90, cache, table, backend="sm90", config=cfg)
                errs[label] = check(label, rc(q)[0], ref, torch.arange(qo[0]))
                fns[label] = (lambda r_: lambda: r_(q))(rc)
        if fi is not None:
            for be in (("fa2", "fa3") if fa2 else ("fa3",)) if sm90 else ("fa2",):
                label = f"flashinfer_{be}"
                fns[label] = flashinfer_paged(fi, q, cache.pool, table, qo, causal=True, workspace=workspace(label),
                                              backend=be)
                errs[label] = check(label, fns[label](), ref, torch.arange(qo[0]))
        times = cuda_time_interleaved(fns, warmup=5, runs=runs)
        row = dict(case=name, qo_lens=short_lens(qo), kv_lens=short_lens(kv), causal=True, page_size=page,
                   plan_tile_q=p.tile_q, plan_ctas=p.num_ctas, plan_items=p.num_items,
                   plan_split_units=int(len(p.merge_unit)), visible_pairs=pairs, flops=flops, errors=errs)
        row.update(timing_fields(times, flops))
        _ratios(row, times)
        result["cases"].append(row)
        _print(row, times, gemm)

    def block_sparse_case(name, n, block, blocks_per_row):
        """A block-aligned sliding window on one sequence of n tokens: block row i lists block columns
        [i - blocks_per_row + 1, i] (all full): infernb's block-sparse path, FlashInfer's BlockSparseAttentionWrapper,
        FlexAttention with the same mask_mod, and infernb's dense causal kernel on the sequence (TFLOP/s of the
        sparse paths over the visible blocks)."""
        from ..ops.block_sparse import block_window, plan_block_sparse

        R, C = block
        mask = block_window(n, block, blocks_per_row)
        q, k, v = rnd(n, HQ, D), rnd(n, HKV, D), rnd(n, HKV, D)
        pairs = mask.stats()["visible"]
        flops = 4 * HQ * D * pairs

        def block_mod(b, h, q_idx, kv_idx):
            d = q_idx // R - kv_idx // C
            return (d >= 0) & (d < blocks_per_row)
        fns, errs = {}, {}
        rows_chk = torch.arange(n - 64, n)
        ref, _ = reference.attention(q[rows_chk], k, v, [0, 64], [0, n], mask_mod=block_mod)
        plan, var = plan_block_sparse(mask, num_qo_heads=HQ, num_kv_heads=HKV, head_dim=D, dtype=dt_, device=dev)
        r = PrefillRunner(plan, variant=var)
        errs["infernb"] = check("infernb", r(q, k, v)[0], ref, rows_chk)
        fns["infernb"] = lambda: r(q, k, v)
        pc = plan_batch([n], [n], num_qo_heads=HQ, num_kv_heads=HKV, head_dim=D, dtype=dt_, causal=True)
        rc = PrefillRunner(pc)
        fns["infernb_dense_causal"] = lambda: rc(q, k, v)
        if fi is not None:
            fns["flashinfer_bsr"] = flashinfer_block_sparse(fi, q, k, v, mask, workspace=workspace("bsr"))
            errs["flashinfer_bsr"] = check("flashinfer_bsr", fns["flashinfer_bsr"](), ref, rows_chk)
        if flex:
            call, why = flex_path(q, k, v, causal=False, mask_mod=block_mod)
            if call is None:
                print(f"{name}: flex unavailable: {why}", flush=True)
            else:
                errs["flex"] = check("flex", call(), ref, rows_chk)
                fns["flex"] = call
        times = cuda_time_interleaved(fns, warmup=5, runs=runs)
        row = dict(case=name, qo_lens=[n], kv_lens=[n], block=[R, C], blocks_per_row=blocks_per_row,
                   visible_pairs=pairs, flops=flops, plan_tile_q=plan.tile_q, plan_items=plan.num_items, errors=errs,
                   **timing_fields(times, flops))
        dense_flops = 4 * HQ * D * visible_pairs([n], [n], True)
        row["infernb_dense_causal_tflops"] = dense_flops / (times["infernb_dense_causal"].median_ms * 1e-3) / 1e12
        _ratios(row, times)
        result["cases"].append(row)
        _print(row, times, gemm)

    for c in cases:
        c = dict(c)
        kind = c.pop("kind", "ragged")
        if kind == "block_sparse":
            block_sparse_case(c.pop("name"), **c)
            continue
        (ragged_case if kind == "ragged" else paged_case)(c.pop("name"), c.pop("qo"), c.pop("kv"), **c)
    return result


def _ratios(row, times):
    """Each other path's time over infernb's (> 1: infernb is faster)."""
    base = times["infernb"].median_ms
    for label, tm in times.items():
        if label != "infernb":
            row[f"{label}_over_infernb"] = tm.median_ms / base


def _print(row, times, gemm):
    parts = [f"{k}={t.median_ms:.3f}ms ({row[k + '_tflops']:.0f} TF)" for k, t in times.items()]
    print(f"{row['case']}: " + ", ".join(parts) + f"  [GEMM {gemm:.0f} TF]", flush=True)
