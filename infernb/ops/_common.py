"""Shared argument handling for the public ops."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from ..variants import Variant
from ..jit.types import CUDA_TYPES, DTYPE_NAMES, aligned16  # noqa: F401  (one table for every kernel family)

HEAD_DIMS = (64, 128, 256)
#: Element types of the tensor-core kernels (decode, prefill).
DTYPES = (torch.float16, torch.bfloat16)


#: Plain attention (identity hooks): the runners' default variant.
NONE = Variant("none")

#: KV sources of the prefill kernels (their KV_MODE template argument): ragged tensors, the paged layouts.
KV_MODES = {"ragged": 0, "NHD": 1, "HND": 2}


def hook_flags(variant: Variant) -> tuple[bool, bool]:
    """Whether ``variant`` has a score_mod hook and a mask_mod hook (traced or written in CUDA): the kernels'
    SCORE_MOD / MASK_MOD template arguments."""
    return (variant.score_mod is not None or variant.cuda_score_mod is not None,
            variant.mask_mod is not None or variant.cuda_mask_mod is not None)


def page_shift(page_size: int) -> int:
    """log2(page_size) for power-of-two pages (the kernels shift), -1 otherwise (they divide)."""
    return page_size.bit_length() - 1 if page_size & (page_size - 1) == 0 else -1


def plan_dtype(plan) -> torch.dtype:
    """The torch dtype a tensor-core kernel runs for ``plan.dtype`` (bf16 / f16), or ``InputError``."""
    dt = {"bf16": torch.bfloat16, "f16": torch.float16}.get(plan.dtype)
    if dt is None:
        raise InputError(f"plan dtype {plan.dtype!r}: the kernels run bf16 / f16")
    return dt


def rope_mode(rope) -> int:
    """The kernels' ROPE template argument: 0 none, 1 half rotated (Llama), 2 interleaved (GPT-J)."""
    return 0 if rope is None else (2 if rope.interleave else 1)


def rope_table_bytes(head_dim: int, rope: int, num_warps: int = 4) -> int:
    """Shared memory of the RoPE tables (``rope_smem_t::BYTES`` in ``kernels/include/infernb/rope.cuh``):
    ``head_dim / 2`` float4, 128 float2 and one float2 per pair and warp; 0 without RoPE."""
    return (head_dim // 2 * 16 + 32 * 4 * 8 + num_warps * head_dim // 2 * 8) if rope else 0


def record_check(dtype, struct: str, names: str) -> str:
    """The generated unit's check that a kernel record (``struct``, its field-name string ``names``; both in
    ``infernb::``) is laid out as the NumPy ``dtype`` of int32 fields (common.cuh, "Records")."""
    fields = "".join(f"{n}," for n in dtype.names)
    return (f'static_assert(infernb::str_eq(infernb::{names}, "{fields}") && sizeof(infernb::{struct}) == '
            f'{dtype.itemsize}, "{struct}: fields (all int32) and order as the NumPy record");')


def records_to_device(records, device) -> torch.Tensor:
    """A NumPy record array (int32 fields) as the flat int32 tensor a kernel reads, on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(records).view(np.int32).reshape(-1)).to(device)


def check_dtype(name: str, t: torch.Tensor, allowed=tuple(DTYPE_NAMES)) -> None:
    if t.dtype not in allowed:
        raise InputError(f"{name}: expected dtype in {[str(d) for d in allowed]}, got {t.dtype}")


def check_head_dim(name: str, d: int) -> None:
    if d not in HEAD_DIMS:
        raise InputError(f"{name}: head_dim {d} is not supported; supported head dims: {HEAD_DIMS}")


def check_same_device(**tensors: torch.Tensor) -> torch.device:
    devs = {n: t.device for n, t in tensors.items()}
    if len(set(devs.values())) != 1:
        raise InputError("tensors must be on one device, got " + ", ".join(f"{n} on {d}" for n, d in devs.items()))
    return next(iter(devs.values()))


def check_shape(name: str, t: torch.Tensor, shape: tuple, dims: str) -> None:
    if tuple(t.shape) != tuple(shape):
        raise InputError(f"{name}: expected shape {list(shape)} {dims}, got {list(t.shape)}")



def _span(t: torch.Tensor) -> tuple[int, int]:
    return t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()


def check_no_overlap(outputs: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor]) -> None:
    """Kernels read inputs through ``__restrict__`` pointers: an output may not alias any input."""
    for on, o in outputs.items():
        a0, a1 = _span(o)
        for n, t in inputs.items():
            b0, b1 = _span(t)
            if o.numel() and t.numel() and a0 < b1 and b0 < a1:
                raise InputError(f"{on} overlaps input {n} in memory; in-place merging is not supported, "
                                 "pass separate output tensors")


def prepare_outputs(out, shapes_dtypes: list[tuple[tuple, torch.dtype]], device: torch.device,
                    names=("out[0]", "out[1]")) -> list[torch.Tensor]:
    """Allocate outputs, or check user-provided ones (shape, dtype, device, contiguity, 16-byte alignment)."""
    if out is None:
        return [torch.empty(shape, dtype=dt, device=device) for shape, dt in shapes_dtypes]
    out = list(out)
    if len(out) != len(shapes_dtypes):
        raise InputError(f"out: expected {len(shapes_dtypes)} tensors, got {len(out)}")
    for name, t, (shape, dt) in zip(names, out, shapes_dtypes):
        if (not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(shape) or t.dtype != dt or t.device != device
                or not t.is_contiguous() or t.data_ptr() % 16):
            got = f"{t.dtype} {list(t.shape)} on {t.device}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise InputError(f"{name}: expected a contiguous, 16-byte aligned {dt} tensor of shape {list(shape)} "
                             f"on {device}, got {got}")
    return out


def check_paged_inputs(plan, cache, page_table, rope=None) -> torch.dtype:
    """A paged cache, its page table and RoPE against the plan they run (every paged kernel runner): cache shape and
    dtype, the table's page size, dtype, range and device, its lengths against the plan's. Returns the dtype."""
    import dataclasses

    pool = cache.pool
    dt = plan_dtype(plan)
    checks = [("num_kv_heads", cache.num_kv_heads, plan.num_kv_heads), ("head_dim", cache.head_dim, plan.head_dim),
              ("page_size", cache.page_size, plan.page_size), ("dtype", cache.dtype, dt)]
    for name, got, want in checks:
        if got != want:
            raise InputError(f"cache.{name} = {got} but the plan was made for {want}")
    if page_table.page_size != plan.page_size:
        raise InputError(f"page_table.page_size = {page_table.page_size} but the plan has {plan.page_size}")
    if not (page_table.indptr.is_contiguous() and page_table.indices.is_contiguous()):
        raise InputError("page_table: indptr and indices must be contiguous int32 tensors")
    dataclasses.replace(page_table, num_pages=cache.num_pages).validate()   # int32, in range of this pool
    if page_table.indptr.device != pool.device or page_table.indices.device != pool.device:
        raise InputError(f"page_table is on {page_table.indptr.device}, the cache on {pool.device}: move it "
                         "with page_table.to(device)")
    lens = page_table.kv_lens()
    if lens != plan.kv_lens.tolist():
        b = next((i for i, (x, y) in enumerate(zip(lens, plan.kv_lens.tolist())) if x != y), min(len(lens),
                                                                                               plan.batch_size))
        raise InputError(f"page_table does not match the plan: request {b} has "
                         f"{lens[b] if b < len(lens) else 'no'} tokens in the table, "
                         f"{plan.kv_lens[b] if b < plan.batch_size else 'none'} in the plan "
                         f"({len(lens)} vs {plan.batch_size} requests)")
    if page_table.num_pages is not None and page_table.num_pages > cache.num_pages:
        raise InputError(f"page_table points into a pool of {page_table.num_pages} pages, the cache has "
                         f"{cache.num_pages}")
    check_rope(rope, plan.head_dim)
    return dt


def check_rope(rope, head_dim: int) -> None:
    if rope is not None:
        rd = rope.rotary_dim or head_dim
        if rd > head_dim:
            raise InputError(f"RoPE.rotary_dim = {rd} exceeds head_dim = {head_dim}")


def check_q(q, shape: tuple, dims: str, dtype: torch.dtype, device: torch.device, what: str) -> None:
    """A runner's ``q`` at call time: a tensor of the plan's shape, the runner's dtype and device; on CUDA contiguous
    and 16-byte aligned (kernels load it in 16-byte vectors). ``what`` names where the dtype comes from."""
    if not isinstance(q, torch.Tensor):
        raise InputError(f"q: expected a tensor, got {type(q).__name__}")
    if tuple(q.shape) != tuple(shape):
        raise InputError(f"q: expected shape {list(shape)} {dims} (from the plan), got {list(q.shape)}")
    if q.dtype != dtype:
        raise InputError(f"q: expected dtype {dtype} ({what}), got {q.dtype}")
    if q.device != device:
        raise InputError(f"q is on {q.device}; the runner was built for {device}")
    if q.device.type == "cuda" and (not q.is_contiguous() or q.data_ptr() % 16):
        raise InputError("q: expected a contiguous, 16-byte aligned tensor (use q.contiguous())")


def check_pool(cache, dtype: torch.dtype, pool_shape: tuple, layout: str, device: torch.device) -> torch.Tensor:
    """The page pool a paged runner reads at call time (a PagedKVCache or a bare pool tensor): the runner's dtype,
    shape, layout and device, contiguous. Returns the pool tensor."""
    pool = cache.pool if hasattr(cache, "pool") else cache
    if not isinstance(pool, torch.Tensor):
        raise InputError(f"cache: expected a PagedKVCache or its pool tensor, got {type(cache).__name__}")
    if pool.device != device:
        raise InputError(f"the cache is on {pool.device}; the runner was built for {device}")
    if pool.dtype != dtype or tuple(pool.shape) != tuple(pool_shape):
        raise InputError(f"cache: expected a {dtype} page pool of shape {list(pool_shape)} (the runner's cache), "
                         f"got {pool.dtype} {list(pool.shape)}")
    got = layout if isinstance(cache, torch.Tensor) else getattr(cache, "layout", layout)
    if got != layout:                             # (a bare pool tensor's .layout is torch's, not NHD/HND)
        raise InputError(f"cache: layout {got}, the runner was built for {layout}")
    if not pool.is_contiguous():
        raise InputError("cache: the page pool must be contiguous")
    return pool


def check_variant(variant, plan):
    """A runner's variant (``None``: plain attention, ``none``): an infernb Variant; a sigmoid one needs an unsplit
    plan (its parts add up instead of merging by LSE). Returns the variant."""
    variant = NONE if variant is None else variant
    if not isinstance(variant, Variant):
        raise InputError(f"variant: expected an infernb Variant, got {type(variant).__name__}")
    if not variant.softmax and len(plan.merge_unit):
        raise InputError(f"variant {variant.name} is sigmoid attention: its split parts add up instead of "
                         "merging by LSE; plan it unsplit (plan(..., merge_gain=float('inf')))")
    return variant
