"""``ib.profile.compare``: one attention problem, every implementation at hand, in one run on one GPU.

For an op (``"decode"``, ``"prefill"``, ``"append"``, ``"block_sparse"``), a batch shape and a variant, time infernb's kernel against
PyTorch's paths -- SDPA's backends (one-request problems without a score_mod), FlexAttention compiled with the same
mods, the eager reference in fp32 -- and FlashInfer when it is installed, in interleaved rounds; measure each path's
error against the float64 reference on a sample of rows; and measure the device's copy and GEMM ceilings in the same
run, so the result can be drawn as bars and as a roofline (:func:`infernb.viz.compare_bars`,
:func:`infernb.viz.roofline`). Without a GPU, :func:`committed_compare` returns the committed runs
(``benchmarks/results/compare_*.json``), each labelled with its device and date.
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import torch

from ..errors import InputError
from ..testing import rel_error
from ._optional import optional_flashinfer
from .decode import committed_results, copy_ceiling_tbps
from .prefill import (flashinfer_block_sparse, flashinfer_decode, flashinfer_paged, flashinfer_ragged, flex_call,
                      flex_path, gemm_ceiling_tflops, sdpa_masked, sdpa_paths, visible_pairs)
from .summary import short_lens
from .timing import cuda_time_interleaved, device_name

OPS = ("decode", "prefill", "append", "block_sparse")
#: rows of each request compared with the float64 reference (the reference of a long prompt is large)
REF_ROWS = 192


def compare(op: str, qo_lens, kv_lens, *, num_qo_heads: int = 32, num_kv_heads: int = 8, head_dim: int = 128,
            variant=None, causal: bool | None = None, page_size: int = 16, runs: int = 20, flashinfer: bool = True,
            flex: bool = True, eager: bool = True, progress: bool = True, seed: int = 0, mask=None) -> dict:
    """Time one attention problem with every available implementation; bf16 inputs, random, on the GPU.

    Args:
        op: ``"decode"`` (one new token per request, paged KV), ``"prefill"`` (ragged q / k / v), ``"append"``
            (``qo_lens[i]`` new tokens of each request attend to its ``kv_lens[i]`` cached keys, paged) or
            ``"block_sparse"`` (one request under ``mask``; :func:`infernb.block_sparse_attention`).
        qo_lens, kv_lens: per request (decode: ``qo_lens`` all 1).
        variant: an :class:`~infernb.variants.Variant` (its mods go to FlexAttention unchanged; SDPA and
            FlashInfer paths run only without one).
        causal: bottom-right aligned causal mask (default: on for prefill / append, off for block_sparse).
        mask: block_sparse: a :class:`~infernb.layout.BlockSparse` ``[qo_len, kv_len]`` (default: a block-aligned
            window of 16 blocks of 64 x 64, :func:`infernb.ops.block_sparse.block_window`). SDPA takes it as a dense
            boolean mask, FlexAttention as the same traced lookup, FlashInfer's BlockSparseAttentionWrapper when all
            its blocks are full.
        runs: interleaved rounds; ``flashinfer``, ``flex``, ``eager``: include those paths when available.
        progress: a progress bar (True), none (False), or ``progress(done, total)`` called after each step.

    Returns:
        ``{op, case, shape, variant, device, date, torch, flashinfer, copy_TBps, gemm_TFLOPs, flops, bytes,
        paths: {label: {ms, p10_ms, p90_ms, err, TFLOPs, TBps}}, missing: {label: why}}``; ``err`` is
        ||out - ref|| / ||ref|| on the sampled rows, against float64.
    """
    if op not in OPS:
        raise InputError(f"op: expected one of {OPS}, got {op!r}")
    if not torch.cuda.is_available():
        raise InputError("compare times kernels on a GPU; without one, ib.profile.committed_compare() returns the "
                         "committed runs")
    from tqdm.auto import tqdm

    import infernb as ib
    from ..ops.paged_decode import DecodeRunner, plan_decode
    from ..ops.prefill import PrefillRunner, plan_batch
    from ..reference import attention as ref_attention

    qo, kv = [int(x) for x in qo_lens], [int(x) for x in kv_lens]
    if len(qo) != len(kv) or any(a > b for a, b in zip(qo, kv)) or any(a < 0 for a in qo):
        raise InputError("qo_lens, kv_lens: one entry each per request, 0 <= qo_len <= kv_len")
    if op == "decode" and any(a != 1 for a in qo):
        raise InputError("decode: every qo_len is 1 (use op='append' for several new tokens)")
    causal = True if op == "decode" else (op != "block_sparse") if causal is None else bool(causal)
    full = None                                          # block_sparse: the mask's variant (and-ed with `variant`)
    if op == "block_sparse":
        from ..ops.block_sparse import block_window, plan_block_sparse

        if len(qo) != 1:
            raise InputError("block_sparse: one request (qo_lens and kv_lens of one entry)")
        mask = block_window(kv[0]) if mask is None and qo[0] == kv[0] else mask
        # the plan and the variant that ib.block_sparse_attention runs (the variant: the mask's lookup and-ed with
        # `variant`; the reference and FlexAttention evaluate the same one)
        bs_plan, full = plan_block_sparse(mask, num_qo_heads=num_qo_heads, num_kv_heads=num_kv_heads,
                                          head_dim=head_dim, dtype=torch.bfloat16, device="cuda", variant=variant,
                                          causal=causal, shape=(qo[0], kv[0]))
    elif mask is not None:
        raise InputError(f"mask: only op='block_sparse' takes one (got op={op!r})")
    dev, dtype = "cuda", torch.bfloat16
    steps = tqdm(total=6, desc=f"compare {op}", disable=progress is not True)
    if callable(progress):                               # a panel's own progress bar: progress(done, total)
        update, done = steps.update, [0]

        def _update(n=1):
            update(n)
            done[0] += n
            progress(done[0], 6)
        steps.update = _update
    g = torch.Generator(device=dev).manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, device=dev, dtype=dtype, generator=g)  # noqa: E731
    q, k, v = rnd(sum(qo), num_qo_heads, head_dim), rnd(sum(kv), num_kv_heads, head_dim), rnd(sum(kv), num_kv_heads,
                                                                                              head_dim)
    qo_ptr, kv_ptr = np.r_[0, np.cumsum(qo)], np.r_[0, np.cumsum(kv)]
    kw = {} if variant is None else variant.reference_kwargs()
    if full is not None:
        kw = full.reference_kwargs()

    # the float64 reference on a sample of each request's rows (the last REF_ROWS: they see the most keys)
    rows = np.concatenate([np.arange(max(qo_ptr[i], qo_ptr[i + 1] - REF_ROWS), qo_ptr[i + 1]) for i in range(len(qo))])
    rows_t = torch.from_numpy(rows).to(dev)
    sub_qo = [int(min(a, REF_ROWS)) for a in qo]
    # (the last rows of a request keep their positions: the reference's q_idx is kv_len - qo_len + i)
    ref = ref_attention(q[rows_t], k, v, np.r_[0, np.cumsum(sub_qo)].tolist(), kv_ptr.tolist(), causal=causal,
                        **kw)[0]
    steps.update()

    fns, errs, missing = {}, {}, {}

    def add(label, call):
        out = call()
        errs[label] = rel_error(out[rows_t].float(), ref)
        fns[label] = call

    # infernb
    cache = table = None
    if op == "block_sparse":
        runner = PrefillRunner(bs_plan, variant=full)
        add("infernb", lambda: runner(q, k, v)[0])
    elif op == "prefill":
        plan = plan_batch(qo, kv, num_qo_heads=num_qo_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                          dtype=dtype, causal=causal, variant=variant)          # what ib.prefill plans
        runner = PrefillRunner(plan, variant=variant)
        add("infernb", lambda: runner(q, k, v)[0])
    else:
        cache = ib.PagedKVCache(num_pages=max(1, sum(-(-n // page_size) for n in kv)), page_size=page_size,
                                num_kv_heads=num_kv_heads, head_dim=head_dim, dtype=dtype, device=dev)
        ids = cache.add_sequences(len(kv))
        cache.append(ids, k, v, lengths=kv)
        table = cache.page_table(ids)
        if op == "decode":
            plan = plan_decode(kv, num_qo_heads=num_qo_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                               page_size=page_size, dtype=dtype, variant=variant)   # what ib.decode plans
            runner = DecodeRunner(plan, cache, table, variant=variant)
            add("infernb", lambda: runner(q)[0])
        else:
            plan = plan_batch(qo, kv, num_qo_heads=num_qo_heads, num_kv_heads=num_kv_heads,
                                            head_dim=head_dim, dtype=dtype, page_size=page_size, causal=causal,
                                            variant=variant, page_table=table)
            runner = PrefillRunner(plan, cache, table, variant=variant)
            add("infernb", lambda: runner(q, cache=cache)[0])
    steps.update()

    # PyTorch: SDPA's backends (one request, no score_mod), FlexAttention with the same mods, the eager reference
    plain = variant is None or (variant.score_mod is None and variant.mask_mod is None)
    dense = None
    if op == "block_sparse":
        dense = mask.to_dense().to(dev)
        if causal:
            dense &= torch.ones_like(dense).tril(kv[0] - qo[0])
    if op == "block_sparse" and plain:
        add("sdpa_masked", sdpa_masked(q, k, v, dense))
    elif len(qo) == 1 and plain and op != "block_sparse":
        calls, why = sdpa_paths(q, k, v, causal=causal)
        for label, call in calls.items():
            add(label, call)
        missing.update(why)
    else:
        missing["sdpa"] = "SDPA runs one request without a score_mod / mask_mod here"
    if flex and op == "block_sparse":
        smod, mmod = full.bound_mods()
        call, why = flex_path(q, k, v, causal=causal, score_mod=smod, mask_mod=mmod)
        if call is None:
            missing["flex"] = why
        else:
            add("flex", call)
    elif flex:
        call, why = _flex(q, k, v, qo, kv, causal=causal, variant=variant)
        if call is None:
            missing["flex"] = why
        else:
            add("flex", call)
    steps.update()
    if eager:
        try:
            add("eager_fp32", lambda: ref_attention(q, k, v, qo_ptr.tolist(), kv_ptr.tolist(), causal=causal,
                                                    compute_dtype=torch.float32, **kw)[0])
        except torch.OutOfMemoryError as e:
            missing["eager_fp32"] = f"out of memory: {str(e)[:120]}"
            torch.cuda.empty_cache()
    # FlashInfer (plain attention only: its variants are other kernels)
    fi = optional_flashinfer() if flashinfer else None
    if fi is None:
        missing["flashinfer"] = "not installed" if flashinfer else "not asked"
    elif not plain:
        missing["flashinfer"] = "its variants are other kernels: compared without a variant only"
    elif op == "block_sparse" and (causal or not bool(mask.is_full.all())):
        missing["flashinfer"] = "its BlockSparseAttentionWrapper is compared on masks of full blocks, not causal"
    else:
        if op == "block_sparse":
            add("flashinfer", flashinfer_block_sparse(fi, q, k, v, mask))
        elif op == "decode":
            add("flashinfer", flashinfer_decode(fi, q, cache.pool, table, use_tensor_cores=True))
        elif op == "prefill":
            add("flashinfer", flashinfer_ragged(fi, q, k, v, qo, kv, causal=causal))
        else:
            add("flashinfer", flashinfer_paged(fi, q, cache.pool, table, qo, causal=causal))
    steps.update()

    times = cuda_time_interleaved(fns, warmup=5, runs=runs)
    steps.update()
    copy_tbps, gemm = copy_ceiling_tbps(), gemm_ceiling_tflops()
    steps.update()
    steps.close()
    pairs = int(dense.sum()) if dense is not None else visible_pairs(qo, kv, causal)
    flops = 4 * num_qo_heads * head_dim * pairs
    nbytes = 2 * (2 * sum(qo) * num_qo_heads + 2 * sum(kv) * num_kv_heads) * head_dim   # q, o, k, v in bf16
    paths = {lab: dict(ms=t.median_ms, p10_ms=t.p10_ms, p90_ms=t.p90_ms, err=float(errs[lab]),
                       TFLOPs=flops / (t.median_ms * 1e-3) / 1e12, TBps=nbytes / (t.median_ms * 1e-3) / 1e12)
             for lab, t in times.items()}
    import importlib.metadata as md
    try:
        fi_version = md.version("flashinfer-python")
    except md.PackageNotFoundError:
        fi_version = None
    return dict(op=op, case=case_name(op, qo, kv), qo_lens=short_lens(qo), kv_lens=short_lens(kv),
                shape=dict(num_qo_heads=num_qo_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                           page_size=page_size, causal=causal, dtype="bf16"),
                variant=None if variant is None else variant.name, mask=None if mask is None else str(mask),
                device=device_name(), date=str(dt.date.today()),
                torch=torch.__version__, flashinfer=fi_version, copy_TBps=copy_tbps, gemm_TFLOPs=gemm, flops=flops,
                bytes=nbytes, paths=paths, missing=missing)


def compare_sweep(problems, *, progress: bool = True, **kw) -> tuple[list[dict], dict]:
    """:func:`compare` over ``problems`` (``[(op, qo_lens, kv_lens, variant), ...]``) with a progress bar over the
    problems; ``kw`` goes to each call. A problem that fails is reported, not fatal. Returns ``(results,
    {problem label: error text})``."""
    from tqdm.auto import tqdm

    results, failed = [], {}
    for op, qo, kv, variant in tqdm(list(problems), desc="compare sweep", disable=not progress):
        label = result_label(case_name(op, list(qo), list(kv)), None if variant is None else variant.name)
        try:
            results.append(compare(op, qo, kv, variant=variant, progress=False, **kw))
        except Exception as e:                            # noqa: BLE001  (one problem's failure is reported)
            failed[label] = f"{type(e).__name__}: {str(e)[:300]}"
    return results, failed


def committed_compare() -> dict | None:
    """The committed ``compare`` runs (``benchmarks/results/compare_*.json``: ``{device, date, results: [...]}``,
    each result as :func:`compare` returns it), or ``None``."""
    return committed_results("compare")


def result_label(case: str, variant: str | None) -> str:
    """A problem's label: ``prefill 1 x 8192`` or ``prefill 1 x 8192 · softcap_30`` (case, variant name)."""
    return case + (f" · {variant}" if variant else "")


def case_name(op: str, qo, kv) -> str:
    """``prefill 1 x 8192``, ``decode 64 x 4096``, ``append 16 x 512 on 8704`` (or ``... N requests``)."""
    n = len(kv)
    if op == "decode":
        return f"decode {n} x {kv[0]}" if len(set(kv)) == 1 else f"decode {n} requests, {sum(kv)} keys"
    if len(set(qo)) == 1 and len(set(kv)) == 1:
        return f"{op} {n} x {qo[0]}" + (f" on {kv[0]}" if kv[0] != qo[0] else "")
    return f"{op} {n} requests, {sum(qo)} queries on {sum(kv)} keys"


def _flex(q, k, v, qo, kv, *, causal: bool, variant):
    """FlexAttention over the packed batch: a document mask keeps requests apart, positions are each request's
    (append convention), the variant's score_mod / mask_mod see (request, head, q position, kv position)."""
    from ..plan import token_positions

    q_doc, q_pos, k_doc, k_pos = (torch.from_numpy(a).to(q.device) for a in token_positions(qo, kv))
    smod, mmod = (None, None) if variant is None else variant.bound_mods()

    def mask_mod(b, h, qi, kj):
        ok = q_doc[qi] == k_doc[kj]
        if causal:
            ok = ok & (k_pos[kj] <= q_pos[qi])
        if mmod is not None:
            ok = ok & mmod(q_doc[qi], h, q_pos[qi], k_pos[kj])
        return ok

    score_mod = None if smod is None else (lambda s, b, h, qi, kj: smod(s, q_doc[qi], h, q_pos[qi], k_pos[kj]))
    return flex_call(q, k, v, mask_mod=mask_mod, score_mod=score_mod)
