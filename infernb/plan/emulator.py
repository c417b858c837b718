"""Execute a :class:`Plan` item by item with the reference math, then merge split units by LSE.

This is the CPU twin of the GPU kernels (it runs on any device, slowly and exactly): each item computes
attention of its tile's query rows over its chunk of visible keys with :func:`infernb.reference.attend`, an
unsplit unit writes the output directly, a split unit's items write partial states that
:func:`infernb.reference.merge_states` combines, exactly as the merge kernel will.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from ..reference import RoPE, apply_rope, attend, gather_paged_kv, merge_states
from .plan import Plan


def emulate(plan: Plan, q: torch.Tensor, k: torch.Tensor | None = None, v: torch.Tensor | None = None, *,
            kv_cache=None, page_table=None, layout: str = "NHD", sm_scale: float | None = None,
            logits_soft_cap: float = 0.0, alibi_slopes: torch.Tensor | None = None, custom_masks=None,
            score_mod=None, mask_mod=None, softmax: bool = True, rope: RoPE | None = None,
            rope_positions=None, compute_dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``plan`` on concrete tensors.

    Args:
        plan: from :func:`infernb.plan` (its causal / window / block masks are applied here too).
        q: ``[sum(qo_lens), num_qo_heads, head_dim]``.
        k, v: ``[sum(kv_lens), num_kv_heads, head_dim]`` ragged keys/values, or instead
        kv_cache, page_table: a page pool (``PagedKVCache.pool`` or a raw pool) and its :class:`PageTable`.
        sm_scale, logits_soft_cap, alibi_slopes, score_mod, mask_mod, softmax, rope: as in
            :func:`infernb.reference.attention` (``softmax=False``, sigmoid attention, needs an unsplit plan: its
            parts add up instead of merging by LSE).
        custom_masks: optional per-request ``[qo_len, kv_len]`` bool masks (e.g. ``BlockSparse.to_dense()``).
        rope_positions: ``(q_pos [sum(qo_lens)], k_start [batch])``: RoPE rotates query row ``i`` at ``q_pos[i]`` and
            request ``b``'s key ``j`` at ``k_start[b] + j`` (default: the append convention, ``kv_len - qo_len + i``
            and ``j``); masks and variants still see the request's own positions.
    Returns:
        ``(out [sum(qo_lens), num_qo_heads, head_dim], lse [sum(qo_lens), num_qo_heads])`` in ``compute_dtype``.
    """
    plan.validate()                                   # an emulated plan is always a checked plan
    if not softmax and len(plan.merge_unit):
        raise InputError("sigmoid attention (softmax=False) needs an unsplit plan: its parts add up instead of "
                         "merging by LSE (plan(..., merge_gain=float('inf')))")
    if plan.block_masked and custom_masks is None and not (plan.mask_source.startswith("variant:") and mask_mod):
        raise InputError("this plan was built with block_masks: pass their dense masks as custom_masks "
                         "(e.g. [m.to_dense() for m in block_masks]) so partial blocks are masked exactly, or, for a "
                         "plan of a variant's block structure, the variant's mask_mod")
    if kv_cache is not None:
        if page_table is None:
            raise InputError("page_table: required with kv_cache")
        t_lens = page_table.kv_lens()
        if page_table.page_size != plan.page_size or t_lens != plan.kv_lens.tolist():
            raise InputError(f"page_table does not match the plan: page_size {page_table.page_size} vs "
                             f"{plan.page_size}, kv_lens {t_lens[:8]} vs {plan.kv_lens.tolist()[:8]}")
        pool = kv_cache.pool if hasattr(kv_cache, "pool") else kv_cache
        k, v, _ = gather_paged_kv(pool, page_table.indptr, page_table.indices, page_table.last_page_len,
                                  layout=kv_cache.layout if hasattr(kv_cache, "pool") else layout)
    if k is None or v is None:
        raise InputError("emulate needs k and v, or kv_cache and page_table")
    qo_ptr = np.r_[0, np.cumsum(plan.qo_lens)]
    kv_ptr = np.r_[0, np.cumsum(plan.kv_lens)]
    hq, hkv, g = plan.num_qo_heads, plan.num_kv_heads, plan.group
    if q.shape != (qo_ptr[-1], hq, plan.head_dim):
        raise InputError(f"q: expected shape {[int(qo_ptr[-1]), hq, plan.head_dim]} (from the plan), got {list(q.shape)}")
    if k.shape[:2] != (kv_ptr[-1], hkv) or v.shape[:2] != (kv_ptr[-1], hkv):
        raise InputError(f"k/v: expected [{int(kv_ptr[-1])}, {hkv}, ...] (from the plan), got "
                         f"{list(k.shape)} / {list(v.shape)}")
    scale = plan.head_dim ** -0.5 if sm_scale is None else float(sm_scale)
    dev = q.device
    out = torch.zeros(q.shape[0], hq, v.shape[2], dtype=compute_dtype, device=dev)
    lse = torch.full((q.shape[0], hq), float("-inf"), dtype=compute_dtype, device=dev)
    n_slots = len(plan.merge_slots)
    part_o = torch.zeros(n_slots, plan.tile_q, v.shape[2], dtype=compute_dtype, device=dev)
    part_l = torch.full((n_slots, plan.tile_q), float("-inf"), dtype=compute_dtype, device=dev)

    roped = {}

    def request_qk(b):
        """The request's q and k with RoPE applied at their positions (cached per request)."""
        if b not in roped:
            qb = q[qo_ptr[b]:qo_ptr[b + 1]].to(compute_dtype)
            kb = k[kv_ptr[b]:kv_ptr[b + 1]].to(compute_dtype)
            if rope is not None:
                L, S = int(plan.qo_lens[b]), int(plan.kv_lens[b])
                if rope_positions is None:
                    pq, pk = torch.arange(S - L, S, device=dev), torch.arange(S, device=dev)
                else:
                    pq = torch.as_tensor(np.asarray(rope_positions[0])[qo_ptr[b]:qo_ptr[b + 1]], device=dev)
                    pk = int(np.asarray(rope_positions[1])[b]) + torch.arange(S, device=dev)
                qb = apply_rope(qb, pq, rope, compute_dtype=compute_dtype)
                kb = apply_rope(kb, pk, rope, compute_dtype=compute_dtype)
            roped[b] = (qb, kb)
        return roped[b]

    for i in range(plan.num_items):
        unit = int(plan.item_unit[i])
        tile, h = divmod(unit, hkv)
        b = int(plan.tile_request[tile])
        L, S = int(plan.qo_lens[b]), int(plan.kv_lens[b])
        row0, rows = _tile_first_row(plan, tile), int(plan.tile_rows[tile])
        t0, t1 = row0 // g, (row0 + rows - 1) // g + 1                 # tokens the tile's rows belong to
        keys = _positions(plan, tile, int(plan.item_kv_start[i]), int(plan.item_kv_end[i]))
        qb, kb = request_qk(b)
        heads = torch.arange(h * g, (h + 1) * g)
        # all g query heads of kv head h for the tile's tokens, in one call; rows outside the tile are dropped
        o, l = attend(qb[t0:t1, h * g:(h + 1) * g], kb[keys, h][:, None].expand(-1, g, -1),
                      v[kv_ptr[b] + keys, h].to(compute_dtype)[:, None].expand(-1, g, -1),
                      torch.arange(t0, t1) + (S - L), keys, heads, b=b, sm_scale=scale, causal=plan.causal,
                      window_left=plan.window_left, logits_soft_cap=logits_soft_cap, alibi_slopes=alibi_slopes,
                      keep=None if custom_masks is None else custom_masks[b][t0:t1][:, keys], score_mod=score_mod,
                      mask_mod=mask_mod, softmax=softmax, compute_dtype=compute_dtype)
        r = torch.arange(row0, row0 + rows)
        tok, hig = r // g, r % g                                       # token and head-in-group of each row
        o, l = o[tok - t0, hig], l[tok - t0, hig]
        slot = int(plan.item_slot[i])
        if slot < 0:
            out[qo_ptr[b] + tok, h * g + hig] = o
            lse[qo_ptr[b] + tok, h * g + hig] = l
        else:
            part_o[slot, :rows] = o
            part_l[slot, :rows] = l
    # merge split units (what the merge kernel does on the GPU)
    for m, unit in enumerate(plan.merge_unit.tolist()):
        tile, h = divmod(unit, hkv)
        b = int(plan.tile_request[tile])
        rows = int(plan.tile_rows[tile])
        slots = torch.tensor(plan.merge_slots[plan.merge_indptr[m]:plan.merge_indptr[m + 1]].tolist())
        mo, ml = merge_states(part_o[slots, :rows].transpose(0, 1)[:, :, None],
                              part_l[slots, :rows].transpose(0, 1)[:, :, None], compute_dtype=compute_dtype)
        row_ids = torch.arange(_tile_first_row(plan, tile), _tile_first_row(plan, tile) + rows)
        tok, head = row_ids // g, h * g + row_ids % g
        out[qo_ptr[b] + tok, head] = mo[:, 0]
        lse[qo_ptr[b] + tok, head] = ml[:, 0]
    return out, lse


def _tile_first_row(plan: Plan, tile: int) -> int:
    """First (token x group) row of a tile inside its request."""
    b = plan.tile_request[tile]
    first_tile = int(np.searchsorted(plan.tile_request, b, side="left"))
    return (tile - first_tile) * plan.tile_q


def _positions(plan: Plan, tile: int, c0: int, c1: int) -> torch.Tensor:
    """Key positions of compressed keys ``[c0, c1)`` of ``tile`` (through its segments)."""
    s = plan.seg_start[plan.seg_indptr[tile]:plan.seg_indptr[tile + 1]]
    e = plan.seg_end[plan.seg_indptr[tile]:plan.seg_indptr[tile + 1]]
    pos = np.concatenate([np.arange(a, z) for a, z in zip(s, e)]) if len(s) else np.zeros(0, np.int64)
    return torch.as_tensor(pos[c0:c1], dtype=torch.long)
