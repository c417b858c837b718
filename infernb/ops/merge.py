"""Merge partial attention states by LSE: CUDA kernel on GPU tensors, the reference on CPU tensors."""
from __future__ import annotations

import functools

import torch

from .. import reference
from ..jit import KernelSpec, build
from ..jit.build import Kernel
from ._common import CUDA_TYPES, DTYPE_NAMES, HEAD_DIMS, check_dtype, check_head_dim, check_same_device, check_shape

NUM_THREADS = 128


@functools.lru_cache(maxsize=None)
def merge_spec(dtype: torch.dtype, head_dim: int) -> KernelSpec:
    """The merge kernels (2-way and n-way) for one value dtype and head dim."""
    t = CUDA_TYPES[dtype]
    args = f"{t}, {head_dim}, {NUM_THREADS}"
    return KernelSpec(
        family="merge_states",
        name=f"merge_states_{DTYPE_NAMES[dtype]}_hd{head_dim}",
        kernels=(("merge_state", f"infernb::merge_state_kernel<{args}>"),
                 ("merge_states", f"infernb::merge_states_kernel<{args}>")),
    )


def specializations() -> list[KernelSpec]:
    """Every merge specialization the library can generate."""
    return [merge_spec(dt, d) for dt in CUDA_TYPES for d in HEAD_DIMS]


def _rows_per_cta(dtype: torch.dtype, head_dim: int) -> int:
    vec = 16 // dtype.itemsize
    return NUM_THREADS // (head_dim // vec)


def _kernel(dtype: torch.dtype, head_dim: int) -> Kernel:
    return build(merge_spec(dtype, head_dim))


def merge_state(v_a: torch.Tensor, s_a: torch.Tensor, v_b: torch.Tensor, s_b: torch.Tensor, *,
                out: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two partial attention results by their LSE.

    Args:
        v_a, v_b: ``[seq_len, num_heads, head_dim]`` fp16/bf16/fp32 (same dtype), partial outputs.
        s_a, s_b: ``[seq_len, num_heads]`` fp32, their LSEs (natural log; ``-inf`` = saw no key).
        out: optional preallocated ``(v, s)`` to write into.
    Returns:
        ``(v [seq_len, num_heads, head_dim] like v_a, s [seq_len, num_heads] fp32)``.

    On CUDA tensors this runs the ``merge_state`` kernel (compiled on first use); on CPU tensors it runs
    :func:`infernb.reference.merge_state` and casts.
    """
    check_dtype("v_a", v_a)
    if v_b.dtype != v_a.dtype:
        raise_dtype("v_b", v_b.dtype, v_a.dtype)
    for n, s in (("s_a", s_a), ("s_b", s_b)):
        check_dtype(n, s, (torch.float32,))
    if v_a.dim() != 3:
        check_shape("v_a", v_a, ("seq_len", "num_heads", "head_dim"), "[seq_len, num_heads, head_dim]")
    n, h, d = v_a.shape
    check_shape("v_b", v_b, (n, h, d), "[seq_len, num_heads, head_dim] like v_a")
    check_shape("s_a", s_a, (n, h), "[seq_len, num_heads]")
    check_shape("s_b", s_b, (n, h), "[seq_len, num_heads]")
    dev = check_same_device(v_a=v_a, s_a=s_a, v_b=v_b, s_b=s_b)
    v_out, s_out = _outputs(out, (n, h, d), v_a.dtype, dev)
    if dev.type != "cuda":
        rv, rs = reference.merge_state(v_a, s_a, v_b, s_b)
        v_out.copy_(rv)
        s_out.copy_(rs)
        return v_out, s_out
    check_head_dim("v_a", d)
    rows = n * h
    if rows:
        rpc = _rows_per_cta(v_a.dtype, d)
        _kernel(v_a.dtype, d).launch(
            "merge_state", ((rows + rpc - 1) // rpc, 1, 1), (NUM_THREADS, 1, 1),
            (v_a.contiguous(), s_a.contiguous(), v_b.contiguous(), s_b.contiguous(), v_out, s_out,
             _i64(rows)), device_index=dev.index)
    return v_out, s_out


def merge_states(v: torch.Tensor, s: torch.Tensor, *, out: tuple[torch.Tensor, torch.Tensor] | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge ``num_states`` partial attention results per row by their LSE.

    Args:
        v: ``[seq_len, num_states, num_heads, head_dim]`` fp16/bf16/fp32.
        s: ``[seq_len, num_states, num_heads]`` fp32.
        out: optional preallocated ``(v, s)``.
    Returns:
        ``(v [seq_len, num_heads, head_dim] like v, s [seq_len, num_heads] fp32)``.
    """
    check_dtype("v", v)
    check_dtype("s", s, (torch.float32,))
    if v.dim() != 4:
        check_shape("v", v, ("seq_len", "num_states", "num_heads", "head_dim"), "")
    n, k, h, d = v.shape
    check_shape("s", s, (n, k, h), "[seq_len, num_states, num_heads]")
    dev = check_same_device(v=v, s=s)
    v_out, s_out = _outputs(out, (n, h, d), v.dtype, dev)
    if dev.type != "cuda":
        rv, rs = reference.merge_states(v, s)
        v_out.copy_(rv)
        s_out.copy_(rs)
        return v_out, s_out
    check_head_dim("v", d)
    rows = n * h
    if rows:
        if k > 0 and n * k * h * d >= 2**31:
            from ..errors import InputError
            raise InputError(f"v: {n * k * h * d} elements exceed the kernel's 32-bit index range")
        rpc = _rows_per_cta(v.dtype, d)
        _kernel(v.dtype, d).launch(
            "merge_states", ((rows + rpc - 1) // rpc, 1, 1), (NUM_THREADS, 1, 1),
            (v.contiguous(), s.contiguous(), v_out, s_out, n, k, h), device_index=dev.index)
    return v_out, s_out


def _outputs(out, shape, dtype, device):
    from ..errors import InputError

    if out is None:
        return torch.empty(shape, dtype=dtype, device=device), torch.empty(shape[:2], dtype=torch.float32, device=device)
    v_out, s_out = out
    if tuple(v_out.shape) != tuple(shape) or v_out.dtype != dtype or v_out.device != device or not v_out.is_contiguous():
        raise InputError(f"out[0]: expected a contiguous {dtype} tensor of shape {list(shape)} on {device}, "
                         f"got {v_out.dtype} {list(v_out.shape)} on {v_out.device}")
    if tuple(s_out.shape) != tuple(shape[:2]) or s_out.dtype != torch.float32 or s_out.device != device or not s_out.is_contiguous():
        raise InputError(f"out[1]: expected a contiguous float32 tensor of shape {list(shape[:2])} on {device}, "
                         f"got {s_out.dtype} {list(s_out.shape)} on {s_out.device}")
    return v_out, s_out


def raise_dtype(name, got, want):
    from ..errors import InputError

    raise InputError(f"{name}: expected dtype {want} (same as the first input), got {got}")


def _i64(x: int):
    import numpy as np

    return np.int64(x)
