"""Merge partial attention states by LSE: CUDA kernel on GPU tensors, the reference on CPU tensors."""
from __future__ import annotations

import functools

import numpy as np
import torch

from .. import reference
from ..errors import InputError
from ..jit import KernelSpec, build
from ._common import (CUDA_TYPES, DTYPE_NAMES, HEAD_DIMS, aligned16, check_dtype, check_head_dim, check_no_overlap,
                      check_same_device, check_shape, prepare_outputs)

NUM_THREADS = 128


@functools.lru_cache(maxsize=None)
def merge_spec(dtype: torch.dtype, head_dim: int) -> KernelSpec:
    """The merge kernels (2-way, n-way and gathered) for one value dtype and head dim."""
    args = f"{CUDA_TYPES[dtype]}, {head_dim}, {NUM_THREADS}"
    return KernelSpec(
        family="merge_states",
        name=f"merge_states_{DTYPE_NAMES[dtype]}_hd{head_dim}",
        kernels=(("merge_state", f"infernb::merge_state_kernel<{args}>"),
                 ("merge_states", f"infernb::merge_states_kernel<{args}>"),
                 ("merge_gather", f"infernb::merge_gather_kernel<{args}>")),
    )


def specializations() -> list[KernelSpec]:
    """Every merge specialization the library can generate."""
    return [merge_spec(dt, d) for dt in CUDA_TYPES for d in HEAD_DIMS]


def _grid(rows: int, dtype: torch.dtype, head_dim: int) -> tuple[int, int, int]:
    rows_per_cta = NUM_THREADS // (head_dim // (16 // dtype.itemsize))
    return (-(-rows // rows_per_cta), 1, 1)


def merge_state(v_a: torch.Tensor, s_a: torch.Tensor, v_b: torch.Tensor, s_b: torch.Tensor, *,
                out: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two partial attention results by their LSE.

    Args:
        v_a, v_b: ``[seq_len, num_heads, head_dim]`` fp16/bf16/fp32 (same dtype), partial outputs.
        s_a, s_b: ``[seq_len, num_heads]`` fp32, their LSEs (natural log; ``-inf`` = saw no key).
        out: optional preallocated ``(v, s)`` (contiguous, 16-byte aligned, not aliasing the inputs).
    Returns:
        ``(v [seq_len, num_heads, head_dim] like v_a, s [seq_len, num_heads] fp32)``. Rows whose parts all
        saw no key give ``v = 0, s = -inf``; a NaN or ``+inf`` input LSE gives a NaN row.

    On CUDA tensors this runs the ``merge_state`` kernel (compiled on first use); on CPU tensors it runs
    :func:`infernb.reference.merge_state` and casts.
    """
    check_dtype("v_a", v_a)
    if v_b.dtype != v_a.dtype:
        raise InputError(f"v_b: expected dtype {v_a.dtype} (same as v_a), got {v_b.dtype}")
    check_dtype("s_a", s_a, (torch.float32,))
    check_dtype("s_b", s_b, (torch.float32,))
    if v_a.dim() != 3:
        raise InputError(f"v_a: expected [seq_len, num_heads, head_dim], got shape {list(v_a.shape)}")
    n, h, d = v_a.shape
    check_shape("v_b", v_b, (n, h, d), "[seq_len, num_heads, head_dim] like v_a")
    check_shape("s_a", s_a, (n, h), "[seq_len, num_heads]")
    check_shape("s_b", s_b, (n, h), "[seq_len, num_heads]")
    dev = check_same_device(v_a=v_a, s_a=s_a, v_b=v_b, s_b=s_b)
    v_out, s_out = prepare_outputs(out, [((n, h, d), v_a.dtype), ((n, h), torch.float32)], dev)
    check_no_overlap(dict(v_out=v_out, s_out=s_out), dict(v_a=v_a, s_a=s_a, v_b=v_b, s_b=s_b))
    if dev.type != "cuda":
        rv, rs = reference.merge_state(v_a, s_a, v_b, s_b)
        return v_out.copy_(rv), s_out.copy_(rs)
    check_head_dim("v_a", d)
    if n * h:
        build(merge_spec(v_a.dtype, d)).launch(
            "merge_state", _grid(n * h, v_a.dtype, d), (NUM_THREADS, 1, 1),
            (aligned16(v_a), s_a.contiguous(), aligned16(v_b), s_b.contiguous(), v_out, s_out, np.int64(n * h)),
            device_index=dev.index)
    return v_out, s_out


def merge_states(v: torch.Tensor, s: torch.Tensor, *, out: tuple[torch.Tensor, torch.Tensor] | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge ``num_states`` partial attention results per row by their LSE.

    Args:
        v: ``[seq_len, num_states, num_heads, head_dim]`` fp16/bf16/fp32.
        s: ``[seq_len, num_states, num_heads]`` fp32.
        out: optional preallocated ``(v, s)`` (contiguous, 16-byte aligned, not aliasing the inputs).
    Returns:
        ``(v [seq_len, num_heads, head_dim] like v, s [seq_len, num_heads] fp32)``; same conventions as
        :func:`merge_state` (``num_states = 0`` gives empty rows).
    """
    check_dtype("v", v)
    check_dtype("s", s, (torch.float32,))
    if v.dim() != 4:
        raise InputError(f"v: expected [seq_len, num_states, num_heads, head_dim], got shape {list(v.shape)}")
    n, k, h, d = v.shape
    check_shape("s", s, (n, k, h), "[seq_len, num_states, num_heads]")
    dev = check_same_device(v=v, s=s)
    v_out, s_out = prepare_outputs(out, [((n, h, d), v.dtype), ((n, h), torch.float32)], dev)
    check_no_overlap(dict(v_out=v_out, s_out=s_out), dict(v=v, s=s))
    if dev.type != "cuda":
        rv, rs = reference.merge_states(v, s)
        return v_out.copy_(rv), s_out.copy_(rs)
    check_head_dim("v", d)
    if n * h:
        build(merge_spec(v.dtype, d)).launch(
            "merge_states", _grid(n * h, v.dtype, d), (NUM_THREADS, 1, 1),
            (aligned16(v), s.contiguous(), v_out, s_out, n, k, h), device_index=dev.index)
    return v_out, s_out


def merge_gather(v0: torch.Tensor, s0: torch.Tensor, v1: torch.Tensor, s1: torch.Tensor, index: torch.Tensor, *,
                 out: tuple[torch.Tensor, torch.Tensor] | None = None, check_index: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge each row's own partial state with partial states gathered from another tensor (cascade attention: a
    request's own keys with the shared prefix levels it reads), by their LSE, in one launch.

    Args:
        v0: ``[seq_len, num_heads, head_dim]`` fp16/bf16/fp32; s0: ``[seq_len, num_heads]`` fp32 (state 0 of each row).
        v1: ``[rows1, num_heads, head_dim]`` like v0; s1: ``[rows1, num_heads]`` fp32 (the gathered states).
        index: ``[seq_len, depth]`` int32: row ``n`` also merges ``v1[index[n, k]]`` for every ``index[n, k] >= 0``
            (``-1``: none).
        out: optional preallocated ``(v, s)``.
        check_index: raise ``InputError`` for an index outside ``-1 .. rows1 - 1`` (on a GPU this reads the index
            back: a synchronization; runners that built the index themselves pass ``False``).
    Returns:
        ``(v [seq_len, num_heads, head_dim] like v0, s [seq_len, num_heads] fp32)``; conventions of
        :func:`merge_states`.
    """
    check_dtype("v0", v0)
    if v1.dtype != v0.dtype:
        raise InputError(f"v1: expected dtype {v0.dtype} (same as v0), got {v1.dtype}")
    check_dtype("s0", s0, (torch.float32,))
    check_dtype("s1", s1, (torch.float32,))
    check_dtype("index", index, (torch.int32,))
    if v0.dim() != 3 or v1.dim() != 3 or index.dim() != 2:
        raise InputError(f"v0, v1: expected [rows, num_heads, head_dim], index [seq_len, depth]; got "
                         f"{list(v0.shape)}, {list(v1.shape)}, {list(index.shape)}")
    n, h, d = v0.shape
    m, depth = v1.shape[0], index.shape[1]
    check_shape("v1", v1, (m, h, d), "[rows1, num_heads, head_dim] (v0's heads and head dim)")
    check_shape("s0", s0, (n, h), "[seq_len, num_heads]")
    check_shape("s1", s1, (m, h), "[rows1, num_heads]")
    check_shape("index", index, (n, depth), "[seq_len, depth]")
    dev = check_same_device(v0=v0, s0=s0, v1=v1, s1=s1, index=index)
    v_out, s_out = prepare_outputs(out, [((n, h, d), v0.dtype), ((n, h), torch.float32)], dev)
    check_no_overlap(dict(v_out=v_out, s_out=s_out), dict(v0=v0, s0=s0, v1=v1, s1=s1))
    if check_index and index.numel() and (int(index.max()) >= m or int(index.min()) < -1):
        raise InputError(f"index: expected rows of v1 (0 .. {m - 1}) or -1")
    if dev.type != "cuda":
        if m == 0:                                       # nothing to gather (every index is -1)
            depth, index = 0, index[:, :0]
        ix = index.long()
        vv = torch.cat([v0[:, None], v1[ix.clamp(min=0)]], 1) if depth else v0[:, None]
        ss = torch.cat([s0[:, None], torch.where((ix >= 0)[..., None], s1[ix.clamp(min=0)],
                                                  torch.full_like(s1[:1], float("-inf")))], 1) if depth else s0[:, None]
        rv, rs = reference.merge_states(vv, ss)
        return v_out.copy_(rv), s_out.copy_(rs)
    check_head_dim("v0", d)
    if n * h:
        build(merge_spec(v0.dtype, d)).launch(
            "merge_gather", _grid(n * h, v0.dtype, d), (NUM_THREADS, 1, 1),
            (aligned16(v0), s0.contiguous(), aligned16(v1), s1.contiguous(), index.contiguous(), v_out, s_out, n,
             depth, h), device_index=dev.index)
    return v_out, s_out
