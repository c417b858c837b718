"""NHD <-> HND conversion of page pools.

``NHD``: ``[num_pages, 2, page_size, num_kv_heads, head_dim]``; ``HND``: ``[num_pages, 2, num_kv_heads, page_size, head_dim]``.
(Gathering a request's K/V back to contiguous tensors: :meth:`PagedKVCache.gather` or
:func:`infernb.reference.gather_paged_kv` for a raw pool and page table.)
"""
from __future__ import annotations

import torch

from ..errors import InputError

LAYOUTS = ("NHD", "HND")


def convert_pool_layout(pool: torch.Tensor, src: str, dst: str) -> torch.Tensor:
    """Return a contiguous copy of ``pool`` (``[num_pages, 2, ., ., head_dim]``) in layout ``dst``."""
    for name, val in (("src", src), ("dst", dst)):
        if val not in LAYOUTS:
            raise InputError(f"{name}: expected one of {LAYOUTS}, got {val!r}")
    if pool.dim() != 5 or pool.shape[1] != 2:
        raise InputError(f"pool: expected [num_pages, 2, ., ., head_dim], got {list(pool.shape)}")
    return pool.clone() if src == dst else pool.transpose(2, 3).contiguous()
