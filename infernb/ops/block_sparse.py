"""Block-sparse attention: a :class:`~infernb.layout.BlockSparse` mask run by the prefill kernel.

The mask's listed blocks become the plan's key segments (empty blocks are never read), runs of full blocks skip the
element mask, and partial blocks apply their exact elements through a variant (:func:`mask_variant`) whose
``mask_mod`` looks them up: ``table[row // R, key // C]`` is ``-1`` (empty), ``-2`` (full) or the block's index in
``partial_masks``, read at ``(row % R, key % C)``. The same traced code is what the reference and the emulator
evaluate, so every backend masks the same elements.
"""
from __future__ import annotations

import torch

from ..errors import InputError
from ..layout import BlockSparse
from ..variants import Variant, combine
from .prefill import DTYPES, check_q_for_cache, plan_batch, run_prefill  # noqa: F401  (DTYPES: the prefill kernel's operand types)
from .prefill_sm90 import resolve_backend


def _bucket(n: int) -> int:
    """The next power of two >= max(n, 1): the mask's tables are padded to it, so masks of similar sizes share one
    compiled kernel (the traced code holds the tables' sizes)."""
    return 1 << max(0, int(n) - 1).bit_length()


def mask_variant(mask: BlockSparse, *, device=None, name: str | None = None) -> Variant:
    """A :class:`~infernb.variants.Variant` whose ``mask_mod`` is ``mask``'s elements (append convention: query row
    ``i`` of an ``[M, N]`` mask sits at position ``N - M + i``). ``device``: where its tables live (the kernel's).

    The offset ``N - M`` is a runtime parameter and the tables are padded to powers of two, so the kernel compiled
    for one mask serves others of similar sizes and the same block shape.
    """
    if not isinstance(mask, BlockSparse):
        raise InputError(f"mask: expected an infernb.BlockSparse, got {type(mask).__name__}")
    M, N = mask.shape
    R, C = mask.block
    nbr, nbc = -(-M // R), -(-N // C)
    table = torch.full((_bucket(nbr), _bucket(nbc)), -1, dtype=torch.int32)
    rows = mask.block_rows()
    partial_index = torch.cumsum((~mask.is_full).to(torch.int32), 0) - 1
    table[rows, mask.indices.long()] = torch.where(mask.is_full, torch.tensor(-2, dtype=torch.int32),
                                                   partial_index.to(torch.int32))
    partial = torch.zeros((_bucket(len(mask.partial_masks)), R, C), dtype=torch.bool)
    partial[:len(mask.partial_masks)] = mask.partial_masks
    dev = torch.device("cpu" if device is None else device)
    table, partial = table.to(dev), partial.to(dev)

    def mask_mod(b, h, q_idx, kv_idx, offset):
        r = q_idx - offset
        t = table[r // R, kv_idx // C]
        return (t == -2) | ((t >= 0) & partial[torch.clamp(t, min=0), r % R, kv_idx % C])
    return Variant(name or f"block_sparse_{R}x{C}", mask_mod=mask_mod, params={"offset": N - M},
                   runtime={"offset"})


def block_window(n: int, block: tuple[int, int] = (64, 64), blocks_per_row: int = 16) -> BlockSparse:
    """A block-aligned sliding window on ``n`` tokens (the benchmarks' block-sparse mask): block row ``i`` lists block
    columns ``[i - blocks_per_row + 1, i]``, all full (edge blocks count their in-range elements). Needs ``R == C``
    so that the diagonal block holds each row's own position."""
    R, C = block
    if R != C or n < 1 or blocks_per_row < 1:
        raise InputError(f"block_window: square blocks, n >= 1, blocks_per_row >= 1; got {block}, {n}, {blocks_per_row}")
    rows = torch.arange(-(-n // R))
    lo = torch.clamp(rows - blocks_per_row + 1, min=0)
    indptr = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(rows - lo + 1, 0)]).to(torch.int32)
    indices = torch.cat([torch.arange(int(a), int(z) + 1) for a, z in zip(lo, rows)]).to(torch.int32)
    return BlockSparse((n, n), (R, C), indptr, indices, torch.ones(len(indices), dtype=torch.bool),
                       torch.zeros(0, R, C, dtype=torch.bool))


def check_mask(mask, q_len: int | None = None, kv_len: int | None = None) -> BlockSparse:
    """``mask`` a valid BlockSparse (:meth:`~infernb.layout.BlockSparse.validate`), of shape ``(q_len, kv_len)``
    when they are given."""
    if isinstance(mask, torch.Tensor):
        raise InputError("mask: expected an infernb.BlockSparse; for a dense boolean mask use "
                         "ib.BlockSparse.from_dense(mask, block) (an additive 0 / -inf mask: from_dense(mask == 0, ...))")
    if not isinstance(mask, BlockSparse):
        raise InputError(f"mask: expected an infernb.BlockSparse, got {type(mask).__name__}")
    if q_len is not None and tuple(mask.shape) != (q_len, kv_len):
        raise InputError(f"mask: shape {tuple(mask.shape)} must be (q tokens, kv tokens) = ({q_len}, {kv_len})")
    mask.validate()
    return mask


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor | None = None, v: torch.Tensor | None = None,
                           mask: BlockSparse | None = None, *, cache=None, seq_id: int | None = None,
                           variant: Variant | None = None, causal: bool = False, sm_scale: float | None = None,
                           return_lse: bool = False, num_sms=None, backend: str = "auto"):
    """Attention of one sequence under a block-sparse mask: empty blocks are never read, full blocks skip the element
    mask, partial blocks apply ``mask.partial_masks``. The keys come from ragged ``k, v`` or from a paged cache
    (``cache``, ``seq_id``: the mask's blocks are then read through the sequence's page table, the BSR format of both).

    Args:
        q: ``[M, num_qo_heads, head_dim]`` fp16/bf16; k, v: ``[N, num_kv_heads, head_dim]`` (GQA when the head
            counts differ); or ``cache`` (:class:`~infernb.layout.PagedKVCache`, NHD or HND, any page size) and
            ``seq_id``, a live sequence of N tokens (its K/V already appended) instead of k and v.
        mask: :class:`~infernb.layout.BlockSparse` of shape ``(M, N)``, any block shape ``(R, C)`` (``(1, C)``,
            ``(R, 1)``, not powers of two), e.g. ``BlockSparse.from_dense`` / ``from_mask_mod``; query row ``i`` sits
            at position ``N - M + i`` (the append convention of :mod:`infernb.reference`).
        variant: a score_mod / mask_mod to apply on top (its mask and-ed with ``mask``).
        causal: also the bottom-right aligned causal mask; sm_scale: logit scale (default ``1 / sqrt(head_dim)``).
        return_lse: also return the natural-log LSE ``[M, num_qo_heads]`` float32 (``-inf`` for rows with no key).
        backend: ``"auto"`` (the Hopper kernel on an sm_90 GPU when it covers the call, else the mma.sync kernel),
            ``"sm90"`` or ``"mma"`` (as in :func:`~infernb.prefill`).
    Returns:
        ``out [M, num_qo_heads, head_dim]`` q.dtype (and ``lse``); rows that see no key are 0.
    """
    if mask is None:
        raise InputError("mask: a BlockSparse of shape (q tokens, kv tokens) is required")
    if cache is not None:
        if k is not None or v is not None or seq_id is None:
            raise InputError("block_sparse_attention: give either k and v, or cache and seq_id (not both)")
        table = cache.page_table([seq_id])               # raises on freed / unknown ids
        n = int(cache.lengths([seq_id])[0])
        check_q_for_cache(q, cache)
        full = _mask_and(mask, variant, q.device)
        be = resolve_backend(backend, head_dim=cache.head_dim, dtype=q.dtype, variant=full, paged=True,
                             device=q.device if q.is_cuda else None)
        plan = _plan(mask, full, variant, num_qo_heads=q.shape[1], num_kv_heads=cache.num_kv_heads,
                     head_dim=cache.head_dim, dtype=q.dtype, causal=causal, num_sms=num_sms, shape=(q.shape[0], n),
                     page_size=cache.page_size, page_table=table, backend=be)
        out, lse = run_prefill(plan, q.contiguous(), cache=cache, page_table=table, variant=full, sm_scale=sm_scale,
                               backend=be)
        return (out, lse) if return_lse else out
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise InputError(f"{name}: expected [tokens, heads, head_dim], got "
                             f"{list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if k.shape != v.shape:
        raise InputError(f"k and v must have one shape, got {list(k.shape)} and {list(v.shape)}")
    if q.shape[2] != k.shape[2] or q.shape[1] % k.shape[1]:
        raise InputError(f"q {list(q.shape)} and k {list(k.shape)}: head dims must match and the query heads be a "
                         "multiple of the KV heads")
    if q.dtype not in DTYPES or len({q.dtype, k.dtype, v.dtype}) != 1 or len({q.device, k.device, v.device}) != 1:
        raise InputError("q, k, v: one fp16 / bf16 dtype on one device")
    full = _mask_and(mask, variant, q.device)
    be = resolve_backend(backend, head_dim=q.shape[2], dtype=q.dtype, variant=full,
                         device=q.device if q.is_cuda else None)
    plan = _plan(mask, full, variant, num_qo_heads=q.shape[1], num_kv_heads=k.shape[1], head_dim=q.shape[2],
                 dtype=q.dtype, causal=causal, num_sms=num_sms, shape=(q.shape[0], k.shape[0]), backend=be)
    out, lse = run_prefill(plan, q.contiguous(), k.contiguous(), v.contiguous(), variant=full, sm_scale=sm_scale,
                           backend=be)
    return (out, lse) if return_lse else out


def _mask_and(mask: BlockSparse, variant: Variant | None, device) -> Variant:
    """``mask_variant(mask)`` and-ed with ``variant``: what the kernel runs (and what decides its backend)."""
    mv = mask_variant(check_mask(mask), device=device)
    return mv if variant is None else combine(mv, variant, name=f"{mv.name}_{variant.name}")


def _plan(mask: BlockSparse, full: Variant, variant: Variant | None, *, num_qo_heads: int, num_kv_heads: int,
          head_dim: int, dtype: torch.dtype, causal: bool, num_sms, shape, page_size: int = 16, page_table=None,
          backend: str = "mma"):
    """The prefill plan of one sequence whose key segments are ``mask``'s listed blocks (``full``: the variant it
    runs, from :func:`_mask_and`)."""
    M, N = check_mask(mask, *(shape or (None, None))).shape
    if causal and M > N:
        raise InputError(f"causal needs q tokens <= kv tokens, got {M} > {N}")
    # (a variant's own mask makes the mask's full blocks partial: then its mask_mod runs on every visible logit)
    return plan_batch([M], [N], num_qo_heads=num_qo_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, dtype=dtype,
                      causal=causal, variant=full, num_sms=num_sms, block_masks=[mask], page_size=page_size,
                      page_table=page_table, backend=backend,
                      full_blocks=variant is None or variant.mask_mod is None)


def plan_block_sparse(mask: BlockSparse, *, num_qo_heads: int, num_kv_heads: int, head_dim: int,
                      dtype: torch.dtype = torch.bfloat16, device="cuda", variant: Variant | None = None,
                      causal: bool = False, num_sms=None, shape: tuple[int, int] | None = None,
                      page_size: int = 16, page_table=None, backend: str = "mma"):
    """The plan and the variant that :func:`block_sparse_attention` runs (keep them, with a
    :class:`~infernb.ops.PrefillRunner`, to run the same mask many times): the prefill kernel's plan of one sequence
    whose key segments are ``mask``'s listed blocks, and ``mask_variant(mask)`` (and-ed with ``variant``) for the
    elements of its partial blocks (``shape``: the (q tokens, kv tokens) the mask must have). Returns ``(plan,
    variant)``. ``page_size``, ``page_table``: a paged cache's (the sequence's table), for keys read through it.
    ``backend``: the kernel the plan is for (``"mma"`` or ``"sm90"``, :func:`~infernb.ops.prefill.plan_batch`)."""
    check_mask(mask, *(shape or (None, None)))             # (the mask's errors before its variant is built)
    full = _mask_and(mask, variant, device)
    return _plan(mask, full, variant, num_qo_heads=num_qo_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                 dtype=dtype, causal=causal, num_sms=num_sms, shape=shape, page_size=page_size, page_table=page_table,
                 backend=backend), full


__all__ = ["block_sparse_attention", "block_window", "check_mask", "mask_variant", "plan_block_sparse"]
