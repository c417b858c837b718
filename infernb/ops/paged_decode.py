"""Decode attention over a paged KV cache: the plan/run path on the GPU kernel, the emulator on CPU tensors.

Three doors, from lean to convenient:

- :class:`DecodeRunner` binds a plan, its page table, a variant and RoPE once (device arrays, variant
  parameters, the compiled kernel) and is then called once per layer: ``out, lse = runner(q, cache)``;
- :func:`infernb.run` (``run(plan, q, cache, page_table=..., variant=...)``) builds the runner each call;
- :func:`decode` (``infernb.decode(q, cache, seq_ids, variant=..., rope=...)``) plans too: for notebooks.

The kernel is ``kernels/include/infernb/decode.cuh``: one launch, split units merged by the CTA that finishes
their last item.
"""
from __future__ import annotations

import math
import weakref
from typing import Sequence

import numpy as np
import torch

from ..errors import InputError
from ..jit import KernelSpec, build
from ..plan import Plan, emulate, plan as make_plan
from ..reference import RoPE
from ..variants import Variant
from ..device import device_info
from ._common import (CUDA_TYPES, DTYPE_NAMES, DTYPES, HEAD_DIMS, check_paged_inputs, check_pool, check_q,
                      NONE, check_variant, page_shift, prepare_outputs, record_check, records_to_device, rope_mode,
                      rope_table_bytes)

#: The decode work item (``decode_item_t`` in ``kernels/include/infernb/decode.cuh``; every compiled unit checks the
#: names, all int32 in this order): the keys ``[pos_start, pos_end)`` of KV head ``kv_head`` of request ``b``, whose page
#: ids start at ``page_begin`` in the page table, the query row ``q_token``, the partial slot (-1: writes the output)
#: and the split unit's merge counter and slots.
DECODE_ITEM = np.dtype([(n, np.int32) for n in (
    "b", "kv_head", "pos_start", "pos_end", "q_token", "kv_len", "slot", "page_begin", "merge_unit", "slot_begin",
    "slot_end", "pad")])
#: A CTA's record (``decode_cta_t``): its item range and a copy of its first item.
DECODE_CTA = np.dtype([("item_begin", np.int32), ("item_end", np.int32), ("pad0", np.int32), ("pad1", np.int32),
                       ("first", DECODE_ITEM)])

#: Query heads per KV head one mma tile holds.
MAX_GROUP = 16
NUM_THREADS = 128


#: head_dim -> (pipeline stages, CTAs per SM). Occupancy beats pipeline depth (benchmarks/NOTES.md): three CTAs
#: (12 warps) per SM where their shared memory fits, so the CTAs' compute hides under each other's copies.
#: ``infernb.plan`` plans decode batches for the same CTA count (:func:`decode_ctas_per_sm`).
CONFIG = {64: (4, 3), 128: (2, 3), 256: (3, 1)}


def default_stages(head_dim: int, arch: str) -> int:
    """Pipeline stages for ``head_dim`` on ``arch``: :data:`CONFIG`'s on Hopper; before it (164 KB of shared
    memory per SM on A100, 100 KB on sm_86/89) head dim 256 gets 2 stages so one CTA fits on A100."""
    st = CONFIG[head_dim][0]
    return st if arch.startswith("sm_9") or head_dim < 256 else 2


def decode_ctas_per_sm(head_dim: int) -> int:
    """CTAs per SM the decode kernel keeps resident (plan decode batches with ``ctas_per_sm`` = this)."""
    return CONFIG.get(head_dim, (0, 1))[1]


def smem_bytes(head_dim: int, group: int, stages: int | None = None, rope: int = 0) -> int:
    """Dynamic shared memory of a decode specialization (the kernel's ``decode_cfg_t::SMEM_BYTES``; every
    compile checks the two agree with a ``static_assert``). It no longer depends on ``group`` (the O reduction
    lives in a K/V stage); the argument stays for callers. ``rope``: the kernel's RoPE mode (0 none, 1 half
    rotated, 2 interleaved), whose tables take ``head_dim / 2`` float4 + 128 float2 + one float2
    per pair and warp (``kernels/include/infernb/rope.cuh``)."""
    stages = CONFIG[head_dim][0] if stages is None else stages
    tables = rope_table_bytes(head_dim, rope)
    q_tiles = 1 if rope else stages                  # without RoPE, one Q tile per pipeline stage (prefetched)
    return stages * 2 * 64 * head_dim * 2 + q_tiles * 16 * head_dim * 2 + 4 * 16 * 2 * 4 + 64 + tables


def decode_spec(dtype: torch.dtype, head_dim: int, group: int, layout: str = "NHD", variant: Variant = NONE,
                rope: RoPE | None = None, *, stages: int | None = None, ctas_per_sm: int | None = None) -> KernelSpec:
    """The decode kernel specialization for one (dtype, head dim, GQA group, pool layout, variant, RoPE layout);
    ``stages`` / ``ctas_per_sm`` override :data:`CONFIG` (for experiments)."""
    mode = rope_mode(rope)
    rope_tag = ["", "_rope", "_rope_interleave"][mode]
    st, ctas = CONFIG[head_dim]
    tuned = (stages not in (None, st)) or (ctas_per_sm not in (None, ctas))
    st, ctas = st if stages is None else stages, ctas if ctas_per_sm is None else ctas_per_sm
    args = (f"{CUDA_TYPES[dtype]}, {head_dim}, {group}, {'true' if layout == 'HND' else 'false'}, "
            f"{variant.cuda_name}, {mode}, {st}, {ctas}")
    g = variant.generated
    check = (f"static_assert(infernb::decode_cfg_t<{CUDA_TYPES[dtype]}, {head_dim}, {group}, {st}, {mode}>::SMEM_BYTES"
             f" == {smem_bytes(head_dim, group, st, mode)}, \"infernb.ops.paged_decode.smem_bytes disagrees with "
             "decode_cfg_t\");")
    check += ("\n" + record_check(DECODE_ITEM, "decode_item_t", "DECODE_ITEM_NAMES") +
              f'\nstatic_assert(sizeof(infernb::decode_cta_t) == {DECODE_CTA.itemsize}, "DECODE_CTA");')
    tune = f"_s{st}c{ctas}" if tuned else ""
    return KernelSpec(
        family="decode",
        name=(f"decode_{DTYPE_NAMES[dtype]}_hd{head_dim}_g{group}_{layout.lower()}{rope_tag}_{variant.name}"
              f"_{variant.code_hash}{tune}"),
        kernels=(("decode", f"infernb::decode_kernel<{args}>"),),
        preamble=g.code + "\n" + check, preamble_origin=tuple(sorted(g.origins.items())))


def specializations() -> list[KernelSpec]:
    """What CI compiles: every (dtype, head dim, layout) with group 4; the other groups; RoPE; every example
    variant (bf16, head dim 128, group 4, NHD)."""
    from ..variants import examples

    out = [decode_spec(dt, d, 4, lay) for dt in DTYPES for d in HEAD_DIMS for lay in ("NHD", "HND")]
    out += [decode_spec(torch.bfloat16, 128, g) for g in (1, 2, 8, 16)]
    out += [decode_spec(torch.bfloat16, 128, 4, rope=RoPE(interleave=i)) for i in (False, True)]
    out += [decode_spec(torch.bfloat16, 128, 4, variant=v) for v in examples()]
    return out


# ---------------------------------------------------------------------------------------------- plan -> arrays
_plan_arrays: "weakref.WeakKeyDictionary[Plan, dict]" = weakref.WeakKeyDictionary()


def check_decode_plan(plan: Plan) -> None:
    """The decode kernel runs plans of one query token per request, tiles = one GQA group, no block masks."""
    if int(plan.qo_lens.max(initial=0)) > 1 or plan.tile_q != plan.group:
        raise InputError(f"the decode kernel runs decode plans (qo_len <= 1, tile_q = group); this plan has "
                         f"max qo_len {int(plan.qo_lens.max(initial=0))} and tile_q {plan.tile_q} (group {plan.group})")
    if plan.block_masked:
        raise InputError("the decode kernel does not run block-masked plans; use a mask_mod variant instead")
    if plan.group > MAX_GROUP:
        raise InputError(f"GQA group {plan.group} > {MAX_GROUP}: the decode kernel holds up to {MAX_GROUP} query "
                         "heads per KV head")
    if plan.head_dim not in HEAD_DIMS:
        raise InputError(f"head_dim {plan.head_dim} is not supported by the decode kernel; supported: {HEAD_DIMS}")
    if plan.dtype not in ("bf16", "f16"):
        raise InputError(f"plan dtype {plan.dtype!r}: the decode kernel runs bf16 / f16")


def plan_arrays(plan: Plan) -> dict:
    """Host arrays the kernel reads, derived once per plan (cached on the plan): ``items [num_items]``
    :data:`DECODE_ITEM` records (``page_begin`` is 0 here: it comes from the page table, see :class:`DecodeRunner`)
    and ``cta_indptr [num_ctas + 1]`` int32 (CTA c runs items ``cta_indptr[c]:cta_indptr[c + 1]``)."""
    got = _plan_arrays.get(plan)
    if got is not None:
        return got
    check_decode_plan(plan)
    if not np.array_equal(plan.merge_slots, np.arange(len(plan.merge_slots))):
        raise InputError("decode plans number a split unit's partial slots consecutively (plan.merge_slots)")
    H = plan.num_kv_heads
    tile = plan.item_unit // H
    b = plan.tile_request[tile]
    if not np.array_equal(plan.seg_indptr, np.arange(plan.num_tiles + 1)):
        raise InputError("decode plans have one key segment per tile")
    seg0 = plan.seg_start[tile]
    qo_ptr = np.concatenate(([0], np.cumsum(plan.qo_lens)))
    q_token = qo_ptr[b] + plan.tile_token_start[tile]
    munit = np.searchsorted(plan.merge_unit, plan.item_unit)            # index among split units (if split)
    split = plan.item_slot >= 0
    munit = np.where(split, munit, -1)
    s0 = np.where(split, plan.merge_indptr[np.minimum(munit, len(plan.merge_unit) - 1).clip(0)], 0)
    s1 = np.where(split, plan.merge_indptr[(munit + 1).clip(0, len(plan.merge_unit))], 0)
    items = np.zeros(plan.num_items, DECODE_ITEM)
    for name, val in (("b", b), ("kv_head", plan.item_unit % H), ("pos_start", seg0 + plan.item_kv_start),
                      ("pos_end", seg0 + plan.item_kv_end), ("q_token", q_token), ("kv_len", plan.kv_lens[b]),
                      ("slot", plan.item_slot), ("merge_unit", munit), ("slot_begin", s0), ("slot_end", s1)):
        items[name] = val
    if plan.num_items > 1 and (np.diff(plan.item_cta) < 0).any():
        raise InputError("plan items must be ordered by CTA")
    cta_indptr = np.searchsorted(plan.item_cta, np.arange(plan.num_ctas + 1)).astype(np.int32)
    if plan.num_items == 0:
        got = _plan_arrays[plan] = dict(items=items, cta_indptr=cta_indptr)
        return got
    # A CTA whose last item is the first part of a split unit runs that item first: the unit's other parts
    # (at the start of the next CTA's list) also finish early, so its merge overlaps the streaming instead of
    # adding to the kernel's tail.
    first, count = cta_indptr[:-1].astype(np.int64), np.diff(cta_indptr).astype(np.int64)
    rotate = (count >= 2) & (items["slot"][np.maximum(cta_indptr[1:] - 1, 0)] >= 0)
    if rotate.any():
        cta = plan.item_cta
        pos = np.arange(plan.num_items) - first[cta]
        dest = first[cta] + np.where(rotate[cta], (pos + 1) % np.maximum(count[cta], 1), pos)
        order = np.empty(plan.num_items, np.int64)
        order[dest] = np.arange(plan.num_items)
        items = items[order]
    got = dict(items=items, cta_indptr=cta_indptr)
    _plan_arrays[plan] = got
    return got


def cta_records(items: np.ndarray, cta_indptr: np.ndarray) -> np.ndarray:
    """Each CTA's record, ``[num_ctas]`` :data:`DECODE_CTA` (``decode_cta_t`` in ``kernels/include/infernb/decode.cuh``):
    its item range and a copy of its first item (zeros for a CTA without items), so the kernel's first copies wait
    for this load and the page ids only. Page ids stay in the page table (read at run time)."""
    rec = np.zeros(len(cta_indptr) - 1, DECODE_CTA)
    rec["item_begin"], rec["item_end"] = cta_indptr[:-1], cta_indptr[1:]
    has = rec["item_end"] > rec["item_begin"]
    rec["first"][has] = items[rec["item_begin"][has]]
    return rec


# ---------------------------------------------------------------------------------------------- the runner
class DecodeRunner:
    """A decode plan bound to its page table, variant and RoPE: call it once per layer.

    Args:
        plan: from :func:`infernb.plan` with ``qo_lens`` all 1 (or 0).
        cache: the :class:`~infernb.layout.PagedKVCache` (its pool layout, dtype and device are used; any cache
            of the same shape works at call time, e.g. one per layer).
        page_table: the :class:`~infernb.layout.PageTable` the plan was made for (on the cache's device).
        variant: a :class:`~infernb.variants.Variant` (default: plain attention). Its captured tensors must live
            on the cache's device; its parameters are read now (make a new runner after ``with_params``).
        rope: :class:`~infernb.reference.RoPE` to rotate q and the cached (un-rotated) keys at their positions.
        sm_scale: logit scale (default ``1 / sqrt(head_dim)``).
        stages, ctas_per_sm, extra_options: experiments: the kernel's pipeline depth and occupancy target
            (:data:`CONFIG`), extra NVRTC options (``-D...``).
    """

    def __init__(self, plan: Plan, cache, page_table, *, variant: Variant | None = None, rope: RoPE | None = None,
                 sm_scale: float | None = None, stages: int | None = None, ctas_per_sm: int | None = None,
                 extra_options: tuple[str, ...] = ()):
        check_decode_plan(plan)
        variant = check_variant(variant, plan)
        pool = cache.pool if hasattr(cache, "pool") else None
        if pool is None:
            raise InputError("cache: expected a PagedKVCache")
        dt = check_paged_inputs(plan, cache, page_table, rope)
        self.plan, self.page_table, self.variant, self.rope = plan, page_table, variant, rope
        self.cache, self.layout, self.dtype, self.device = cache, cache.layout, dt, pool.device
        self._pool_shape = tuple(pool.shape)
        self._num_tokens = int(plan.qo_lens.sum())
        self.sm_scale = plan.head_dim ** -0.5 if sm_scale is None else float(sm_scale)
        if pool.device.type != "cuda":
            return                                   # the emulator runs it (see __call__)
        # the kernel reads the variant's captured tensors through pointers packed now (traced again: a re-bound
        # global is followed): check where they live, keep them alive
        params, self._captures = variant.pack(pool.device)
        arch = device_info(pool.device.index).arch
        stages = default_stages(plan.head_dim, arch) if stages is None else stages
        smem = smem_bytes(plan.head_dim, plan.group, stages, rope_mode(rope))
        limit = getattr(torch.cuda.get_device_properties(pool.device), "shared_memory_per_block_optin", smem)
        if smem > limit:
            raise InputError(f"the decode kernel for head_dim {plan.head_dim} needs {smem // 1024} KiB of shared "
                             f"memory per CTA ({stages} stages); this GPU allows {limit // 1024} KiB")
        if plan.page_size * plan.num_kv_heads * plan.head_dim * 2 >= 2**31:
            raise InputError("a page's K block exceeds 2 GiB: the decode kernel addresses K -> V within a page with "
                             "32-bit offsets")
        self.kernel = build(decode_spec(dt, plan.head_dim, plan.group, cache.layout, variant, rope, stages=stages,
                                        ctas_per_sm=ctas_per_sm), extra_options=tuple(extra_options))
        a = plan_arrays(plan)
        items = a["items"].copy()
        items["page_begin"] = page_table.indptr.cpu().numpy()[items["b"]]  # where each request's page ids start
        self.items = records_to_device(items, pool.device)
        self.ctas = records_to_device(cta_records(items, a["cta_indptr"]), pool.device)
        self.merge_count = torch.zeros(max(len(plan.merge_unit), 1), dtype=torch.int32, device=pool.device)
        self.params = torch.frombuffer(bytearray(params), dtype=torch.uint8).to(pool.device)
        rd = (rope.rotary_dim or plan.head_dim) if rope else plan.head_dim
        ps = plan.page_size
        self._scalars = (np.float32(self.sm_scale), np.int32(plan.num_kv_heads), np.int32(ps),
                         np.int32(page_shift(ps)),
                         np.int32(rd), np.float32(math.log2(rope.theta) if rope else 0.0),
                         np.float32(1.0 / rope.scale if rope else 1.0))
        n_slots = len(plan.merge_slots)
        # partial states of split units: the runner's own (like merge_count: one runner, one stream at a time)
        self._part = (torch.empty((n_slots, plan.group, plan.head_dim), dtype=torch.float32, device=pool.device),
                      torch.empty((n_slots, plan.group), dtype=torch.float32, device=pool.device)) if n_slots else None
        # the lean launch path: everything but q, the pool and the outputs is fixed for the runner's life
        ptr = lambda t: np.uint64(t.data_ptr())  # noqa: E731
        self._go = self.kernel.launcher("decode", shared_mem=smem, device_index=pool.device.index)
        self._args_mid = (ptr(page_table.indices), ptr(self.items), ptr(self.ctas), ptr(self.params))
        self._args_tail = (ptr(self.merge_count), *self._scalars)

    def __call__(self, q: torch.Tensor, cache=None, *, out: torch.Tensor | None = None,
                 lse: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention of the planned batch.

        Args:
            q: ``[num_requests_with_a_token, num_qo_heads, head_dim]`` (one row per request with ``qo_len = 1``),
                the cache's dtype and device.
            cache: the cache to read (default: the one given at construction); same shape, layout and dtype.
            out, lse: optional preallocated outputs ``[tokens, num_qo_heads, head_dim]`` q.dtype and
                ``[tokens, num_qo_heads]`` float32 (contiguous, 16-byte aligned).

        A runner's partial-state counters and buffers are its own: run one runner on one stream at a time (a
        CUDA graph that captured it counts as a use; replays of one graph are fine).
        Returns:
            ``(out [tokens, num_qo_heads, head_dim] q.dtype, lse [tokens, num_qo_heads] float32)``.
        """
        p = self.plan
        pool = self._check(q, cache)
        # allocate what is missing, check what was given
        specs = {"out": (tuple(q.shape), q.dtype), "lse": (tuple(q.shape[:2]), torch.float32)}
        out, lse = (torch.empty(specs[n][0], dtype=specs[n][1], device=q.device) if t is None else
                    prepare_outputs((t,), [specs[n]], q.device, names=(n,))[0] for n, t in (("out", out), ("lse", lse)))
        if pool.device.type != "cuda":
            o, s = emulate(p, q, kv_cache=pool, page_table=self.page_table, layout=self.layout, sm_scale=self.sm_scale,
                           rope=self.rope, compute_dtype=torch.float32, **self.variant.reference_kwargs())
            return out.copy_(o), lse.copy_(s)
        if p.num_items == 0:
            return out.zero_(), lse.fill_(float("-inf"))
        part_o, part_lse = self._part if self._part is not None else (out, lse)   # unsplit plans never write them
        ptr = np.uint64
        self._go((p.num_ctas, 1, 1), (NUM_THREADS, 1, 1),
                 (ptr(q.data_ptr()), ptr(pool.data_ptr()), *self._args_mid, ptr(out.data_ptr()), ptr(lse.data_ptr()),
                  ptr(part_o.data_ptr()), ptr(part_lse.data_ptr()), *self._args_tail))
        return out, lse

    def _check(self, q: torch.Tensor, cache) -> torch.Tensor:
        p = self.plan
        check_q(q, (self._num_tokens, p.num_qo_heads, p.head_dim), "[tokens, num_qo_heads, head_dim]", self.dtype,
                self.device, "the cache's")
        return check_pool(self.cache if cache is None else cache, self.dtype, self._pool_shape, self.layout,
                          self.device)


def run_decode(plan: Plan, q: torch.Tensor, cache, page_table, *, variant: Variant | None = None,
               rope: RoPE | None = None, sm_scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One-off decode of a planned batch (builds a :class:`DecodeRunner`; keep the runner to call it per layer)."""
    return DecodeRunner(plan, cache, page_table, variant=variant, rope=rope, sm_scale=sm_scale)(q, cache)


def plan_decode(kv_lens, *, num_qo_heads: int, num_kv_heads: int, head_dim: int, page_size: int, dtype: torch.dtype,
                variant: Variant | None = None, num_sms=None) -> Plan:
    """:func:`infernb.plan` for the decode kernel (one new token per request, ``kv_lens`` keys each): the variant's
    window promise (only the pages inside the window are planned) and no split for sigmoid variants. What
    :func:`decode` runs."""
    variant = NONE if variant is None else variant
    return make_plan([1] * len(kv_lens), list(kv_lens), num_qo_heads=num_qo_heads, num_kv_heads=num_kv_heads,
                     head_dim=head_dim, page_size=page_size, window_left=getattr(variant, "window_left", -1),
                     dtype=DTYPE_NAMES[dtype], num_sms=num_sms, merge_gain=0.05 if variant.softmax else math.inf)


def plain_decode_runner(cache, seq_ids: Sequence[int], *, num_qo_heads: int, dtype: torch.dtype,
                             variant: Variant | None = None, rope: RoPE | None = None, sm_scale: float | None = None,
                             num_sms=None):
    """Plain decode of ``seq_ids`` bound once: ``(runner, call)`` with ``call(q) -> (out, lse)``: the decode kernel
    (:class:`DecodeRunner`), or for GQA groups above ``MAX_GROUP`` an append of one token a sequence on the
    mma.sync prefill kernel (:class:`~infernb.ops.PrefillRunner`)."""
    table = cache.page_table(seq_ids)
    kv = cache.lengths(seq_ids)
    if num_qo_heads // cache.num_kv_heads > MAX_GROUP:
        from .prefill import PrefillRunner, plan_batch

        p = plan_batch([1] * len(kv), kv, num_qo_heads=num_qo_heads, num_kv_heads=cache.num_kv_heads,
                       head_dim=cache.head_dim, dtype=dtype, page_size=cache.page_size, causal=True,
                       variant=variant, rope=rope, num_sms=num_sms, backend="mma")
        r = PrefillRunner(p, cache, table, variant=variant, rope=rope, sm_scale=sm_scale, backend="mma")
        return r, lambda q: r(q.contiguous(), cache=cache)
    p = plan_decode(kv, num_qo_heads=num_qo_heads, num_kv_heads=cache.num_kv_heads, head_dim=cache.head_dim,
                    page_size=cache.page_size, dtype=dtype, variant=variant, num_sms=num_sms)
    r = DecodeRunner(p, cache, table, variant=variant, rope=rope, sm_scale=sm_scale)
    return r, lambda q: r(q, cache)


def decode(q: torch.Tensor, cache, seq_ids: Sequence[int], *, variant: Variant | None = None,
           rope: RoPE | None = None, sm_scale: float | None = None, return_lse: bool = False, num_sms=None,
           cascade: bool | str = "auto"):
    """Decode attention in one call: plan the batch and run it (notebooks; serving code keeps the runner).

    Args:
        q: ``[len(seq_ids), num_qo_heads, head_dim]`` fp16/bf16, one new token per sequence.
        cache: :class:`~infernb.layout.PagedKVCache` holding the sequences' keys and values (the new token's
            included: append it first).
        seq_ids: live sequence ids of the cache, in the order of q's rows.
        variant, rope, sm_scale: as in :class:`DecodeRunner`. A variant with ``window_left`` (sliding window)
            plans only the pages inside the window.
        return_lse: also return the LSE ``[len(seq_ids), num_qo_heads]`` float32 (natural log).
        num_sms: multiprocessors to plan for (default: the GPU's; the plan has the kernel's CTAs per SM on each).
        cascade: ``"auto"`` (default): when the sequences share prefix pages (``PagedKVCache.fork``) and
            :func:`~infernb.ops.cascade.cascade_choice` estimates that it pays, run cascade attention (each shared
            level once for all its sequences: :func:`~infernb.ops.cascade.cascade_attention`); ``True``: always
            (``InputError`` if the variant cannot run on it); ``False``: plain decode. ``cascade_choice(cache,
            seq_ids, num_qo_heads=...)`` says which ``"auto"`` takes and why.
    Returns:
        ``out [len(seq_ids), num_qo_heads, head_dim]`` q.dtype (and ``lse``).

    GQA groups above the decode kernel's ``MAX_GROUP`` (16; e.g. MQA, 32 to 128 query heads on one KV head) run on
    the tensor-core prefill kernel as an append of one token per sequence (:func:`~infernb.ops.prefill.append`,
    its mma.sync backend: a sequence's group is the rows of one query tile, its keys split over CTAs), which reads
    each KV block once per tile as the decode kernel does.
    """
    seq_ids = list(seq_ids)
    cache.page_table(seq_ids)                         # raises on freed / unknown ids
    if not isinstance(q, torch.Tensor) or q.dim() != 3 or q.shape[0] != len(seq_ids):
        raise InputError(f"q: expected [len(seq_ids) = {len(seq_ids)}, num_qo_heads, head_dim], got "
                         f"{list(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__}")
    if q.shape[1] % cache.num_kv_heads:
        raise InputError(f"q has {q.shape[1]} heads, not a multiple of the cache's {cache.num_kv_heads} KV heads")
    if q.dtype not in DTYPES:
        raise InputError(f"q: expected float16 or bfloat16, got {q.dtype}")
    from .cascade import decode_runner

    out, lse = decode_runner(cache, seq_ids, num_qo_heads=q.shape[1], dtype=q.dtype, variant=variant, rope=rope,
                             sm_scale=sm_scale, cascade=cascade, num_sms=num_sms)(q)
    return (out, lse) if return_lse else out


__all__ = ["DecodeRunner", "plain_decode_runner", "cta_records", "decode", "decode_spec", "plan_arrays", "plan_decode", "run_decode", "smem_bytes",
           "specializations"]
