"""Prefill timing side by side: infernb's prefill kernel, FlashInfer's fa2 prefill (when installed) and torch SDPA
(flash, cuDNN) on the same ragged causal batch, in interleaved rounds; and the FLOPs a mask leaves visible."""
from __future__ import annotations

import numpy as np
import torch


from .timing import cuda_time


def visible_pairs(qo_lens, kv_lens, causal: bool, window_left: int = -1) -> int:
    """(query, key) pairs a bottom-right aligned causal / sliding-window mask leaves visible, summed over requests.
    Attention FLOPs are ``4 x num_qo_heads x head_dim x`` this."""
    n = 0
    for L, S in zip(qo_lens, kv_lens):
        p = np.arange(S - L, S, dtype=np.int64)                 # the queries' positions
        hi = np.minimum(p, S - 1) if causal else np.full(L, S - 1, np.int64)
        lo = np.maximum(0, p - window_left) if window_left >= 0 else np.zeros(L, np.int64)
        n += int(np.maximum(hi - lo + 1, 0).sum())
    return n


def gemm_ceiling_tflops(n: int = 8192, runs: int = 10) -> float:
    """bf16 matrix product ``n^3`` through torch, in TFLOP/s: the roof a compute-bound kernel is held to."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = cuda_time(lambda: a @ b, warmup=3, runs=runs).median_ms
    return 2 * n ** 3 / (ms * 1e-3) / 1e12


def flashinfer_ragged(flashinfer, q, k, v, qo_lens, kv_lens, *, causal: bool, workspace: torch.Tensor | None = None,
                      backend: str = "fa2", **plan_kwargs):
    """FlashInfer's ragged prefill of ``q, k, v`` (``qo_lens`` / ``kv_lens`` per request; its ``backend``, ``"fa2"``
    or ``"fa3"`` on Hopper), planned once; returns the call that runs it (and returns its output ``[tokens,
    num_qo_heads, head_dim]``). ``plan_kwargs``: its options (``window_left``, ``logits_soft_cap``,
    ``pos_encoding_mode``, ...)."""
    ptr = lambda x: torch.as_tensor(np.r_[0, np.cumsum(x)], dtype=torch.int32, device=q.device)  # noqa: E731
    w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(_workspace(q, workspace), "NHD", backend=backend)
    w.plan(ptr(qo_lens), ptr(kv_lens), q.shape[1], k.shape[1], q.shape[2], causal=causal, q_data_type=q.dtype,
           **plan_kwargs)
    return lambda: w.run(q, k, v)


def _workspace(q, workspace):
    """FlashInfer's float workspace: 256 MiB, zeroed (as it asks), unless one is given."""
    return torch.zeros(256 * 2**20, dtype=torch.uint8, device=q.device) if workspace is None else workspace


def flashinfer_paged(flashinfer, q, pool, table, qo_lens, *, causal: bool, workspace: torch.Tensor | None = None,
                     backend: str = "fa2"):
    """FlashInfer's paged prefill (NHD pool; its ``backend``, ``"fa2"`` or ``"fa3"`` on Hopper) of ``q``
    (``qo_lens`` queries per request of ``table``), planned once; returns the call (its output ``[tokens,
    num_qo_heads, head_dim]``)."""
    w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(_workspace(q, workspace), "NHD", backend=backend)
    w.plan(torch.as_tensor(np.r_[0, np.cumsum(qo_lens)], dtype=torch.int32, device=q.device), table.indptr,
           table.indices, table.last_page_len, q.shape[1], pool.shape[3], q.shape[2], table.page_size, causal=causal,
           q_data_type=q.dtype)
    return lambda: w.run(q, pool)


def flashinfer_decode(flashinfer, q, pool, table, *, use_tensor_cores: bool,
                      workspace: torch.Tensor | None = None):
    """FlashInfer's paged decode (NHD pool; its tensor-core or CUDA-core path) of ``q [batch, num_qo_heads, d]``,
    planned once; returns the call."""
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace(q, workspace), "NHD", use_tensor_cores=use_tensor_cores)
    w.plan(table.indptr, table.indices, table.last_page_len, q.shape[1], pool.shape[3], q.shape[2], table.page_size,
           data_type=q.dtype, q_data_type=q.dtype)
    return lambda: w.run(q, pool)


def flashinfer_cascade(flashinfer, q, pool, tree, table, *, workspace: torch.Tensor | None = None):
    """FlashInfer's ``MultiLevelCascadeAttentionWrapper`` of a decode batch ``q [batch, num_qo_heads, d]`` over the
    shared-prefix tree ``tree`` (:func:`infernb.layout.prefix.prefix_tree` of ``table``): one FlashInfer level per
    depth of the tree (that depth's levels are its requests, each with the query rows that share it; every row must
    be under one of them, rows in order) and the rows' own pages last, planned once; returns the call."""
    import numpy as np

    dev, ps, n = q.device, table.page_size, tree.batch_size
    i32 = lambda x: torch.tensor(np.asarray(x, np.int64), dtype=torch.int32, device=dev)  # noqa: E731
    levels = [[lv for lv in tree.levels if lv.depth == k] for k in range(1 + max(lv.depth for lv in tree.levels))]
    reqs = [[(len(lv.rows), list(lv.pages), ps) for lv in lvs] for lvs in levels]
    for lvs in levels:
        if [b for lv in lvs for b in lv.rows] != list(range(n)):
            raise ValueError("flashinfer_cascade: each depth's levels must hold every row, in order")
    own = [table.pages_of(b)[tree.unique_first_page[b]:] for b in range(n)]
    reqs.append([(1, p, tree.unique_tokens(b) - (len(p) - 1) * ps) for b, p in enumerate(own)])
    arrays = [[i32(np.r_[0, np.cumsum([r[0] for r in lvl])]) for lvl in reqs],
              [i32(np.r_[0, np.cumsum([len(r[1]) for r in lvl])]) for lvl in reqs],
              [i32([x for r in lvl for x in r[1]]) for lvl in reqs],
              [i32([r[2] for r in lvl]) for lvl in reqs]]
    w = flashinfer.MultiLevelCascadeAttentionWrapper(len(reqs), _workspace(q, workspace), "NHD")
    w.plan(*arrays, q.shape[1], pool.shape[3], q.shape[2], ps, q_data_type=q.dtype)
    return lambda: w.run(q, pool)


def flashinfer_block_sparse(flashinfer, q, k, v, mask, *, workspace: torch.Tensor | None = None):
    """FlashInfer's BlockSparseAttentionWrapper of one request under the BlockSparse ``mask`` (its listed blocks,
    taken as full: give it a mask of full blocks), planned once; returns the call."""
    R, C = mask.block
    w = flashinfer.BlockSparseAttentionWrapper(_workspace(q, workspace))
    w.plan(mask.indptr.to(q.device), mask.indices.to(q.device), q.shape[0], k.shape[0], R, C, q.shape[1], k.shape[1],
           q.shape[2], q_data_type=q.dtype)
    return lambda: w.run(q, k, v)


def _sdpa_layout(q, k, v):
    """SDPA's ``[1, heads, tokens, d]`` views of one request, K/V expanded to the query heads (GQA)."""
    rep = q.shape[1] // k.shape[1]
    return (t.transpose(0, 1)[None] for t in (q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)))


def sdpa_paths(q, k, v, *, causal: bool) -> tuple[dict, dict]:
    """torch SDPA's flash and cuDNN backends on one request (``q [tokens, num_qo_heads, d]``, ``k, v [keys,
    num_kv_heads, d]``; K/V expanded to the query heads here, outside any timing). Returns ``({label: call},
    {label: why it is unavailable})``; each call returns ``[tokens, num_qo_heads, d]``."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    qs, ks, vs = _sdpa_layout(q, k, v)
    calls, missing = {}, {}
    for label, be in (("sdpa_flash", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)):
        def call(be=be):
            with sdpa_kernel(be):
                return torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=causal)[0].transpose(0, 1)
        try:
            call()
            calls[label] = call
        except RuntimeError as e:                         # a backend this torch build or GPU lacks
            missing[label] = f"{type(e).__name__}: {e}"
    return calls, missing


def sdpa_masked(q, k, v, mask: torch.Tensor):
    """torch SDPA with a dense boolean ``mask [tokens, keys]`` (True: visible) on one request (K/V expanded to the
    query heads here, outside any timing; SDPA picks its memory-efficient or math backend for a mask). Returns the
    call, which returns ``[tokens, num_qo_heads, d]`` (rows with no visible key: NaN, as SDPA gives them)."""
    qs, ks, vs = _sdpa_layout(q, k, v)
    m = mask[None, None]
    return lambda: torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, attn_mask=m)[0].transpose(0, 1)


def flex_call(q, k, v, *, mask_mod=None, score_mod=None):
    """FlexAttention (``torch.compile``d, GQA) of packed ``q [tokens, num_qo_heads, d]``, ``k, v [keys, num_kv_heads,
    d]`` with a block mask made from ``mask_mod`` (None: every key) and ``score_mod``, FlexAttention's signatures.
    Returns ``(call, None)``, the call returning ``[tokens, num_qo_heads, d]``, or ``(None, why)``. The compile and a
    first call happen here, outside any timing."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError as e:                              # torch without FlexAttention
        return None, f"{type(e).__name__}: {e}"
    try:
        bm = None if mask_mod is None else create_block_mask(mask_mod, None, None, q.shape[0], k.shape[0],
                                                               device=q.device)
        fn = torch.compile(flex_attention, dynamic=False)
        qs, ks, vs = (t.transpose(0, 1)[None] for t in (q, k, v))

        def call():
            return fn(qs, ks, vs, score_mod=score_mod, block_mask=bm, enable_gqa=True)[0].transpose(0, 1)
        call()
        return call, None
    except Exception as e:                               # noqa: BLE001  (compile or backend failures: reported)
        return None, f"{type(e).__name__}: {str(e)[:300]}"


def flex_path(q, k, v, *, causal: bool, score_mod=None, window_left: int = -1, mask_mod=None):
    """:func:`flex_call` on one request with a causal / sliding-window mask, bottom-right aligned as infernb and
    FlashInfer; ``score_mod`` is FlexAttention's ``(score, b, h, q_idx, kv_idx)`` and ``mask_mod`` its
    ``(b, h, q_idx, kv_idx)``, and-ed with those masks, in infernb's positions (an infernb variant's bound mods have
    the same signatures). Returns ``(call, None)`` or ``(None, why)``."""
    off = k.shape[0] - q.shape[0]
    extra = mask_mod

    def mask(b, h, q_idx, kv_idx):
        ok = kv_idx <= q_idx + off if causal else kv_idx >= 0
        ok = ok & (kv_idx >= q_idx + off - window_left) if window_left >= 0 else ok
        return ok & extra(b, h, q_idx + off, kv_idx) if extra is not None else ok
    use = causal or window_left >= 0 or extra is not None
    return flex_call(q, k, v, mask_mod=mask if use else None, score_mod=score_mod)


def timing_fields(times: dict, flops: float, label_flops: dict | None = None) -> dict:
    """``{<path>_ms, <path>_p10_ms, <path>_p90_ms, <path>_tflops}`` of interleaved timings (the benchmark JSON's
    schema). TFLOP/s count ``flops`` (the case's visible pairs), or ``label_flops[label]`` for paths that compute
    other pairs (a mask's own visible pairs)."""
    row = {}
    for label, t in times.items():
        row[f"{label}_ms"], row[f"{label}_p10_ms"], row[f"{label}_p90_ms"] = t.median_ms, t.p10_ms, t.p90_ms
        row[f"{label}_tflops"] = (label_flops or {}).get(label, flops) / (t.median_ms * 1e-3) / 1e12
    return row


def profile_prefill(cases: dict, *, num_qo_heads: int = 32, num_kv_heads: int = 8, head_dim: int = 128,
                    causal: bool = True, runs: int = 20, seed: int = 0, sm90: bool = False) -> list[dict]:
    """Time the prefill of each ragged batch ``{name: (qo_lens, kv_lens)}`` (bf16, random inputs) with infernb, with
    FlashInfer's ragged fa2 prefill when it is installed, and, for one-request batches, with SDPA flash and cuDNN
    (K/V expanded to the query heads outside the timing) and FlexAttention (compiled before the timing); ``sm90``:
    also infernb's Hopper kernel and FlashInfer's fa3 backend (an sm_90 GPU): the
    benchmark's measurement (:func:`infernb.profile.prefill_cases.prefill_cases`: every path checked against the
    float64 reference first, interleaved rounds). Returns its rows ``{case, flops, <path>_ms, <path>_tflops, ...}``
    (``benchmarks/bench_prefill.py``'s JSON schema; :func:`infernb.viz.tflops_bars` draws them)."""
    from .prefill_cases import prefill_cases

    specs = [dict(name=name, qo=list(qo), kv=list(kv), causal=causal, sm90=sm90) for name, (qo, kv) in cases.items()]
    return prefill_cases(specs, runs=runs, flashinfer=1, flex=True, heads=(num_qo_heads, num_kv_heads),
                         head_dim=head_dim, seed=seed)["cases"]
