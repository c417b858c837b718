"""Merging partial attention results by their log-sum-exp (the split-KV merge), reference.

If rows' keys are split into disjoint parts with partial outputs ``v_i`` (softmax-normalized within
the part) and LSEs ``s_i``, the full result is ``v = sum_i w_i v_i`` with ``w_i = exp(s_i - s)`` and
``s = log(sum_i exp(s_i))``. A part with ``s_i = -inf`` (it saw no key) has weight 0; if every part does
(or there are no parts), the result is ``v = 0``, ``s = -inf``. A NaN or ``+inf`` LSE is invalid input and
makes the row NaN (output and LSE), so it is never mistaken for an empty row.
"""
from __future__ import annotations

import torch

from ..errors import InputError
from ._checks import check_tensor


def merge_states(v: torch.Tensor, s: torch.Tensor, *, compute_dtype: torch.dtype = torch.float64,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge ``num_states`` partial results per row.

    Args:
        v: ``[seq_len, num_states, num_heads, head_dim]`` partial outputs.
        s: ``[seq_len, num_states, num_heads]`` their LSEs (natural log).
    Returns:
        ``(v_merged [seq_len, num_heads, head_dim], s_merged [seq_len, num_heads])`` in ``compute_dtype``.
    """
    check_tensor("v", v, ndim=4, dims="[seq_len, num_states, num_heads, head_dim]", floating=True)
    check_tensor("s", s, ndim=3, dims="[seq_len, num_states, num_heads]", floating=True)
    if s.shape != v.shape[:3]:
        raise InputError(f"s: expected shape {list(v.shape[:3])} to match v's [seq_len, num_states, num_heads], "
                         f"got {list(s.shape)}")
    v = v.to(compute_dtype)
    s = s.to(compute_dtype)
    if s.shape[1] == 0:
        n, _, h, d = v.shape
        return v.new_zeros(n, h, d), s.new_full((n, h), float("-inf"))
    bad = (torch.isnan(s) | (s == float("inf"))).any(dim=1)           # [N, H]
    s = torch.where(bad[:, None], float("-inf"), s)
    m = s.amax(dim=1, keepdim=True)                                  # [N, 1, H]
    m_safe = torch.where(torch.isinf(m), 0.0, m)
    w = torch.exp(s - m_safe)                                        # [N, K, H]; exp(-inf) = 0
    total = w.sum(dim=1)                                             # [N, H]
    empty = total == 0
    out = torch.einsum("nkh,nkhd->nhd", w, v) / torch.where(empty, 1.0, total)[..., None]
    out = torch.where(empty[..., None], 0.0, out)
    lse = torch.where(empty, float("-inf"), m_safe[:, 0] + torch.log(torch.where(empty, 1.0, total)))
    out = torch.where(bad[..., None], float("nan"), out)
    lse = torch.where(bad, float("nan"), lse)
    return out, lse


def merge_state(v_a: torch.Tensor, s_a: torch.Tensor, v_b: torch.Tensor, s_b: torch.Tensor, *,
                compute_dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two partial results.

    Args:
        v_a, v_b: ``[seq_len, num_heads, head_dim]``.
        s_a, s_b: ``[seq_len, num_heads]``.
    Returns:
        ``(v [seq_len, num_heads, head_dim], s [seq_len, num_heads])`` in ``compute_dtype``.
    """
    check_tensor("v_a", v_a, ndim=3, dims="[seq_len, num_heads, head_dim]", floating=True)
    check_tensor("s_a", s_a, ndim=2, dims="[seq_len, num_heads]", floating=True)
    if v_b.shape != v_a.shape:
        raise InputError(f"v_b: expected shape {list(v_a.shape)} like v_a, got {list(v_b.shape)}")
    if s_a.shape != v_a.shape[:2] or s_b.shape != s_a.shape:
        raise InputError(f"s_a/s_b: expected shape {list(v_a.shape[:2])}, got {list(s_a.shape)} / {list(s_b.shape)}")
    return merge_states(torch.stack([v_a, v_b], 1), torch.stack([s_a, s_b], 1), compute_dtype=compute_dtype)
