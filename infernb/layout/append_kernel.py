"""Writing new K/V into a paged cache on the GPU: one kernel launch per append (``PagedKVCache.append`` calls
this for CUDA pools; CPU pools use a vectorized ``index_put``). Lives in ``layout`` because the cache owns it;
it only needs ``infernb.jit`` below it."""
from __future__ import annotations

import functools

import torch

from ..device import device_info
from ..jit import KernelSpec, build
from ..jit.types import CUDA_TYPES, DTYPE_NAMES, aligned16

NUM_THREADS = 256


@functools.lru_cache(maxsize=None)
def append_spec(dtype: torch.dtype, head_dim: int, layout: str) -> KernelSpec:
    """The paged-append kernel for one dtype, head dim and pool layout."""
    return KernelSpec(
        family="paged_append",
        name=f"paged_append_{DTYPE_NAMES[dtype]}_hd{head_dim}_{layout.lower()}",
        kernels=(("append", f"infernb::append_paged_kv_kernel<{CUDA_TYPES[dtype]}, {head_dim}, "
                            f"{'true' if layout == 'HND' else 'false'}, {NUM_THREADS}>"),),
    )


#: Head dims the append kernel is built for (any multiple of 8 would work; these are the ones we ship).
APPEND_HEAD_DIMS = (64, 128, 256)


def specializations() -> list[KernelSpec]:
    return [append_spec(dt, d, lay) for dt in CUDA_TYPES for d in APPEND_HEAD_DIMS for lay in ("NHD", "HND")]


def append_paged_kv(pool: torch.Tensor, layout: str, k: torch.Tensor, v: torch.Tensor, dest: torch.Tensor) -> None:
    """Write ``k``/``v`` ``[num_tokens, num_kv_heads, head_dim]`` into ``pool`` at ``dest`` ``[2, num_tokens]``
    int32 (page, slot) on the pool's device. ``pool`` must be contiguous CUDA memory (``PagedKVCache.pool``)."""
    t, h, d = k.shape
    if t == 0:
        return
    page_size = pool.shape[2] if layout == "NHD" else pool.shape[3]
    vec = 16 // pool.dtype.itemsize
    total = t * h * (d // vec)
    grid = (min(-(-total // NUM_THREADS), device_info().sm_count * 16), 1, 1)
    build(append_spec(pool.dtype, d, layout)).launch(
        "append", grid, (NUM_THREADS, 1, 1), (aligned16(k), aligned16(v), pool, dest, t, h, page_size),
        device_index=pool.device.index)

