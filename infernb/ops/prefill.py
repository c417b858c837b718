"""Prefill and append attention on tensor cores: ragged or paged KV, one kernel body (``kernels/include/infernb/
prefill.cuh``).

Three doors, from lean to convenient:

- :class:`PrefillRunner` binds a plan, its KV source (ragged, or a paged cache and its page table), a variant and
  RoPE once, and is then called once per layer: ``out, lse = runner(q, k, v)`` or ``runner(q, cache=cache)``;
- :func:`infernb.run` with a prefill plan builds the runner each call;
- :func:`prefill` (ragged tensors, ``qo_indptr`` / ``kv_indptr``) and :func:`append` (new tokens of sequences of a
  :class:`~infernb.layout.PagedKVCache`) plan too: for notebooks.

Conventions are :mod:`infernb.reference`'s (FlashInfer's): causal masks align bottom-right, so a request with
``qo_len`` new tokens and ``kv_len`` keys is an append of ``qo_len`` tokens onto ``kv_len - qo_len`` cached ones.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
import torch

from ..device import device_info
from ..errors import InputError
from ..jit import KernelSpec, build
from ..plan import Plan, emulate, plan as make_plan, token_positions
from ..reference import RoPE
from ..variants import Variant
from .prefill_sm90 import SM90_TRAITS, Sm90Launch, resolve_backend
from ._common import (CUDA_TYPES, DTYPE_NAMES, DTYPES, HEAD_DIMS, KV_MODES, check_paged_inputs, check_pool,
                      check_q, check_rope, NONE, check_variant, hook_flags, page_shift, plan_dtype, prepare_outputs,
                      record_check, records_to_device, rope_mode, rope_table_bytes)

NUM_THREADS = 128

#: The work item the kernel reads (``prefill_item_t`` in ``kernels/include/infernb/prefill.cuh``; every compiled
#: unit checks these offsets with ``static_assert``).
PREFILL_ITEM = np.dtype([(n, np.int32) for n in (
    "b", "kv_head", "q_start", "row0", "rows", "qo_len", "kv_len", "kv_start", "run_begin", "run_end", "slot",
    "merge_unit", "slot_begin", "slot_end", "pad0", "pad1")])
#: A key run ``[pos_start, pos_end)`` (``prefill_run_t``).
PREFILL_RUN = np.dtype([("pos_start", np.int32), ("pos_end", np.int32)])


@dataclasses.dataclass(frozen=True)
class PrefillTraits:
    """The prefill kernel family's facts for one (head dim, query tile): what the planner and the runner need.

    Attributes:
        head_dim, tile_q: the specialization (``tile_q`` = 64 ``m_tiles`` rows per warp x 4 warps).
        m_tiles: 16-row mma tiles per warp; block_n: keys per pipeline stage; stages: K/V buffers.
        sub_n: keys per compute step inside a stage (what the logits' registers hold; 0: the whole stage).
        hooked_n: keys per step of the specializations that run more than the plain logit path -- a variant's
            ``score_mod`` / ``mask_mod`` or the in-tile RoPE -- where the plain path's step would spill (0: the
            same step). The kernel itself caps a step at 32 keys on sm_80 (its ptxas spills the 128-row tile's
            64-key step there).
        ctas_per_sm: CTAs an SM keeps resident (registers and shared memory allow it); plan with this.
        fixed_cost: an item's own cost in key tokens for the planner (pipeline restart, Q tile load, epilogue):
            measured, benchmarks/NOTES.md (4, the decode figure, left CTAs of many short causal items a third of
            the kernel behind; 256 ran 8192 causal 1.45x faster; the 128-row tile at head dim 128: 512, swept
            with benchmarks/diag/prefill_fixed_cost.py).
    """

    head_dim: int
    tile_q: int
    m_tiles: int
    block_n: int
    stages: int
    ctas_per_sm: int
    fixed_cost: float = 256.0
    sub_n: int = 0
    hooked_n: int = 0

    @property
    def step_n(self) -> int:
        """Keys per compute step (``sub_n``, or ``block_n`` when 0)."""
        return self.sub_n or self.block_n

    def smem_bytes(self, rope: int = 0) -> int:
        """Dynamic shared memory per CTA (``prefill_cfg_t::SMEM_BYTES``; each compiled unit checks they agree)."""
        d = self.head_dim
        return (self.stages * 2 * self.block_n * d * 2 + self.tile_q * d * 2 + 128 * 48 + 192 + self.tile_q * 8 +
                rope_table_bytes(d, rope) + self.stages * self.block_n * 4)


#: (head_dim, tile_q) -> traits. Two CTAs per SM everywhere (registers: <= 255 per thread x 128 threads; shared
#: memory: <= 113 KiB each). The 128-row tiles (32 rows per warp) read half the shared memory per mma of the 64-row
#: ones; at head dim 128 their O accumulators take 128 fp32 registers beside a 64-key step's 64 logits: that fits in
#: 255 without spilling on sm_90a since the ldmatrix offsets come from a lane table, the row sums from the tensor
#: core and the producer's cursor waits in shared memory (benchmarks/NOTES.md; 32-key steps were 7% slower), on the
#: plain logit path; hooked specializations (variants, in-tile RoPE) keep 32-key steps. Head dim 256 has no 128-row
#: tile (its O alone would be 256 registers).
TRAITS = {(64, 128): PrefillTraits(64, 128, 2, 64, 2, 2), (64, 64): PrefillTraits(64, 64, 1, 64, 2, 2),
          (128, 128): PrefillTraits(128, 128, 2, 64, 2, 2, fixed_cost=512.0, hooked_n=32),
          (128, 64): PrefillTraits(128, 64, 1, 64, 2, 2),
          (256, 64): PrefillTraits(256, 64, 1, 32, 2, 2)}


def traits(head_dim: int, tile_q: int, rope: int = 0) -> PrefillTraits:
    """The traits of a specialization (``rope``: the in-tile RoPE mode, 0 for none; it computes ``hooked_n``-key
    steps); raises ``InputError`` for one the kernel does not have."""
    t = TRAITS.get((head_dim, tile_q))
    if t is None:
        have = sorted(k for k in TRAITS if k[0] == head_dim)
        raise InputError(f"the prefill kernel has no tile of {tile_q} rows for head_dim {head_dim} (it has "
                         f"{[k[1] for k in have] or 'none: head dims ' + str(HEAD_DIMS)}); plan with tile_q="
                         f"{default_tile_q(1 << 20, head_dim)}")
    return _hooked(t) if rope else t


def _hooked(t: PrefillTraits) -> PrefillTraits:
    return dataclasses.replace(t, sub_n=t.hooked_n) if t.hooked_n and t.step_n > t.hooked_n else t


#: The split threshold of prefill plans (``infernb.plan``'s ``merge_gain``): split units only when that lowers the
#: busiest CTA's load by more than 5%. Measured (H200, benchmarks/NOTES.md): at 1% the skewed batch (1 x 16384 +
#: 63 x 512, 5.1% over the mean load unsplit) ran 0-1.6% faster, but the windowed cases split hundreds of short units
#: for a predicted 2% and ran 5-9% slower: a split item's partial state and its merge cost more than the planner's
#: fixed cost counts.
MERGE_GAIN = 0.05

#: The largest query tile the default rule picks per head dim (256: 64 rows, the only tile it has).
MAX_DEFAULT_TILE = {64: 128, 128: 128, 256: 64}


def default_tile_q(rows_avg: float, head_dim: int) -> int:
    """FlashInfer's tile rule (by the average packed rows per request), at least 64 rows (the kernel's 4 warps
    of 16) and at most :data:`MAX_DEFAULT_TILE`: 128 when ``rows_avg > 64`` and the head dim allows it, else 64."""
    return 128 if rows_avg > 64 and MAX_DEFAULT_TILE.get(head_dim, 64) >= 128 else 64


def _struct_checks() -> str:
    return (record_check(PREFILL_ITEM, "prefill_item_t", "PREFILL_ITEM_NAMES") +
            f'\nstatic_assert(sizeof(infernb::prefill_run_t) == {PREFILL_RUN.itemsize}, "PREFILL_RUN");')


def variant_traits(tr: PrefillTraits, variant: Variant) -> PrefillTraits:
    """The traits a variant's specialization compiles with. A variant whose hooks read a captured tensor at an index
    that depends on the key (a document id, a T5 bucket's bias: ``Generated.key_gathers``) computes 16-key steps
    where the tile's steps are longer: its hooks run branch-free on every logit of a step, and at 32 keys the
    gathers' 64-bit addresses spill past 255 registers at the 128-row tile. Other hooked variants compute the
    tile's ``hooked_n``-key steps, except a light one: a traced ``score_mod`` alone that captures no tensor and calls
    no accurate math-library function (e.g. ``softcap(approx=True)``), which fits the plain path's step
    (benchmarks/NOTES.md: soft-cap 1.09x of plain at 64 keys, 1.19x at 32)."""
    if tr.step_n > 16 and variant.generated.key_gathers:
        return dataclasses.replace(tr, sub_n=16)
    hooks = (variant.score_mod, variant.cuda_score_mod, variant.mask_mod, variant.cuda_mask_mod)
    if not any(h is not None for h in hooks):
        return tr
    g = variant.generated
    light = (variant.score_mod is not None and all(h is None for h in hooks[1:]) and not g.captures
             and not g.lib_calls)
    return tr if light else _hooked(tr)


def rope_tiles_per_request(plan: Plan) -> float:
    """Query tiles per (request, KV head), averaged over the requests with queries: how many times the in-tile
    rotation rotates each key (``PrefillRunner(rope_path="auto")`` rotates them once by a pass at >= 2)."""
    rows = plan.qo_lens[plan.qo_lens > 0].astype(np.int64) * plan.group
    return float(np.mean(-(-rows // plan.tile_q))) if len(rows) else 0.0


def prefill_spec(dtype: torch.dtype, head_dim: int, tile_q: int, kv: str = "ragged", causal: bool = False,
                 variant: Variant = NONE, rope: RoPE | None = None, *,
                 config: PrefillTraits | None = None, rope_pass: RoPE | None = None) -> KernelSpec:
    """The prefill specialization for (dtype, head dim, query tile, KV source ``"ragged"`` / ``"NHD"`` / ``"HND"``,
    causal, variant, RoPE layout); ``config`` overrides :data:`TRAITS` (experiments: stages, keys per stage, CTAs
    per SM). ``rope_pass``: the unit also holds the rotation pass of that RoPE layout (``rope_pass_kernel``; the
    attention kernel then rotates nothing: ``rope`` must be None)."""
    if rope is not None and rope_pass is not None:
        raise InputError("rope (in the tile) and rope_pass (a pass before the kernel) exclude each other")
    mode = rope_mode(rope)
    tr = variant_traits(traits(head_dim, tile_q, mode), variant)
    tuned = config is not None and config != tr
    if config is not None:
        if (config.head_dim, config.tile_q) != (head_dim, tile_q):
            raise InputError(f"config is for head_dim {config.head_dim}, tile {config.tile_q}; the spec is for "
                             f"{head_dim}, {tile_q}")
        tr = config
    g = variant.generated
    score, mask = hook_flags(variant)
    b = lambda x: "true" if x else "false"  # noqa: E731
    args = (f"{CUDA_TYPES[dtype]}, {head_dim}, {tr.m_tiles}, {tr.block_n}, {tr.step_n}, {tr.stages}, {KV_MODES[kv]}, "
            f"{b(causal)}, {variant.cuda_name}, {b(score)}, {b(mask)}, {mode}, {tr.ctas_per_sm}")
    cfg = f"infernb::prefill_cfg_t<{CUDA_TYPES[dtype]}, {head_dim}, {tr.m_tiles}, {tr.block_n}, {tr.stages}, {mode}>"
    check = (f"static_assert({cfg}::SMEM_BYTES == {tr.smem_bytes(mode)} && {cfg}::TILE_Q == {tile_q}, "
             "\"infernb.ops.prefill.PrefillTraits disagrees with prefill_cfg_t\");\n" + _struct_checks())
    rope_tag = ["", "_rope", "_rope_interleave"][mode]
    kernels = (("prefill", f"infernb::prefill_kernel<{args}>"),)
    if rope_pass is not None:
        pm = rope_mode(rope_pass)
        rope_tag = ["", "_ropepass", "_ropepass_interleave"][pm]
        kernels += (("rope_pass", f"infernb::rope_pass_kernel<{CUDA_TYPES[dtype]}, {pm}, {head_dim}>"),)
    return KernelSpec(
        family="prefill",
        name=(f"prefill_{DTYPE_NAMES[dtype]}_hd{head_dim}_t{tile_q}_{kv.lower()}{'_causal' if causal else ''}"
              f"{rope_tag}_{variant.name}_{variant.code_hash}"
              f"{f'_m{tr.m_tiles}n{tr.block_n}k{tr.step_n}s{tr.stages}c{tr.ctas_per_sm}' if tuned else ''}"),
        kernels=kernels,
        preamble=g.code + "\n" + check, preamble_origin=tuple(sorted(g.origins.items())))


def specializations() -> list[KernelSpec]:
    """What CI compiles: every (dtype, head dim, tile) ragged causal; the paged layouts and non-causal; RoPE and
    every example variant (bf16, paged NHD, causal) at each tile of head dim 128 and RoPE at the other head dims'
    default tiles."""
    from ..variants import examples

    out = [prefill_spec(dt, d, tq, "ragged", True) for dt in DTYPES for (d, tq) in TRAITS]
    out += [prefill_spec(torch.bfloat16, d, tq, kv, c) for (d, tq) in TRAITS for kv in ("NHD", "HND")
            for c in (False, True)]
    out += [prefill_spec(torch.bfloat16, d, tq, "ragged", False) for (d, tq) in TRAITS]
    out += [prefill_spec(torch.bfloat16, d, default_tile_q(4096, d), "ragged", True, rope_pass=RoPE(interleave=i))
            for d in HEAD_DIMS for i in (False, True)]
    out += [prefill_spec(torch.bfloat16, d, tq, kv, True, rope=RoPE(interleave=i))
            for (d, tq) in TRAITS if d == 128 or tq == default_tile_q(128, d)
            for kv in ("ragged", "NHD") for i in (False, True)]
    out += [prefill_spec(torch.bfloat16, 128, tq, "NHD", True, variant=v) for tq in (64, 128) for v in examples()]
    return out


# ---------------------------------------------------------------------------------------------- plan -> records
def check_prefill_plan(plan: Plan, rope: int = 0) -> PrefillTraits:
    """The prefill kernel runs plans of 64 / 128-row tiles (:data:`TRAITS`), bf16 / f16, head dims 64 / 128 / 256."""
    if plan.head_dim not in HEAD_DIMS:
        raise InputError(f"head_dim {plan.head_dim} is not supported by the prefill kernel; supported: {HEAD_DIMS}")
    if plan.dtype not in ("bf16", "f16"):
        raise InputError(f"plan dtype {plan.dtype!r}: the prefill kernel runs bf16 / f16")
    if plan.num_items and not np.array_equal(plan.merge_slots, np.arange(len(plan.merge_slots))):
        raise InputError("the prefill kernel needs a split unit's partial slots numbered consecutively "
                         "(plan.merge_slots); plan with strategy='balanced'")
    if plan.num_items > 1 and (np.diff(plan.item_cta) < 0).any():
        raise InputError("plan items must be ordered by CTA")
    return traits(plan.head_dim, plan.tile_q, rope)


def plan_records(plan: Plan, kv_start: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The kernel's arrays for ``plan``: ``items [num_items]`` :data:`PREFILL_ITEM`, ``cta_ptr [num_ctas + 1]``
    int32 (CTA c runs items ``cta_ptr[c]:cta_ptr[c+1]``), ``runs [num_runs]`` :data:`PREFILL_RUN` (each item's
    visible keys, the plan's segments cut to the item's range) and ``run_full [num_runs]`` int32 (the run's
    segment's ``Plan.seg_full``). ``kv_start [batch]``: where each request's keys start (ragged: its
    ``kv_indptr``; paged: its page table ``indptr``)."""
    H = plan.num_kv_heads
    tile = plan.item_unit // H
    b = plan.tile_request[tile]
    first_tile = np.searchsorted(plan.tile_request, np.arange(plan.batch_size), side="left")
    qo_ptr = np.concatenate(([0], np.cumsum(plan.qo_lens)))
    items = np.zeros(plan.num_items, PREFILL_ITEM)
    items["b"], items["kv_head"], items["q_start"] = b, plan.item_unit % H, qo_ptr[b]
    items["row0"] = (tile - first_tile[b]) * plan.tile_q
    items["rows"], items["qo_len"], items["kv_len"] = plan.tile_rows[tile], plan.qo_lens[b], plan.kv_lens[b]
    items["kv_start"] = np.asarray(kv_start, np.int64)[b] if plan.num_items else 0
    # runs: the segments of the item's tile, cut to the item's range [kv_start, kv_end) of the tile's compressed keys
    seg_len = plan.seg_end - plan.seg_start
    seg_cum = np.concatenate(([0], np.cumsum(seg_len)))                      # compressed start of every segment
    seg_c0 = seg_cum[:-1] - np.repeat(seg_cum[plan.seg_indptr[:-1]], np.diff(plan.seg_indptr))   # ... in its tile
    # (seg_cum has one entry past the last segment: a tile without segments, e.g. the last rows of a block mask
    # that lists no block for them, indexes it)
    run_s, run_e, run_f, counts = [], [], [], np.zeros(plan.num_items, np.int64)
    one_seg = bool((np.diff(plan.seg_indptr) == 1).all())
    if one_seg:                                                             # causal / window / full: one run each
        s0 = plan.seg_start[plan.seg_indptr[tile]] if plan.num_items else np.zeros(0, np.int64)
        run_s, run_e = s0 + plan.item_kv_start, s0 + plan.item_kv_end
        run_f = plan.seg_full[plan.seg_indptr[tile]] if plan.num_items else np.zeros(0, np.int64)
        counts[:] = 1
    else:
        for i in range(plan.num_items):
            t = int(tile[i])
            lo, hi = int(plan.seg_indptr[t]), int(plan.seg_indptr[t + 1])
            c0, c1 = int(plan.item_kv_start[i]), int(plan.item_kv_end[i])
            for sgi in range(lo, hi):
                a, z = int(seg_c0[sgi]), int(seg_c0[sgi] + seg_len[sgi])
                if z > c0 and a < c1:
                    run_s.append(int(plan.seg_start[sgi]) + max(c0, a) - a)
                    run_e.append(int(plan.seg_start[sgi]) + min(c1, z) - a)
                    run_f.append(int(plan.seg_full[sgi]))
                    counts[i] += 1
    runs = np.zeros(int(counts.sum()), PREFILL_RUN)
    runs["pos_start"], runs["pos_end"] = run_s, run_e
    ptr = np.concatenate(([0], np.cumsum(counts)))
    items["run_begin"], items["run_end"] = ptr[:-1], ptr[1:]
    # split units: partial slots (consecutive per unit) and the merge counter
    items["slot"] = plan.item_slot
    split = plan.item_slot >= 0
    munit = np.searchsorted(plan.merge_unit, plan.item_unit)
    mu = np.clip(munit, 0, max(len(plan.merge_unit) - 1, 0))
    items["merge_unit"] = np.where(split, munit, -1)
    if len(plan.merge_unit):
        items["slot_begin"] = np.where(split, plan.merge_indptr[mu], 0)
        items["slot_end"] = np.where(split, plan.merge_indptr[mu + 1], 0)
    cta_ptr = np.searchsorted(plan.item_cta, np.arange(plan.num_ctas + 1)).astype(np.int32)
    return items, cta_ptr, runs, np.asarray(run_f, np.int32).reshape(-1)


# ---------------------------------------------------------------------------------------------- the runner
class PrefillRunner:
    """A prefill / append plan bound to its KV source, variant and RoPE: call it once per layer.

    Args:
        plan: from :func:`infernb.plan` with ``tile_q`` 64 or 128 (:func:`default_tile_q`).
        cache, page_table: a :class:`~infernb.layout.PagedKVCache` and the :class:`~infernb.layout.PageTable` the
            plan was made for (paged KV; any cache of the same shape works at call time, e.g. one per layer), or
            neither: ragged ``k`` / ``v`` ``[sum(kv_lens), num_kv_heads, head_dim]`` passed at call time.
        variant: a :class:`~infernb.variants.Variant` (default plain attention); its parameters are read now.
        rope: :class:`~infernb.reference.RoPE` applied to q and to the (un-rotated) keys at their positions.
        sm_scale: logit scale (default ``1 / sqrt(head_dim)``).
        device: where ragged inputs will live (default ``"cuda"``; a CPU device runs the emulator).
        config: experiments: a :class:`PrefillTraits` other than :data:`TRAITS`' for the plan's tile (plan with
            its ``ctas_per_sm``); with ``backend="sm90"`` a :class:`~infernb.ops.prefill_sm90.Sm90Traits`.
        rope_path: where RoPE rotates the keys: ``"tile"``, in each K stage of the kernel (every query tile of a
            request rotates its keys again), ``"pass"``, once per call by a rotation pass into scratch buffers
            (q too; paged keys and values are gathered into ragged ones) before a kernel that rotates nothing, or
            ``"auto"``: the pass when the request's keys are read by 2 or more query tiles on average (a prompt,
            an append of many tokens), the tile otherwise. Both round the rotated operands once, from fp32.
        extra_options: extra NVRTC options for either kernel's build (experiments and diagnostics: ``-D...``, e.g.
            ``-DINFERNB_PREFILL_MERGE_BATCHED`` on the mma.sync kernel, ``-DINFERNB_SM90_TRACE=<ctas>`` on the Hopper one).
        rope_positions: ``(q_pos [sum(qo_lens)], k_start [batch])`` integer arrays: RoPE rotates query row ``i`` at
            ``q_pos[i]`` and request ``b``'s key ``j`` at ``k_start[b] + j`` instead of the append convention (a
            cascade's shared levels: their keys and queries sit elsewhere in their sequences than in the launch).
            Needs ``rope``; runs the rotation pass (``rope_path`` ``"pass"`` or ``"auto"``).
        backend: ``"mma"`` (the mma.sync kernel, sm_80+) or ``"sm90"`` (the Hopper kernel, wgmma + TMA:
            :mod:`infernb.ops.prefill_sm90`; its plans come from ``plan_batch(..., backend="sm90")``; raises
            ``InputError`` saying why when it cannot run this); ``"auto"`` (default) is ``"mma"`` here: a plan is
            made for one kernel (the front doors choose). A CPU device runs the emulator whatever the backend.
    """

    def __init__(self, plan: Plan, cache=None, page_table=None, *, variant: Variant | None = None,
                 rope: RoPE | None = None, sm_scale: float | None = None, device=None,
                 config: PrefillTraits | None = None, rope_path: str = "auto", backend: str = "auto",
                 extra_options: tuple[str, ...] = (), rope_positions=None):
        variant = check_variant(variant, plan)
        if rope_path not in ("auto", "tile", "pass"):
            raise InputError(f"rope_path: expected 'auto', 'tile' or 'pass', got {rope_path!r}")
        if rope_positions is not None:
            rope_positions = self._check_rope_positions(rope_positions, plan, rope, rope_path)
            rope_path = "pass"
        self._rope_positions = rope_positions
        # the plan's block masks must be the variant's own (Plan.mask_source): the kernel masks their partial blocks
        # with its mask_mod and skips it on their full runs (Plan.seg_full, 0 without block masks)
        if plan.block_masked and not plan.masks_are(variant):
            raise InputError(
                "this plan was built with block masks that are not this variant's (plan.mask_source "
                f"{plan.mask_source!r}): the kernel masks partial blocks with the variant's mask_mod, so plan with "
                "block_masks=variant (infernb.plan / plan_batch(block_sparse=True)); a BlockSparse mask runs with "
                "infernb.block_sparse_attention (or plan_block_sparse, which plans it with its own variant)")
        if (cache is None) != (page_table is None):
            raise InputError("cache and page_table go together (paged KV), or neither (ragged k / v at call time)")
        self.paged = cache is not None
        if self.paged:
            if not hasattr(cache, "pool"):
                raise InputError("cache: expected a PagedKVCache")
            self.dtype = check_paged_inputs(plan, cache, page_table, rope)
            self.device = cache.pool.device
            self.kv = cache.layout
            self._pool_shape = tuple(cache.pool.shape)
            kv_start = page_table.indptr.cpu().numpy()
            if 2 * plan.page_size * plan.num_kv_heads * plan.head_dim >= 2**31:
                raise InputError("a page's K and V blocks exceed 2^31 elements: the prefill kernel addresses a page "
                                 "with 32-bit strides")
        else:
            self.dtype = plan_dtype(plan)
            check_rope(rope, plan.head_dim)
            self.device = torch.device("cuda" if device is None else device)
            if self.device.type == "cuda" and self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
            self.kv = "ragged"
            kv_start = np.concatenate(([0], np.cumsum(plan.kv_lens)))
        self.plan, self.cache, self.page_table, self.variant, self.rope = plan, cache, page_table, variant, rope
        self.layout = cache.layout if self.paged else "NHD"
        self.sm_scale = plan.head_dim ** -0.5 if sm_scale is None else float(sm_scale)
        self._num_q = int(plan.qo_lens.sum())
        self._num_kv = int(plan.kv_lens.sum())
        self.rope_path = None
        cuda = self.device.type == "cuda"
        self.backend = resolve_backend("mma" if backend == "auto" else backend, head_dim=plan.head_dim,
                                       dtype=self.dtype, variant=variant, rope=rope, paged=self.paged,
                                       device=self.device if cuda else None, plan=plan, rope_path=rope_path)
        if not cuda:
            return                                       # the emulator runs it (see __call__)
        if self.backend == "sm90":
            # RoPE on the Hopper kernel: the rotation pass into ragged buffers, then the kernel on ragged K/V
            if rope is not None:
                self.rope_path = "pass"
                kv_start = self._init_rope_pass(plan, page_table)
            self._upload(plan, kv_start, variant)
            dev = self.device
            passing = self.rope_path == "pass"
            self._sm90 = Sm90Launch(plan, self.dtype, dev, self.items, self.cta_ptr, self.runs, self.sm_scale,
                                    config=config, variant=variant, params=self.params, run_full=self.run_full,
                                    kv="ragged" if passing else self.kv,
                                    page_indices=page_table.indices if self.paged and not passing else None,
                                    rope_pass=rope if passing else None, extra_options=extra_options)
            if passing:
                self._pass = self._sm90.kernel.launcher("rope_pass", shared_mem=0, device_index=dev.index)
            return
        if rope is not None:
            self.rope_path = rope_path if rope_path != "auto" else \
                "pass" if rope_tiles_per_request(plan) >= 2 else "tile"
        if self.rope_path == "pass":
            kv_start = self._init_rope_pass(plan, page_table)
        mode = rope_mode(rope) if self.rope_path == "tile" else 0
        tr = check_prefill_plan(plan, mode)
        self.traits = tr = tr if config is None else config
        smem = tr.smem_bytes(mode)
        limit = getattr(torch.cuda.get_device_properties(self.device), "shared_memory_per_block_optin", smem)
        if smem > limit:
            raise InputError(f"the prefill kernel for head_dim {plan.head_dim}, tile {plan.tile_q} needs "
                             f"{smem // 1024} KiB of shared memory per CTA; this GPU allows {limit // 1024} KiB")
        passing = self.rope_path == "pass"
        self.kernel = build(prefill_spec(self.dtype, plan.head_dim, plan.tile_q, "ragged" if passing else self.kv,
                                         plan.causal, variant, None if passing else rope, config=config,
                                         rope_pass=rope if passing else None), device_info(self.device.index).arch,
                            extra_options=tuple(extra_options))
        self._upload(plan, kv_start, variant)
        dev = self.device
        self.merge_count = torch.zeros(max(len(plan.merge_unit), 1), dtype=torch.int32, device=dev)
        n_slots = len(plan.merge_slots)
        self._part = (torch.empty((n_slots, plan.tile_q, plan.head_dim), dtype=torch.float32, device=dev),
                      torch.empty((n_slots, plan.tile_q), dtype=torch.float32, device=dev)) if n_slots else None
        ps = plan.page_size
        rd = (rope.rotary_dim or plan.head_dim) if rope else plan.head_dim
        self._scalars = (np.float32(self.sm_scale), np.int32(plan.num_kv_heads), np.int32(plan.group),
                         np.int32(plan.window_left), np.int32(ps), np.int32(page_shift(ps)),
                         np.int32(rd), np.float32(math.log2(rope.theta) if rope else 0.0),
                         np.float32(1.0 / rope.scale if rope else 1.0))
        self._go = self.kernel.launcher("prefill", shared_mem=smem, device_index=dev.index)
        if passing:
            self._pass = self.kernel.launcher("rope_pass", shared_mem=0, device_index=dev.index)
        ptr = lambda t: np.uint64(t.data_ptr())  # noqa: E731
        idx = page_table.indices if self.paged and not passing else self.cta_ptr   # (ragged: never read)
        self._args_mid = (ptr(idx), ptr(self.items), ptr(self.cta_ptr), ptr(self.runs), ptr(self.params))

    def __call__(self, q: torch.Tensor, k: torch.Tensor | None = None, v: torch.Tensor | None = None, *,
                 cache=None, out: torch.Tensor | None = None,
                 lse: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention of the planned batch.

        Args:
            q: ``[sum(qo_lens), num_qo_heads, head_dim]`` fp16/bf16 (contiguous).
            k, v: ragged runners: ``[sum(kv_lens), num_kv_heads, head_dim]``, q's dtype and device.
            cache: paged runners: the cache to read (default: the one given at construction).
            out, lse: optional preallocated outputs ``[sum(qo_lens), num_qo_heads, head_dim]`` q.dtype and
                ``[sum(qo_lens), num_qo_heads]`` float32.
        Returns:
            ``(out [sum(qo_lens), num_qo_heads, head_dim] q.dtype, lse [sum(qo_lens), num_qo_heads] float32)``;
            a row that sees no key has output 0 and LSE -inf.
        """
        p = self.plan
        src = self._check(q, k, v, cache)
        specs = {"out": (tuple(q.shape), q.dtype), "lse": (tuple(q.shape[:2]), torch.float32)}
        out, lse = (torch.empty(specs[n][0], dtype=specs[n][1], device=q.device) if t is None else
                    prepare_outputs((t,), [specs[n]], q.device, names=(n,))[0] for n, t in (("out", out), ("lse", lse)))
        if q.device.type != "cuda":
            kw = dict(kv_cache=src[0], page_table=self.page_table, layout=self.layout) if self.paged else {}
            o, s = emulate(p, q, *(() if self.paged else src), sm_scale=self.sm_scale, rope=self.rope,
                           rope_positions=self._rope_positions, compute_dtype=torch.float32, **kw,
                           **self.variant.reference_kwargs())
            return out.copy_(o), lse.copy_(s)
        if p.num_items == 0:
            return out.zero_(), lse.fill_(float("-inf"))
        if self.backend == "sm90":
            if self._num_kv == 0:                         # no key at all (a TMA descriptor needs a non-empty tensor)
                return out.zero_(), lse.fill_(float("-inf"))
            if self.rope_path == "pass":                  # rotated (and, paged, gathered) into ragged buffers
                q, kr, vr = self._rotate(q, *((src[0], src[0]) if self.paged else src))
                self._sm90(q, kr, vr, out, lse)
                return out, lse
            self._sm90(q, *(src if not self.paged else (src[0], None)), out, lse)
            return out, lse
        part_o, part_lse = self._part if self._part is not None else (out, lse)   # unsplit plans never write them
        kp, vp = (src[0], src[0]) if self.paged else src
        if self.rope_path == "pass":
            q, kp, vp = self._rotate(q, kp, vp)
        ptr = np.uint64
        self._go((p.num_ctas, 1, 1), (NUM_THREADS, 1, 1),
                 (ptr(q.data_ptr()), ptr(kp.data_ptr()), ptr(vp.data_ptr()), *self._args_mid, ptr(out.data_ptr()),
                  ptr(lse.data_ptr()), ptr(part_o.data_ptr()), ptr(part_lse.data_ptr()),
                  ptr(self.merge_count.data_ptr()), *self._scalars, ptr(self.run_full.data_ptr())))
        return out, lse

    @staticmethod
    def _check_rope_positions(rope_positions, plan: Plan, rope, rope_path: str):
        """``rope_positions`` as int64 arrays, checked (see the class docstring)."""
        if rope is None:
            raise InputError("rope_positions: given without rope (they say where RoPE rotates q and the keys)")
        if rope_path == "tile":
            raise InputError("rope_positions: the rotation pass applies them (rope_path 'pass' or 'auto'), not the "
                             "kernel's K stages (rope_path='tile')")
        try:
            pq, ks = (np.asarray(x) for x in rope_positions)
        except (TypeError, ValueError) as e:
            raise InputError(f"rope_positions: expected (q_pos, k_start), got {type(rope_positions).__name__}") from e
        nq, nb = int(plan.qo_lens.sum()), len(plan.qo_lens)
        if pq.shape != (nq,) or ks.shape != (nb,) or pq.dtype.kind not in "iu" or ks.dtype.kind not in "iu":
            raise InputError(f"rope_positions: expected integer arrays q_pos [{nq}] and k_start [{nb}], got "
                             f"{pq.dtype} {list(pq.shape)} and {ks.dtype} {list(ks.shape)}")
        if (pq < 0).any() or (ks < 0).any() or (len(ks) and (ks + plan.kv_lens).max() >= 2**31) or \
                (len(pq) and pq.max() >= 2**31):
            raise InputError("rope_positions: positions must lie in 0 .. 2^31 - 1")
        return pq.astype(np.int64), ks.astype(np.int64)

    def _upload(self, plan: Plan, kv_start: np.ndarray, variant: Variant) -> None:
        """The plan's records (items, CTA lists, runs, the runs' full flags) and the variant's packed parameters on
        the device: what either kernel reads."""
        items, cta_ptr, runs, run_full = plan_records(plan, kv_start)
        dev = self.device
        self.items, self.cta_ptr = records_to_device(items, dev), records_to_device(cta_ptr, dev)
        self.runs = records_to_device(runs if len(runs) else np.zeros(1, PREFILL_RUN), dev)
        self.run_full = records_to_device(run_full if len(run_full) else np.zeros(1, np.int32), dev)
        params, self._captures = variant.pack(dev)
        self.params = torch.frombuffer(bytearray(params), dtype=torch.uint8).to(dev)

    # ------------------------------------------------------------------ the rotation pass (rope_path "pass")
    def _init_rope_pass(self, plan: Plan, page_table) -> np.ndarray:
        """Positions of every query and key token, paged keys' pool offsets; returns the ragged kv_start."""
        dev = self.device
        kv = plan.kv_lens.astype(np.int64)
        _, pos_q, _, pos_k = token_positions(plan.qo_lens, kv)
        rot_q, rot_k = pos_q, pos_k                                   # where RoPE rotates them
        if self._rope_positions is not None:
            rot_q = self._rope_positions[0]
            rot_k = pos_k + np.repeat(self._rope_positions[1], kv)
        self._pos_q = torch.from_numpy(rot_q.astype(np.int32)).to(dev)
        self._pos_k = torch.from_numpy(rot_k.astype(np.int32)).to(dev)
        self._rows = None
        if self.paged:
            # element offsets from the pool's strides: [pages, 2, page_size, heads, d] (NHD) or
            # [pages, 2, heads, page_size, d] (HND); dim 1 steps from a page's K block to its V block
            pool, ps = self.cache.pool, plan.page_size
            slot_dim, head_dim = (2, 3) if self.layout == "NHD" else (3, 2)
            ind = page_table.indices.to(torch.int64).cpu().numpy()
            first = page_table.indptr.cpu().numpy()[:-1].astype(np.int64)
            page = ind[np.repeat(first, kv) + pos_k // ps]
            self._rows = torch.from_numpy(page * pool.stride(0) + (pos_k % ps) * pool.stride(slot_dim)).to(dev)
            self._head_stride = pool.stride(head_dim)
            self._v_off = pool.stride(1)
        self._scratch = None
        return np.concatenate(([0], np.cumsum(kv)))

    def _rotate(self, q, kp, vp):
        """q and the keys rotated (and, paged, the values gathered) into ragged scratch buffers."""
        p, r = self.plan, self.rope
        nq, nk, d = self._num_q, self._num_kv, p.head_dim
        if self._scratch is None or self._scratch[0].dtype != q.dtype:
            self._scratch = (torch.empty((nq, p.num_qo_heads, d), dtype=q.dtype, device=q.device),
                             torch.empty((nk, p.num_kv_heads, d), dtype=q.dtype, device=q.device),
                             torch.empty((nk, p.num_kv_heads, d), dtype=q.dtype, device=q.device) if self.paged
                             else None)
        q2, k2, v2 = self._scratch
        rd = np.int32(r.rotary_dim or d)
        tail = (rd, np.float32(math.log2(r.theta)), np.float32(1.0 / r.scale))
        u64, i32 = np.uint64, np.int32

        def go(src, rows, hs, dst, pos, tokens, heads):
            if tokens:
                self._pass((-(-tokens * heads // 8), 1, 1), (256, 1, 1),
                           (u64(src), u64(rows), np.int64(hs), u64(dst.data_ptr()), u64(pos), i32(tokens),
                            i32(heads), *tail))
        go(q.data_ptr(), 0, 0, q2, self._pos_q.data_ptr(), nq, p.num_qo_heads)
        if self.paged:
            pool = kp
            rows, hs = self._rows.data_ptr(), self._head_stride
            go(pool.data_ptr(), rows, hs, k2, self._pos_k.data_ptr(), nk, p.num_kv_heads)
            go(pool.data_ptr() + self._v_off * pool.element_size(), rows, hs, v2, 0, nk, p.num_kv_heads)
            return q2, k2, v2
        go(kp.data_ptr(), 0, 0, k2, self._pos_k.data_ptr(), nk, p.num_kv_heads)
        return q2, k2, vp

    def _check(self, q, k, v, cache):
        p = self.plan
        check_q(q, (self._num_q, p.num_qo_heads, p.head_dim), "[sum(qo_lens), num_qo_heads, head_dim]", self.dtype,
                self.device, "the plan's")
        cuda = q.device.type == "cuda"
        if self.paged:
            if k is not None or v is not None:
                raise InputError("this runner reads a paged cache: pass cache=..., not k / v")
            return (check_pool(self.cache if cache is None else cache, self.dtype, self._pool_shape, self.layout,
                               self.device),)
        if k is None or v is None:
            raise InputError("this runner reads ragged k and v: pass runner(q, k, v)")
        kv_shape = (self._num_kv, p.num_kv_heads, p.head_dim)
        for name, t in (("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != kv_shape:
                got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise InputError(f"{name}: expected shape {list(kv_shape)} [sum(kv_lens), num_kv_heads, head_dim] "
                                 f"(from the plan), got {got}")
            if t.dtype != q.dtype or t.device != q.device:
                raise InputError(f"{name}: expected {q.dtype} on {q.device} (q's), got {t.dtype} on {t.device}")
            if cuda and (not t.is_contiguous() or t.data_ptr() % 16):
                raise InputError(f"{name}: expected a contiguous, 16-byte aligned tensor (use {name}.contiguous())")
        return k, v


def run_prefill(plan: Plan, q: torch.Tensor, k=None, v=None, *, cache=None, page_table=None,
                variant: Variant | None = None, rope: RoPE | None = None,
                sm_scale: float | None = None, rope_path: str = "auto",
                backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """One-off prefill of a planned batch (builds a :class:`PrefillRunner`; keep the runner to call it per layer)."""
    r = PrefillRunner(plan, cache, page_table, variant=variant, rope=rope, sm_scale=sm_scale, device=q.device,
                      rope_path=rope_path, backend=backend)
    return r(q, k, v) if cache is None else r(q, cache=cache)


# ---------------------------------------------------------------------------------------------- front doors
def _indptr(name: str, x, n_rows: int) -> np.ndarray:
    a = np.asarray(x.tolist() if hasattr(x, "tolist") else x)
    if a.ndim != 1 or len(a) < 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
        raise InputError(f"{name}: expected a 1-D integer sequence [batch_size + 1], got shape {a.shape} {a.dtype}")
    a = a.astype(np.int64)
    if a[0] != 0 or (np.diff(a) < 0).any():
        bad = int(np.argmax(np.diff(a) < 0)) if a[0] == 0 else 0
        raise InputError(f"{name}: must start at 0 and never decrease, got {a[:8].tolist()}... (entry {bad})")
    if a[-1] != n_rows:
        raise InputError(f"{name}: its last entry ({a[-1]}) must equal the number of rows of the tensor ({n_rows})")
    return a


def _check_qkv(q: torch.Tensor, num_kv_heads: int, head_dim: int) -> None:
    if not isinstance(q, torch.Tensor) or q.dim() != 3:
        raise InputError(f"q: expected [tokens, num_qo_heads, head_dim], got "
                         f"{list(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__}")
    if q.dtype not in DTYPES:
        raise InputError(f"q: expected float16 or bfloat16, got {q.dtype}")
    if q.shape[2] != head_dim:
        raise InputError(f"q: head_dim {q.shape[2]}, the keys have {head_dim}")
    if q.shape[1] % num_kv_heads:
        raise InputError(f"q: expected a multiple of the {num_kv_heads} KV heads, got {q.shape[1]} heads")


def check_q_for_cache(q: torch.Tensor, cache) -> None:
    """``q`` ``[tokens, num_qo_heads, head_dim]`` for a paged cache's keys: its head dim, a multiple of its KV heads,
    its dtype and device (the front doors that read a cache: :func:`append`, block-sparse attention)."""
    _check_qkv(q, cache.num_kv_heads, cache.head_dim)
    if q.dtype != cache.dtype or q.device != cache.pool.device:
        raise InputError(f"q: expected {cache.dtype} on {cache.pool.device} (the cache's), got {q.dtype} on {q.device}")


def plan_batch(qo_lens, kv_lens, *, num_qo_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
               page_size: int = 16, causal: bool = False, window_left: int = -1, variant: Variant | None = None,
               rope: RoPE | None = None, tile_q: int | None = None, num_sms=None, page_table=None,
               block_sparse: bool | None = None, block_masks=None, full_blocks: bool = True,
               backend: str = "mma") -> Plan:
    """:func:`infernb.plan` for the prefill kernel: its default query tile (:func:`default_tile_q`), its traits' CTAs
    per SM and per-item cost, the variant's window promise when ``window_left`` is ``-1``, no split for sigmoid
    variants, and the variant's block structure (``block_sparse``; default: when it has a ``mask_mod``): tiles read
    only the key blocks its mask leaves visible, and skip ``mask_mod`` on the full ones
    (:meth:`~infernb.variants.Variant.block_masks`, evaluated here, once per plan); or ``block_masks``, given
    BlockSparse masks whose elements are the variant's ``mask_mod`` (:func:`infernb.ops.block_sparse.mask_variant`).
    What :func:`prefill`, :func:`append` and :func:`~infernb.ops.block_sparse.block_sparse_attention` run.
    ``backend="sm90"``: a plan for the Hopper kernel (:data:`~infernb.ops.prefill_sm90.SM90_TRAITS`: 128-row tiles,
    one CTA per SM, no split units); ``"mma"`` (default) for the mma.sync kernel."""
    window = window_left if window_left >= 0 else getattr(variant, "window_left", -1)
    qo_lens = np.asarray(qo_lens)
    rows_avg = float(np.mean(qo_lens) * (num_qo_heads // num_kv_heads)) if len(qo_lens) else 0.0
    if backend not in ("mma", "sm90"):
        raise InputError(f"plan_batch: backend 'mma' or 'sm90', got {backend!r}")
    if backend == "sm90":
        if tile_q not in (None, SM90_TRAITS.tile_q):
            raise InputError(f"the Hopper kernel's tile is {SM90_TRAITS.tile_q} rows, got tile_q={tile_q}")
        tq, ctas, fixed, gain = SM90_TRAITS.tile_q, SM90_TRAITS.ctas_per_sm, SM90_TRAITS.fixed_cost, math.inf
    else:
        tq = default_tile_q(rows_avg, head_dim) if tile_q is None else tile_q
        tr = traits(head_dim, tq, rope_mode(rope))
        ctas, fixed = tr.ctas_per_sm, tr.fixed_cost
        gain = MERGE_GAIN if variant is None or variant.softmax else math.inf
    return make_plan(qo_lens, kv_lens, num_qo_heads=num_qo_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                     page_size=page_size, page_table=page_table, causal=causal, window_left=window, tile_q=tq,
                     dtype=DTYPE_NAMES[dtype], num_sms=num_sms, ctas_per_sm=ctas, fixed_cost=fixed,
                     merge_gain=gain,
                     block_masks=block_masks if block_masks is not None else
                     variant if _block_sparse(variant, block_sparse) else None,
                     mask_variant=variant if block_masks is not None else None, full_blocks=full_blocks)


def _block_sparse(variant: Variant | None, block_sparse: bool | None) -> bool:
    if block_sparse not in (None, True, False):
        raise InputError(f"block_sparse: expected None (auto), True or False, got {block_sparse!r}")
    has_mask = variant is not None and variant.mask_mod is not None
    if block_sparse and not has_mask:
        raise InputError("block_sparse=True needs a variant with a mask_mod (its block structure)")
    return has_mask if block_sparse is None else bool(block_sparse)


def prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, qo_indptr, kv_indptr, *, causal: bool = False,
            window_left: int = -1, variant: Variant | None = None, rope: RoPE | None = None,
            sm_scale: float | None = None, return_lse: bool = False, tile_q: int | None = None, num_sms=None,
            rope_path: str = "auto", block_sparse: bool | None = None, backend: str = "auto"):
    """Attention of a ragged batch in one call: plan it and run it (notebooks; serving code keeps the runner).

    Args:
        q: ``[qo_indptr[-1], num_qo_heads, head_dim]`` fp16/bf16: every request's queries, concatenated.
        k, v: ``[kv_indptr[-1], num_kv_heads, head_dim]``, likewise (GQA when ``num_qo_heads > num_kv_heads``).
        qo_indptr, kv_indptr: ``[batch + 1]`` int: request b's rows are ``q[qo_indptr[b]:qo_indptr[b+1]]`` etc.
        causal: bottom-right aligned causal mask (needs ``qo_len <= kv_len``).
        window_left: sliding window (``-1`` off): a query at position p sees keys ``>= p - window_left``; only
            the keys inside it are read. A variant's ``window_left`` promise is used when this is ``-1``.
        variant, rope, sm_scale, rope_path: as in :class:`PrefillRunner`.
        return_lse: also return the LSE ``[qo_indptr[-1], num_qo_heads]`` float32 (natural log).
        tile_q: query tile rows (64 / 128; default :func:`default_tile_q`); num_sms: SMs to plan for.
        block_sparse: plan with the variant's block structure (:func:`plan_batch`; default: when the variant has a
            ``mask_mod``): its empty key blocks are never read, its full ones skip ``mask_mod``.
        backend: ``"sm90"`` (the Hopper kernel), ``"mma"`` (the mma.sync kernel) or ``"auto"``: the Hopper kernel on
            an sm_90 GPU when it covers the call (:func:`~infernb.ops.prefill_sm90.unsupported`), else mma.sync.
    Returns:
        ``out [qo_indptr[-1], num_qo_heads, head_dim]`` q.dtype (and ``lse``).
    """
    for name, t in (("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise InputError(f"{name}: expected [tokens, num_kv_heads, head_dim], got "
                             f"{list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if k.shape != v.shape:
        raise InputError(f"k and v must have one shape, got {list(k.shape)} and {list(v.shape)}")
    _check_qkv(q, k.shape[1], k.shape[2])
    if len({q.device, k.device, v.device}) != 1 or len({q.dtype, k.dtype, v.dtype}) != 1:
        raise InputError(f"q, k, v must share a device and dtype, got {q.dtype}/{q.device}, {k.dtype}/{k.device}, "
                         f"{v.dtype}/{v.device}")
    qo = _indptr("qo_indptr", qo_indptr, q.shape[0])
    kv = _indptr("kv_indptr", kv_indptr, k.shape[0])
    if len(qo) != len(kv):
        raise InputError(f"qo_indptr has {len(qo) - 1} requests, kv_indptr {len(kv) - 1}")
    if backend == "auto" and tile_q not in (None, SM90_TRAITS.tile_q):
        backend = "mma"                              # (the Hopper kernel has one tile)
    be = resolve_backend(backend, head_dim=k.shape[2], dtype=q.dtype, variant=variant, rope=rope,
                         rope_path=rope_path, device=q.device if q.is_cuda else None)
    p = plan_batch(np.diff(qo), np.diff(kv), num_qo_heads=q.shape[1], num_kv_heads=k.shape[1], head_dim=k.shape[2],
                   dtype=q.dtype, causal=causal, window_left=window_left, variant=variant, rope=rope, tile_q=tile_q,
                   num_sms=num_sms, block_sparse=block_sparse, backend=be)
    out, lse = run_prefill(p, q.contiguous(), k.contiguous(), v.contiguous(), variant=variant, rope=rope,
                           rope_path=rope_path, sm_scale=sm_scale, backend=be)
    return (out, lse) if return_lse else out


def append(q: torch.Tensor, cache, seq_ids: Sequence[int], qo_lens: Sequence[int], *, causal: bool = True,
           window_left: int = -1, variant: Variant | None = None, rope: RoPE | None = None,
           sm_scale: float | None = None, return_lse: bool = False, tile_q: int | None = None, num_sms=None,
           rope_path: str = "auto", block_sparse: bool | None = None, backend: str = "auto"):
    """Append attention: the newest ``qo_lens[i]`` tokens of each sequence attend to the whole sequence.

    Args:
        q: ``[sum(qo_lens), num_qo_heads, head_dim]``: sequence i's new tokens' queries, in ``seq_ids`` order.
        cache: the :class:`~infernb.layout.PagedKVCache` whose sequences already hold the new tokens' K/V
            (``cache.append`` them first).
        seq_ids: live sequence ids; qo_lens: new tokens of each (``<=`` its length).
        causal: bottom-right aligned (chunked prefill, speculative verification); window_left, variant, rope,
            rope_path, sm_scale, return_lse, tile_q, num_sms, block_sparse, backend: as in :func:`prefill`.
    Returns:
        ``out [sum(qo_lens), num_qo_heads, head_dim]`` q.dtype (and ``lse [sum(qo_lens), num_qo_heads]``).
    """
    seq_ids = list(seq_ids)
    table = cache.page_table(seq_ids)                 # raises on freed / unknown ids
    qo_lens = np.asarray(list(qo_lens), np.int64)
    if len(qo_lens) != len(seq_ids):
        raise InputError(f"qo_lens has {len(qo_lens)} entries, seq_ids {len(seq_ids)}")
    check_q_for_cache(q, cache)
    if q.shape[0] != int(qo_lens.sum()):
        raise InputError(f"q has {q.shape[0]} rows but sum(qo_lens) = {int(qo_lens.sum())}")
    if backend == "auto" and tile_q not in (None, SM90_TRAITS.tile_q):
        backend = "mma"                              # (the Hopper kernel has one tile)
    be = resolve_backend(backend, head_dim=cache.head_dim, dtype=q.dtype, variant=variant, rope=rope, paged=True,
                         rope_path=rope_path, device=q.device if q.is_cuda else None)
    kv_lens = np.asarray(cache.lengths(seq_ids), np.int64)
    if (qo_lens > kv_lens).any():
        i = int(np.argmax(qo_lens > kv_lens))
        raise InputError(f"qo_lens[{i}] = {qo_lens[i]} exceeds sequence {seq_ids[i]}'s length {kv_lens[i]}: append "
                         "the new tokens' K/V to the cache first")
    p = plan_batch(qo_lens, kv_lens, num_qo_heads=q.shape[1], num_kv_heads=cache.num_kv_heads,
                   head_dim=cache.head_dim, dtype=q.dtype, page_size=cache.page_size, causal=causal,
                   window_left=window_left, variant=variant, rope=rope, tile_q=tile_q, num_sms=num_sms,
                   block_sparse=block_sparse, backend=be)
    out, lse = run_prefill(p, q.contiguous(), cache=cache, page_table=table, variant=variant, rope=rope,
                           rope_path=rope_path, sm_scale=sm_scale, backend=be)
    return (out, lse) if return_lse else out


__all__ = ["PREFILL_ITEM", "PREFILL_RUN", "PrefillRunner", "PrefillTraits", "TRAITS", "append", "default_tile_q",
           "plan_batch", "plan_records", "prefill", "prefill_spec", "run_prefill", "specializations", "traits"]


def variant_error(variant: Variant, q_len: int = 64, kv_len: int = 64, *, num_qo_heads: int = 8,
                  num_kv_heads: int = 1, head_dim: int = 64, device=None, seed: int = 1) -> dict:
    """Run ``variant`` through :func:`prefill` on a random bf16 batch of one request (``q_len`` queries against
    ``kv_len`` keys, no causal mask beyond the variant's own) on ``device`` -- the prefill kernel on a GPU, the CPU
    emulator on the CPU (default: the GPU when there is one) -- and compare with the float64 reference.
    Tensors the variant captures must live on that device. Returns ``{device, error}`` (``||out - ref|| / ||ref||``;
    the bf16 tolerance is 1e-2)."""
    from ..reference import attention as reference_attention
    from ..testing import rel_error

    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(n, h, head_dim, generator=g).to(torch.bfloat16).to(dev)
               for n, h in ((q_len, num_qo_heads), (kv_len, num_kv_heads), (kv_len, num_kv_heads)))
    out = prefill(q, k, v, [0, q_len], [0, kv_len], variant=variant)
    ref, _ = reference_attention(q, k, v, [0, q_len], [0, kv_len], **variant.reference_kwargs())
    return dict(device=dev.type, error=rel_error(out, ref))
