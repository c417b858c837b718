"""``plan()``: cut a batch's attention work into items and balance them over the GPU's CTAs (CPU, NumPy).

Strategy ``"balanced"`` lays every unit's cost end to end on one line (``fixed_cost`` then ``weight`` per
visible key) and cuts the line into ``num_ctas`` equal stretches, like stream-K: a CTA takes the units
inside its stretch and, at its two ends, a chunk of a unit. The split size is therefore not a constant: it
falls out of the batch (a 64k-token request is cut into as many chunks as it needs, 500-token requests are
not cut at all). A cut that lands in a unit's fixed-cost header moves to the unit's start. The same line cut
only at unit boundaries (nothing split, no merge) is kept instead unless splitting lowers the largest load by
more than ``merge_gain``: splitting must pay for the merge it causes. Everything is vectorized over units, items and CTAs: planning 256 requests takes
well under a millisecond (``benchmarks/bench_plan.py``).

Strategy ``"naive"``: one item per unit, unit ``i`` on CTA ``i % num_ctas`` (a plain grid launch), for
comparison.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from ..device import device_info
from ..errors import InputError, is_int
from .plan import Plan, variant_source

DTYPES = ("bf16", "f16", "f32")
#: CTAs per SM of the decode kernel by head dim (the planner sits below ops; tests check it equals
#: infernb.ops.paged_decode.CONFIG).
DECODE_CTAS_PER_SM = {64: 3, 128: 3, 256: 1}


def plan(qo_lens: Sequence[int], kv_lens: Sequence[int], *, num_qo_heads: int, num_kv_heads: int,
         head_dim: int, page_size: int = 16, page_table=None, causal: bool = False, window_left: int = -1,
         block_masks=None, tile_q: int | None = None, num_sms: int | None = None, ctas_per_sm: int | None = None,
         dtype: str = "bf16", strategy: str = "balanced", fixed_cost: float = 4.0, rows_balance: float = 64.0,
         merge_gain: float = 0.05, check: bool | None = None, mask_variant=None, full_blocks: bool = True) -> Plan:
    """Plan the attention of a batch.

    Args:
        qo_lens: ``[batch]`` query tokens per request (1 = decode; ``qo_len <= kv_len`` when causal).
        kv_lens: ``[batch]`` keys per request (cached prefix + new tokens).
        num_qo_heads, num_kv_heads, head_dim: the attention shape (GQA when ``num_qo_heads > num_kv_heads``).
        page_size: tokens per KV page (names the kernel; checked against ``page_table``).
        page_table: optional :class:`~infernb.layout.PageTable` whose lengths must equal ``kv_lens``.
        causal, window_left: mask structure that shortens rows (bottom-right aligned, like the reference).
        block_masks: optional per-request :class:`~infernb.layout.BlockSparse` of shape ``(qo_len, kv_len)``, or a
            :class:`~infernb.variants.Variant` with a ``mask_mod`` (its block structure, from
            :meth:`~infernb.variants.Variant.block_masks`): a tile visits only the key blocks listed for its query
            tokens, and its segments of full blocks are marked (``Plan.seg_full``: kernels skip the mask there).
        mask_variant: with BlockSparse ``block_masks``, the variant whose ``mask_mod`` is their elements (e.g.
            :func:`infernb.ops.block_sparse.mask_variant`): kernels run with it mask the partial blocks themselves
            (``Plan.mask_source``); without it such a plan runs only in the emulator, given the dense masks.
        full_blocks: ``False``: no segment is marked full (``Plan.seg_full`` 0): the kernel's mask adds conditions
            of its own beyond the block masks (a variant and-ed with them), so it must run on every block.
        tile_q: rows (token x group head) per query tile; default: the GQA group in decode, otherwise 128 /
            64 / 16 by the average packed rows per request (FlashInfer's rule).
        num_sms, ctas_per_sm: the CTAs to fill (default: the GPU's SM count, 132 = H100 without one; and the
            CTAs the kernel keeps resident per SM: the decode kernel's for decode plans, else 1).
        dtype: ``"bf16"``, ``"f16"`` or ``"f32"`` (kernel name and byte counts).
        strategy: ``"balanced"`` or ``"naive"``.
        fixed_cost: cost of one item in KV-token equivalents (query load, output and LSE write, pipeline fill).
        rows_balance: tile rows at which a key token costs twice a memory-bound one.
        check: verify the plan's invariants (:meth:`Plan.validate`) before returning it; default: only when
            ``$INFERNB_CHECK_PLANS`` is set (the emulator validates every plan it runs). Inputs are always checked.
        merge_gain: splitting units costs a merge (a second launch and partial-state traffic): the split plan
            is used only if it lowers the largest CTA load by more than this fraction.
    Returns:
        A frozen :class:`Plan`.
    """
    qo = _lens("qo_lens", qo_lens)
    kv = _lens("kv_lens", kv_lens)
    if len(qo) != len(kv):
        raise InputError(f"qo_lens has {len(qo)} requests but kv_lens has {len(kv)}")
    if ctas_per_sm is None:     # the decode kernel's occupancy (infernb.ops.paged_decode.CONFIG, kept in step)
        ctas_per_sm = DECODE_CTAS_PER_SM.get(head_dim, 1) if int(qo.max(initial=0)) <= 1 else 1
        if not device_info().arch.startswith("sm_90"):
            ctas_per_sm = min(ctas_per_sm, 2)       # pre-Hopper: 164 KB of shared memory per SM, two CTAs fit
    for name, val in (("num_qo_heads", num_qo_heads), ("num_kv_heads", num_kv_heads), ("head_dim", head_dim),
                      ("page_size", page_size), ("ctas_per_sm", ctas_per_sm),
                      ("num_sms", 1 if num_sms is None else num_sms), ("tile_q", 1 if tile_q is None else tile_q)):
        if not is_int(val) or val < 1:
            raise InputError(f"{name}: expected a positive integer, got {val!r}")
    if num_qo_heads % num_kv_heads:
        raise InputError(f"num_qo_heads ({num_qo_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
    if causal and (qo > kv).any():
        b = int(np.argmax(qo > kv))
        raise InputError(f"causal append needs qo_len <= kv_len, but request {b} has qo_len {qo[b]} > kv_len {kv[b]}")
    if not is_int(window_left) or window_left < -1:
        raise InputError(f"window_left: expected an integer, -1 (off) or >= 0, got {window_left!r}")
    # (name, value, the smallest allowed, whether 0 itself is allowed, whether +inf is)
    for name, val, zero_ok, inf_ok in (("fixed_cost", fixed_cost, True, False), ("rows_balance", rows_balance, False,
                                                                                  False),
                                       ("merge_gain", merge_gain, True, True)):
        number = isinstance(val, (int, float, np.integer, np.floating)) and not isinstance(val, (bool, np.bool_))
        if not number or not (val >= 0 if zero_ok else val > 0) or (val == float("inf") and not inf_ok):
            want = (">= 0" if zero_ok else "> 0") + (" (inf: never split)" if inf_ok else ", finite")
            raise InputError(f"{name}: expected a number {want}, got {val!r}")
    if dtype not in DTYPES:
        raise InputError(f"dtype: expected one of {DTYPES}, got {dtype!r}")
    if strategy not in ("balanced", "naive"):
        raise InputError(f"strategy: expected 'balanced' or 'naive', got {strategy!r}")
    if page_table is not None:
        if page_table.page_size != page_size:
            raise InputError(f"page_table.page_size = {page_table.page_size} but page_size = {page_size}")
        t_lens = np.asarray(page_table.kv_lens())
        if len(t_lens) != len(kv) or (t_lens != kv).any():
            b = int(np.argmax(t_lens != kv)) if len(t_lens) == len(kv) else None
            raise InputError("page_table does not match kv_lens: " + (
                f"request {b} has {t_lens[b]} tokens in the table but kv_lens[{b}] = {kv[b]}" if b is not None
                else f"{len(t_lens)} requests in the table, {len(kv)} in kv_lens"))
    group = num_qo_heads // num_kv_heads
    if tile_q is None:      # FlashInfer's rule for its fa2 prefill tiles, by the average packed rows per request
        rows_avg = float((qo * group).mean()) if len(qo) else 0.0
        tile_q = (group if int(qo.max(initial=0)) <= 1 else
                  128 if rows_avg > 64 and head_dim < 256 else 64 if rows_avg > 16 else 16)
    n_ctas = int(num_sms if num_sms is not None else device_info().sm_count) * int(ctas_per_sm)

    mask_source = ""
    if block_masks is not None:
        from ..variants import Variant                   # (a variant's mask_mod: its block structure, evaluated here)
        if isinstance(block_masks, Variant):
            variant = block_masks
            block_masks = variant.block_masks(qo, kv, num_qo_heads=num_qo_heads)
            mask_source = variant_source(variant)
        elif mask_variant is not None:
            if not isinstance(mask_variant, Variant) or mask_variant.mask_mod is None:
                raise InputError("mask_variant: expected a Variant with a mask_mod (the block masks' elements)")
            mask_source = variant_source(mask_variant)
        else:
            mask_source = "custom"
    tiles = _tiles(qo, kv, group, tile_q, causal, window_left, block_masks, full_blocks)
    (t_req, t_tok0, t_tok1, t_rows, seg_ptr, seg_s, seg_e, seg_full, t_len) = tiles
    weight = np.maximum(1.0, t_rows / rows_balance)
    H = num_kv_heads
    unit_len = np.repeat(t_len, H)                    # unit = tile * H + head
    unit_w = np.repeat(weight, H)
    U = len(unit_len)
    if strategy == "naive" or U == 0:
        item_unit = np.arange(U)
        item_s, item_e = np.zeros(U, np.int64), unit_len.copy()
        item_cta = item_unit % n_ctas
        order = np.lexsort((item_unit, item_cta))
        item_unit, item_s, item_e, item_cta = item_unit[order], item_s[order], item_e[order], item_cta[order]
    else:
        item_unit, item_s, item_e, item_cta = _balanced(unit_len, unit_w, fixed_cost, n_ctas, merge_gain)
    item_cost = fixed_cost + unit_w[item_unit] * (item_e - item_s)
    counts = np.bincount(item_unit, minlength=U)
    split = counts[item_unit] > 1
    item_slot = np.full(len(item_unit), -1, np.int64)
    # slots grouped by unit (in key order) so the merge map is CSR over split units
    in_order = len(item_unit) < 2 or bool((item_unit[1:] >= item_unit[:-1]).all())   # balanced plans are
    by_unit = np.arange(len(item_unit)) if in_order else np.lexsort((item_s, item_unit))
    split_sorted = by_unit[split[by_unit]]
    item_slot[split_sorted] = np.arange(len(split_sorted))
    merge_unit = np.flatnonzero(counts > 1)
    merge_indptr = np.zeros(len(merge_unit) + 1, np.int64)
    np.cumsum(counts[merge_unit], out=merge_indptr[1:])
    p = Plan(
        qo_lens=qo, kv_lens=kv, num_qo_heads=num_qo_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
        page_size=page_size, causal=bool(causal), window_left=int(window_left), tile_q=int(tile_q), dtype=dtype,
        strategy=strategy, num_ctas=int(n_ctas), fixed_cost=float(fixed_cost), rows_balance=float(rows_balance),
        tile_request=t_req, tile_token_start=t_tok0, tile_token_end=t_tok1, tile_rows=t_rows, tile_kv_len=t_len,
        tile_weight=weight, seg_indptr=seg_ptr, seg_start=seg_s, seg_end=seg_e, seg_full=seg_full, item_unit=item_unit,
        item_kv_start=item_s, item_kv_end=item_e, item_cta=item_cta, item_cost=item_cost, item_slot=item_slot,
        merge_indptr=merge_indptr, merge_unit=merge_unit, merge_slots=item_slot[split_sorted],
        cta_load=np.bincount(item_cta, weights=item_cost, minlength=n_ctas), mask_source=mask_source)
    if check or (check is None and os.environ.get("INFERNB_CHECK_PLANS")):
        p.validate()
    return p


def _lens(name, x) -> np.ndarray:
    a = np.asarray(x.tolist() if hasattr(x, "tolist") else x)
    if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
        raise InputError(f"{name}: expected a 1-D sequence of integers, got {a.dtype} with shape {a.shape}")
    a = a.astype(np.int64)
    if (a < 0).any():
        b = int(np.argmax(a < 0))
        raise InputError(f"{name}: lengths must be >= 0, but request {b} has {a[b]}")
    return a


def _tiles(qo, kv, group, tile_q, causal, window_left, block_masks, full_blocks=True):
    """Query tiles of every request and the key segments each tile must visit (vectorized unless block masks)."""
    rows = qo * group
    n_tiles = -(-rows // tile_q)
    t_req = np.repeat(np.arange(len(qo)), n_tiles)
    t_idx = np.arange(len(t_req)) - np.repeat(np.cumsum(n_tiles) - n_tiles, n_tiles)
    r0 = t_idx * tile_q
    r1 = np.minimum(rows[t_req], r0 + tile_q)
    tok0, tok1 = r0 // group, (r1 - 1) // group + 1
    t_rows = r1 - r0
    q_first = kv[t_req] - qo[t_req] + tok0               # position of the tile's first / last query
    q_last = kv[t_req] - qo[t_req] + tok1 - 1
    hi = np.minimum(kv[t_req], q_last + 1) if causal else kv[t_req].copy()
    lo = np.maximum(0, q_first - window_left) if window_left >= 0 else np.zeros_like(hi)
    lo = np.minimum(lo, hi)
    if block_masks is None:
        seg_ptr = np.arange(len(t_req) + 1, dtype=np.int64)
        return t_req, tok0, tok1, t_rows, seg_ptr, lo, hi, np.zeros(len(t_req), np.int64), hi - lo
    if len(block_masks) != len(qo):
        raise InputError(f"block_masks: expected {len(qo)} (one per request), got {len(block_masks)}")
    seg_s, seg_e, seg_f, seg_ptr = [], [], [], [0]
    for t in range(len(t_req)):
        b = int(t_req[t])
        bm = block_masks[b]
        if bm.shape != (int(qo[b]), int(kv[b])):
            raise InputError(f"block_masks[{b}]: shape {bm.shape} must be (qo_len, kv_len) = ({qo[b]}, {kv[b]})")
        R, C = bm.block
        br0, br1 = int(tok0[t]) // R, (int(tok1[t]) - 1) // R + 1
        a, z = int(bm.indptr[br0]), int(bm.indptr[br1])
        listed = bm.indices[a:z].numpy().astype(np.int64)
        cols, inv = np.unique(listed, return_inverse=True)
        # a column is full for the tile when it is listed and full in every block row the tile's tokens touch
        full = np.bincount(inv, weights=bm.is_full[a:z].numpy().astype(np.float64), minlength=len(cols)) == br1 - br0
        full &= full_blocks
        s = np.maximum(cols * C, lo[t])
        e = np.minimum(np.minimum((cols + 1) * C, kv[b]), hi[t])
        keep = e > s
        s, e, full = s[keep], e[keep], full[keep]
        if len(s) > 1:                                    # merge touching blocks of the same kind into one segment
            brk = np.r_[True, (s[1:] != e[:-1]) | (full[1:] != full[:-1])]
            s, e, full = s[brk], np.r_[e[:-1][brk[1:]], e[-1]], full[brk]
        seg_s.append(s)
        seg_e.append(e)
        seg_f.append(full.astype(np.int64))
        seg_ptr.append(seg_ptr[-1] + len(s))
    seg_s = np.concatenate(seg_s) if seg_s else np.zeros(0, np.int64)
    seg_e = np.concatenate(seg_e) if seg_e else np.zeros(0, np.int64)
    seg_f = np.concatenate(seg_f) if seg_f else np.zeros(0, np.int64)
    seg_ptr = np.asarray(seg_ptr, np.int64)
    t_len = np.zeros(len(t_req), np.int64)
    nz = np.diff(seg_ptr) > 0
    if nz.any():
        t_len[nz] = np.add.reduceat(seg_e - seg_s, seg_ptr[:-1][nz])
    return t_req, tok0, tok1, t_rows, seg_ptr, seg_s, seg_e, seg_f, t_len


def _balanced(L, w, F, n, merge_gain):
    """Cut the cost line into stretches, one per CTA; return items (unit, kv_start, kv_end, cta) by CTA."""
    U = len(L)
    cost = F + w * L
    cum = np.zeros(U + 1)
    np.cumsum(cost, out=cum[1:])
    W = cum[-1]
    units = np.arange(U)
    # 1. no unit split (nothing to merge): units in order, cut at the boundaries nearest to k * W / m over
    #    m = min(n, U) CTAs; or a plain round robin when that is better (many equal units)
    m = min(n, U)
    targets = W * np.arange(1, m) / m
    j = np.searchsorted(cum, targets)
    j = np.where((j > 0) & (targets - cum[np.maximum(j - 1, 0)] < cum[np.minimum(j, U)] - targets), j - 1, j)
    j = np.maximum.accumulate(np.minimum(np.maximum(j, 0), U))
    unsplit = (units, np.zeros(U, np.int64), L.copy(), np.searchsorted(j, units, side="right"))
    unsplit_max = np.diff(np.concatenate(([0.0], cum[j], [W]))).max()
    rr_max = np.bincount(units % n, weights=cost, minlength=n).max() if U else 0.0
    if rr_max < unsplit_max:
        order = np.lexsort((units, units % n))
        unsplit, unsplit_max = (units[order], np.zeros(U, np.int64), L[order].copy(), (units % n)[order]), rr_max
    if unsplit_max <= (1 + merge_gain) * W / n:        # no split plan can beat W / n: done, nothing to merge
        return unsplit
    # 2. cuts anywhere, at key granularity. Every CTA after the first usually starts inside a unit and pays
    #    one more fixed cost for that continuation item, so the first stretch is longer by F: cut k starts at
    #    F + k * (W - F) / n on the line. What the line cannot see (a CTA holding two unit ends pays two fixed
    #    costs, keys are whole) is corrected by moving each cut back by the excess load accumulated before it;
    #    the best attempt is kept.
    pos = F + (W - F) * np.arange(1, n) / n
    best, best_max = None, np.inf
    for _ in range(3):
        split = _items(L, *_cut_at(pos, cum, L, w, F, U), n)
        loads = np.bincount(split[3], weights=F + w[split[0]] * (split[2] - split[1]), minlength=n)
        if loads.max() < best_max:
            best, best_max = split, loads.max()
        if best_max <= 1.01 * W / n:                      # good enough: skip further corrections
            break
        pos = pos - np.cumsum(loads - loads.mean())[:-1]
    return best if unsplit_max > (1 + merge_gain) * best_max else unsplit


def _cut_at(pos, cum, L, w, F, U):
    """Line positions -> cuts (unit, key offset); a position inside a unit's header snaps to its start."""
    pos = np.minimum(np.maximum(pos, 0), cum[-1])
    u = np.minimum(np.maximum(np.searchsorted(cum, pos, side="right") - 1, 0), U - 1)
    o = pos - cum[u]
    t = np.rint((o - F) / w[u]).astype(np.int64)
    t = np.where(o < F / 2, 0, np.maximum(t, 1))
    nxt = t >= L[u]                                       # past the unit's last key: cut at the next unit
    return np.where(nxt, u + 1, u), np.where(nxt, 0, t)


def _items(L, cut_u, cut_t, n):
    """Items of the stretches between cuts: CTA k covers [(cu[k], ct[k]), (cu[k+1], ct[k+1])) in (unit, key)
    order. Returns (unit, kv_start, kv_end, cta) arrays ordered by CTA."""
    U = len(L)
    radix = int(L.max(initial=0)) + 1
    key = np.maximum.accumulate(np.concatenate(([0], cut_u * radix + cut_t, [U * radix])))   # never backwards
    cu, ct = key // radix, key % radix
    last = np.where(ct[1:] > 0, cu[1:], cu[1:] - 1)       # last unit (partly) inside each stretch
    first = cu[:-1]
    count = np.maximum(0, last - first + 1)
    count = np.where(key[:-1] == key[1:], 0, count)       # empty stretch
    cta = np.repeat(np.arange(n), count)
    base = np.repeat(first, count)
    unit = base + np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    start = np.where(unit == base, np.repeat(ct[:-1], count), 0)
    end_cut = np.repeat(ct[1:], count)
    end = np.where((unit == np.repeat(cu[1:], count)) & (end_cut > 0), end_cut, L[unit])
    return unit, start, end, cta
