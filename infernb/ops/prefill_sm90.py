"""Prefill and append attention on Hopper: wgmma + TMA, a producer warpgroup and two consumer warpgroups
(``kernels/include/infernb/prefill_sm90.cuh``; issue 16).

It runs the prefill plan format unchanged (:func:`infernb.ops.prefill.plan_records`: items, CTA lists, key runs)
with its own traits (:data:`SM90_TRAITS`: 128-row tiles, one CTA per SM, no split units). What it covers today:
head dims 64, 128 and 256, bf16 / f16, ragged or paged K/V, causal or not, sliding windows, custom ``sm_scale``,
softmax variants (score_mod / mask_mod hooks, block structures), RoPE as the rotation pass before the kernel (q and
the keys rotated once per call into ragged buffers, paged values gathered: ``rope_path="pass"``; rotating each K
stage in the kernel, ``"tile"``, is the mma.sync kernel's); sigmoid variants and other head dims run on the mma.sync
kernel (:func:`unsupported` says why a call does not qualify).
The front doors (:func:`~infernb.prefill`, :func:`~infernb.append`) take ``backend="auto"`` (default: this kernel on
an sm_90 GPU when it covers the call, ragged or paged, the mma.sync kernel otherwise), ``"sm90"`` or ``"mma"`` (on
paged caches its producer warpgroup copies the pages with cp.async);
:class:`~infernb.ops.prefill.PrefillRunner` runs the backend its plan was made for (``"mma"`` unless told).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..errors import InputError
from ..jit import KernelSpec
from ._common import CUDA_TYPES, DTYPE_NAMES, DTYPES, KV_MODES, NONE, hook_flags, page_shift, rope_mode

#: backends of the prefill front doors: ``"mma"`` (mma.sync, sm_80+), ``"sm90"`` (wgmma + TMA, sm_90 only) and
#: ``"auto"`` (what :func:`resolve_backend` picks).
BACKENDS = ("auto", "mma", "sm90")


@dataclasses.dataclass(frozen=True)
class Sm90Traits:
    """The Hopper kernel's facts for the planner and the runner: ``tile_q`` rows per item (two consumer warpgroups
    of 64), ``block_n`` keys per stage, ``stages`` K/V buffers, one CTA per SM (its shared memory), ``fixed_cost``
    an item's own cost in key tokens (Q load, pipeline fill, epilogue), ``sched`` the consumers' schedule (bits:
    1 overlap inside a warpgroup, 2 pingpong between the two; ``SM90_OVERLAP`` / ``SM90_PINGPONG`` in the header)
    and, bit 4 (:data:`PAGED_ASYNC`), the paged producer's asynchronous arrivals (the paged default:
    :func:`default_traits`)."""

    head_dim: int = 128
    tile_q: int = 128
    block_n: int = 128
    stages: int = 3
    ctas_per_sm: int = 1
    fixed_cost: float = 512.0
    sched: int = 3

    @property
    def smem_bytes(self) -> int:
        """``prefill_sm90_cfg_t::SMEM_BYTES`` (each compiled unit checks they agree)."""
        d = self.head_dim
        return (self.tile_q * d * 2 + self.stages * 2 * self.block_n * d * 2 + 2 * self.stages * 8 + self.tile_q * 8
                + 2 * self.block_n * 4)


SM90_TRAITS = Sm90Traits()
#: ``sched`` bit: the paged producer's copies arrive on the stage's barrier as they land (``SM90_PAGED_ASYNC``)
PAGED_ASYNC = 4
#: each head dim's traits: 128-key blocks and 3 stages at 128; 4 stages at 64 (a stage is half the bytes);
#: 64-key blocks and 2 stages at 256 (O takes 128 registers a thread; K + V of a stage 64 KiB)
SM90_HEAD_DIM_TRAITS = {64: Sm90Traits(head_dim=64, stages=4), 128: SM90_TRAITS,
                        256: Sm90Traits(head_dim=256, block_n=64, stages=2)}
#: head dims the Hopper kernel has
SM90_HEAD_DIMS = tuple(SM90_HEAD_DIM_TRAITS)


def sm90_traits(head_dim: int) -> Sm90Traits:
    """The default traits of a head dim (:data:`SM90_HEAD_DIM_TRAITS`)."""
    tr = SM90_HEAD_DIM_TRAITS.get(head_dim)
    if tr is None:
        raise InputError(f"the Hopper prefill kernel has head dims {SM90_HEAD_DIMS}, got {head_dim}")
    return tr


def default_traits(head_dim: int, kv: str = "ragged") -> Sm90Traits:
    """The traits a KV source runs with by default: the head dim's (:func:`sm90_traits`); paged caches add
    :data:`PAGED_ASYNC` (the producer's copies arrive on the stage's barrier as they land: +6% on the paged append
    of 16 x 512 onto 8192, H200, ``benchmarks/results/hopper_prefill_NVIDIA_H200_2026-11-30_async_n80.json``)."""
    tr = sm90_traits(head_dim)
    return tr if kv == "ragged" else dataclasses.replace(tr, sched=tr.sched | PAGED_ASYNC)


def config_tag(tr: Sm90Traits, kv: str = "ragged") -> str:
    """How traits other than their head dim's defaults for the KV source (:func:`default_traits`) are named (kernel
    units, benchmark paths): ``s<stages>x<sched>`` and ``n<block_n>`` when the block differs; ``""`` for the
    defaults."""
    base = default_traits(tr.head_dim, kv)
    if tr == base:
        return ""
    return f"s{tr.stages}x{tr.sched}" + (f"n{tr.block_n}" if tr.block_n != base.block_n else "")


def sm90_spec(dtype: torch.dtype, head_dim: int = 128, causal: bool = False,
              tr: Sm90Traits | None = None, variant=None, kv: str = "ragged", rope_pass=None) -> KernelSpec:
    """The sm_90a specialization for (dtype, head dim, causal, traits (default :func:`sm90_traits`), variant: a softmax
    :class:`~infernb.variants.Variant`, its hooks traced into the unit, None for plain attention; KV source
    ``"ragged"`` (TMA) / ``"NHD"`` / ``"HND"`` (cp.async by the producer warpgroup)); ``rope_pass``: a
    :class:`~infernb.reference.RoPE` whose rotation pass (``rope_pass_kernel``, rope.cuh) the unit also holds: the
    Hopper kernel runs RoPE as that pass before it (q and the keys rotated once per call into ragged buffers))."""
    if kv not in KV_MODES:
        raise InputError(f"kv: expected one of {list(KV_MODES)}, got {kv!r}")
    variant = NONE if variant is None else variant
    if not variant.softmax:
        raise InputError(f"the Hopper prefill kernel runs softmax variants; {variant.name} is sigmoid attention")
    if dtype not in DTYPES:
        raise InputError(f"the Hopper prefill kernel runs bf16 / f16, got {dtype}")
    base = default_traits(head_dim, kv)
    tr = base if tr is None else tr
    if tr.head_dim != head_dim:
        raise InputError(f"traits for head dim {tr.head_dim} given for head dim {head_dim}")
    ct = CUDA_TYPES[dtype]
    args = f"{ct}, {head_dim}, {tr.stages}, {tr.block_n}"
    tag = config_tag(tr, kv)
    score, mask = hook_flags(variant)
    b = lambda x: "true" if x else "false"  # noqa: E731
    g = variant.generated
    check = (f"static_assert(infernb::prefill_sm90_cfg_t<{args}>::SMEM_BYTES == {tr.smem_bytes} && "
             f"infernb::prefill_sm90_cfg_t<{args}>::TILE_Q == {tr.tile_q} && "
             f"infernb::prefill_sm90_cfg_t<{args}>::BLOCK_N == {tr.block_n}, "
             '"infernb.ops.prefill_sm90.Sm90Traits disagrees with prefill_sm90_cfg_t");')
    from .prefill import _struct_checks
    kernels = (("prefill", f"infernb::prefill_sm90_kernel<{args}, {b(causal)}, {tr.sched}, "
                           f"{variant.cuda_name}, {b(score)}, {b(mask)}, {KV_MODES[kv]}>"),)
    pm = rope_mode(rope_pass) if rope_pass is not None else 0
    if pm:
        if kv != "ragged":
            raise InputError("rope_pass: the pass writes ragged buffers, so the kernel reads ragged K/V")
        kernels += (("rope_pass", f"infernb::rope_pass_kernel<{ct}, {pm}, {head_dim}>"),)
    return KernelSpec(family="prefill_sm90",
                      name=(f"prefill_sm90_{DTYPE_NAMES[dtype]}_hd{head_dim}_{kv.lower()}{'_causal' if causal else ''}"
                            f"_{variant.name}_{variant.code_hash}{'_' + tag if tag else ''}"
                            f"{f'_ropepass{pm}' if pm else ''}"),
                      kernels=kernels,
                      preamble=g.code + "\n" + check + "\n" + _struct_checks(),
                      preamble_origin=tuple(sorted(g.origins.items())), archs=("sm_90a",))


_SCHED_FITS: dict = {}


def variant_traits(variant, tr: Sm90Traits | None = None, *, dtype: torch.dtype = torch.bfloat16,
                   head_dim: int = 128, causal: bool = True, kv: str = "ragged") -> Sm90Traits:
    """The traits a variant runs with: the overlapped schedule (``sched`` 3) when its specialization compiles
    without spills there, else pingpong only (``sched`` 2: no overlap inside a warpgroup, so a block's logits and
    the previous block's P are never live together, which leaves the hooks ~32 more registers). Decided by
    compiling the overlapped specialization (NVRTC, no GPU needed; the JIT cache keeps it), once per variant
    code, dtype and mask: hooks that read captured tensors, call math functions or do 64-bit index arithmetic
    usually take pingpong; soft-caps keep the overlap (benchmarks/NOTES.md). The default starts from the KV source's
    traits (:func:`default_traits`: paged caches keep their producer's asynchronous arrivals either way); the ragged
    unit decides for every source (the hooks run in the consumers, whatever the producer reads)."""
    base = default_traits(head_dim, kv)
    tr = base if tr is None else tr
    if variant is None or tr != base or not any(hook_flags(variant)):
        return tr
    key = (variant.name, variant.code_hash, dtype, head_dim, causal)
    fits = _SCHED_FITS.get(key)
    if fits is None:
        from ..jit import build
        (r,) = build(sm90_spec(dtype, head_dim, causal, sm90_traits(head_dim), variant), "sm_90a").report.kernels
        fits = _SCHED_FITS[key] = not r.spills and r.stack_frame == 0
    return tr if fits else dataclasses.replace(tr, sched=2 | (tr.sched & PAGED_ASYNC))


def specializations() -> list[KernelSpec]:
    """What CI compiles: every head dim and dtype, causal or not (ragged); both paged layouts (bf16); the units with
    the RoPE pass (both layouts); every example variant the kernel runs (bf16, causal, ragged)."""
    from ..variants import examples

    out = [sm90_spec(dt, d, c) for dt in DTYPES for d in SM90_HEAD_DIMS for c in (False, True)]
    out += [sm90_spec(torch.bfloat16, d, c, kv=kv) for d in SM90_HEAD_DIMS for c in (False, True)
            for kv in ("NHD", "HND")]
    from ..reference import RoPE
    out += [sm90_spec(torch.bfloat16, 128, True, rope_pass=RoPE(interleave=i)) for i in (False, True)]
    # head dim 256 with 80-key blocks (the benchmark's alternative tile there)
    out += [sm90_spec(torch.bfloat16, 256, True, dataclasses.replace(SM90_HEAD_DIM_TRAITS[256], block_n=80))]
    # the paged producer's synchronous arrivals (no sched bit SM90_PAGED_ASYNC = 4: the benchmark's alternative)
    out += [sm90_spec(torch.bfloat16, 128, True, dataclasses.replace(SM90_TRAITS, sched=3), kv=kv)
            for kv in ("NHD", "HND")]
    return out + [sm90_spec(torch.bfloat16, 128, True, variant_traits(v), variant=v) for v in examples()
                  if unsupported(head_dim=128, dtype=torch.bfloat16, variant=v) is None]


def unsupported(*, head_dim: int, dtype: torch.dtype, variant=None, rope=None, paged: bool = False,
                device: torch.device | None = None, plan=None, rope_path: str = "auto") -> str | None:
    """Why the Hopper kernel cannot run this (a sentence), or None when it can."""
    if device is not None:
        if device.type != "cuda":
            return f"it runs on CUDA devices ({device} is not one)"
        major, minor = torch.cuda.get_device_capability(device)
        if major != 9:
            return f"it runs on sm_90 (Hopper) GPUs; {device} is sm_{major}{minor}"
    if head_dim not in SM90_HEAD_DIMS:
        return f"it has head dims {SM90_HEAD_DIMS} (not {head_dim})"
    if dtype not in DTYPES:
        return f"it runs bf16 / f16 (not {dtype})"
    if variant is not None and not variant.softmax:
        return f"variant {variant.name!r} is sigmoid attention: the mma.sync kernel runs it"
    if variant is not None and variant.generated.key_gathers and variant.generated.lib_calls:
        return (f"variant {variant.name!r} gathers a captured tensor per key and calls a math function (e.g. a T5 "
                "bias): its hooks spill at the Hopper kernel's 128-key blocks; the mma.sync kernel runs it")
    if rope is not None and rope_path == "tile":
        return ("it rotates q and the keys by the RoPE pass before the kernel (rope_path='pass' or 'auto'), not in "
                "each K stage (rope_path='tile': the mma.sync kernel)")
    if plan is not None:
        if plan.tile_q != SM90_TRAITS.tile_q:
            return f"its plans have {SM90_TRAITS.tile_q}-row tiles (this one {plan.tile_q}): plan with backend='sm90'"
        if len(plan.merge_unit):
            return "its plans split no unit (this one does): plan with backend='sm90'"
    return None


def resolve_backend(backend: str, **kw) -> str:
    """``"mma"`` or ``"sm90"`` for a requested backend (:data:`BACKENDS`): ``"sm90"`` raises ``InputError`` with the
    reason when the Hopper kernel cannot run the arguments (:func:`unsupported`'s keywords), ``"auto"`` takes it
    when it can (an sm_90 ``device`` given and the rest supported) and the mma.sync kernel otherwise."""
    if backend not in BACKENDS:
        raise InputError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if backend == "sm90":
        why = unsupported(**kw)
        if why:
            raise InputError(f"backend='sm90': the Hopper prefill kernel cannot run this: {why}")
        return "sm90"
    if backend == "auto" and kw.get("device") is not None and unsupported(**kw) is None:
        return "sm90"
    return "mma"


class Sm90Launch:
    """The Hopper kernel bound to a plan's records (device tensors) and scalars; called with q, k, v, out, lse."""

    def __init__(self, plan, dtype: torch.dtype, device: torch.device, items, cta_ptr, runs, sm_scale: float,
                 config: Sm90Traits | None = None, variant=None, params=None, run_full=None, kv: str = "ragged",
                 page_indices=None, rope_pass=None, extra_options: tuple[str, ...] = ()):
        from ..device import device_info
        from ..jit import build

        why = unsupported(head_dim=plan.head_dim, dtype=dtype, device=device, plan=plan, variant=variant)
        if why:
            raise InputError(f"the Hopper prefill kernel cannot run this plan: {why}")
        self.plan, self.device = plan, device
        self.tr = config or variant_traits(variant, dtype=dtype, head_dim=plan.head_dim, causal=plan.causal, kv=kv)
        self.kv, self.page_indices = kv, page_indices
        self.kernel = build(sm90_spec(dtype, plan.head_dim, plan.causal, self.tr, variant, kv, rope_pass),
                            device_info(device.index).arch, extra_options=tuple(extra_options))
        self.items, self.cta_ptr, self.runs, self.params, self.run_full = items, cta_ptr, runs, params, run_full
        u64, i32 = np.uint64, np.int32
        self._tail = [u64(items.data_ptr()).tobytes(), u64(cta_ptr.data_ptr()).tobytes(),
                      u64(runs.data_ptr()).tobytes()]
        self._scalars = [np.float32(sm_scale).tobytes(), i32(plan.group).tobytes(), i32(plan.num_qo_heads).tobytes(),
                         i32(plan.window_left).tobytes(), u64(params.data_ptr()).tobytes(),
                         u64(run_full.data_ptr()).tobytes()]
        ps = plan.page_size
        self._page = [u64(page_indices.data_ptr() if page_indices is not None else 0).tobytes(),
                      i32(plan.num_kv_heads).tobytes(), i32(ps).tobytes(),
                      i32(page_shift(ps)).tobytes()]
        self._null_map = bytes(128)
        self._maps: dict = {}

    def _map(self, t: torch.Tensor) -> bytes:
        from ..jit.tma import tensor_map_2d

        key = (t.data_ptr(), tuple(t.shape), t.dtype)
        m = self._maps.get(key)
        if m is None:
            if len(self._maps) > 8:
                self._maps.clear()
            n, h, d = t.shape
            m = self._maps[key] = tensor_map_2d(t.view(n, h * d), self.tr.block_n, 64)
        return m

    def __call__(self, q, k, v, out, lse) -> None:
        """Ragged: ``k``, ``v`` the tensors; paged: ``k`` the cache's pool, ``v`` None."""
        u64 = np.uint64
        paged = self.kv != "ragged"
        maps = [self._null_map, self._null_map] if paged else [self._map(k), self._map(v)]
        params = [*maps, u64(q.data_ptr()).tobytes(), *self._tail,
                  u64(out.data_ptr()).tobytes(), u64(lse.data_ptr()).tobytes(), *self._scalars,
                  u64(k.data_ptr() if paged else 0).tobytes(), *self._page]
        self.kernel.launch_packed("prefill", (self.plan.num_ctas, 1, 1), (384, 1, 1), params,
                                  shared_mem=self.tr.smem_bytes, device_index=self.device.index)
