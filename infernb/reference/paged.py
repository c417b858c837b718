"""Paged KV cache access for the reference (FlashInfer's page-table format).

A request's KV lives in pages ``indices[indptr[b]:indptr[b+1]]`` of the page pool, in logical order; all
pages are full except the last, which holds ``last_page_len[b]`` tokens (``1..page_size``). A request
with no pages has ``last_page_len[b] == 0`` and ``kv_len == 0``.

Page pool layouts (one tensor holding K and V, or a ``(k_pages, v_pages)`` pair):

- ``NHD``: ``[num_pages, 2, page_size, num_kv_heads, head_dim]`` (pair: ``[num_pages, page_size, H, D]`` each)
- ``HND``: ``[num_pages, 2, num_kv_heads, page_size, head_dim]`` (pair: ``[num_pages, H, page_size, D]`` each)
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import InputError
from ._checks import check_indptr, check_tensor
from .attention import attention

LAYOUTS = ("NHD", "HND")


def split_kv_pool(kv_cache, layout: str = "NHD") -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(k_pages, v_pages)``, each ``[num_pages, page_size, num_kv_heads, head_dim]`` (views, NHD order)."""
    if layout not in LAYOUTS:
        raise InputError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    if isinstance(kv_cache, (tuple, list)):
        if len(kv_cache) != 2:
            raise InputError(f"kv_cache: expected a (k_pages, v_pages) pair, got {len(kv_cache)} tensors")
        kp, vp = kv_cache
        for name, t in (("kv_cache[0]", kp), ("kv_cache[1]", vp)):
            check_tensor(name, t, ndim=4, dims=f"[num_pages, {'page_size, H' if layout == 'NHD' else 'H, page_size'}, D]")
        if kp.shape != vp.shape:
            raise InputError(f"kv_cache: k_pages {tuple(kp.shape)} and v_pages {tuple(vp.shape)} differ in shape")
    else:
        dims = "[num_pages, 2, page_size, H, D]" if layout == "NHD" else "[num_pages, 2, H, page_size, D]"
        check_tensor("kv_cache", kv_cache, ndim=5, dims=dims)
        if kv_cache.shape[1] != 2:
            raise InputError(f"kv_cache: expected {dims} with 2 at dim 1 (K and V), got {tuple(kv_cache.shape)}")
        kp, vp = kv_cache[:, 0], kv_cache[:, 1]
    if layout == "HND":
        kp, vp = kp.transpose(1, 2), vp.transpose(1, 2)
    return kp, vp


def kv_lengths(kv_page_indptr, kv_last_page_len, page_size: int) -> list[int]:
    """Per-request KV lengths: ``(num_pages - 1) * page_size + last_page_len`` (0 for no pages)."""
    ptr = check_indptr("kv_page_indptr", kv_page_indptr)
    last = torch.as_tensor(kv_last_page_len).tolist()
    if len(last) != len(ptr) - 1:
        raise InputError(f"kv_last_page_len: expected {len(ptr) - 1} entries (one per request), got {len(last)}")
    lens = []
    for b, lp in enumerate(last):
        n = ptr[b + 1] - ptr[b]
        if n == 0:
            if lp != 0:
                raise InputError(f"kv_last_page_len[{b}] = {lp}, but request {b} has no pages (expected 0)")
            lens.append(0)
        else:
            if not 1 <= lp <= page_size:
                raise InputError(f"kv_last_page_len[{b}] = {lp} out of range 1..page_size ({page_size})")
            lens.append((n - 1) * page_size + lp)
    return lens


def gather_paged_kv(kv_cache, kv_page_indptr, kv_page_indices, kv_last_page_len, *, layout: str = "NHD",
                    ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Gather every request's K/V from the page pool into contiguous ragged tensors.

    Returns:
        ``(k, v, kv_indptr)``: ``k``/``v`` ``[total_kv, num_kv_heads, head_dim]`` (pool dtype) and the token
        ``kv_indptr`` (list of ``batch_size + 1`` ints).
    """
    kp, vp = split_kv_pool(kv_cache, layout)
    num_pages, page_size = kp.shape[0], kp.shape[1]
    indices = torch.as_tensor(kv_page_indices)
    check_tensor("kv_page_indices", indices, ndim=1, dims="[num_used_pages]", floating=False)
    ptr = check_indptr("kv_page_indptr", kv_page_indptr, indices.numel(), total_name="len(kv_page_indices)")
    try:
        lens = kv_lengths(ptr, kv_last_page_len, page_size)
    except InputError as e:
        # the page size is read off the pool's shape, which depends on the layout: a wrong layout is the usual cause
        raise InputError(f"{e} (the page size {page_size} was read from a pool of shape "
                         f"{list(kv_cache.shape if isinstance(kv_cache, torch.Tensor) else kp.shape)} as layout "
                         f"{layout!r}: if the pool is {'HND' if layout == 'NHD' else 'NHD'}, pass layout="
                         f"'{'HND' if layout == 'NHD' else 'NHD'}')") from None
    if indices.numel():
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0 or hi >= num_pages:
            bad = lo if lo < 0 else hi
            raise InputError(f"kv_page_indices: page {bad} out of range [0, {num_pages}) of the pool")
    ks, vs = [], []
    for b, n in enumerate(lens):
        pages = indices[ptr[b]:ptr[b + 1]].to(kp.device, torch.long)
        ks.append(kp[pages].reshape(-1, *kp.shape[2:])[:n])
        vs.append(vp[pages].reshape(-1, *vp.shape[2:])[:n])
    kv_indptr = [0]
    for n in lens:
        kv_indptr.append(kv_indptr[-1] + n)
    empty = kp.new_empty(0, *kp.shape[2:])
    return (torch.cat(ks) if ks else empty), (torch.cat(vs) if vs else empty), kv_indptr


def paged_attention(q: torch.Tensor, kv_cache, kv_page_indptr, kv_page_indices, kv_last_page_len,
                    qo_indptr: torch.Tensor | Sequence[int] | None = None, *, layout: str = "NHD", **kwargs,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of ragged queries over a paged KV cache.

    Args:
        q: ``[total_qo, num_qo_heads, head_dim]``.
        kv_cache: page pool (see the module docstring for ``NHD``/``HND`` shapes).
        kv_page_indptr: ``[batch_size + 1]`` int; request ``b`` owns ``kv_page_indices[indptr[b]:indptr[b+1]]``.
        kv_page_indices: ``[num_used_pages]`` int page ids in logical order.
        kv_last_page_len: ``[batch_size]`` int, tokens in each request's last page.
        qo_indptr: ``[batch_size + 1]``; default one query per request (decode).
        layout: ``"NHD"`` or ``"HND"``.
        **kwargs: any option of :func:`infernb.reference.attention` (causal, window_left, rope, ...).
    Returns:
        ``(out [total_qo, num_qo_heads, head_dim], lse [total_qo, num_qo_heads])`` in the compute dtype.
    """
    k, v, kv_indptr = gather_paged_kv(kv_cache, kv_page_indptr, kv_page_indices, kv_last_page_len, layout=layout)
    if qo_indptr is None:
        qo_indptr = list(range(len(kv_indptr)))
    return attention(q, k, v, qo_indptr, kv_indptr, **kwargs)
