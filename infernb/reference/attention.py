"""Reference attention over ragged batches: the ground truth every kernel is checked against.

One request ``b`` has ``qo_len`` queries and ``kv_len`` keys. Conventions (FlashInfer's, so results compare):

- **positions** (append convention): query ``i`` of a request sits at position ``kv_len - qo_len + i``;
  key ``j`` at position ``j``. Decode is ``qo_len = 1``, prefill ``qo_len = kv_len``.
- **causal**: query at position ``p`` sees keys ``j <= p`` (bottom-right aligned).
- **sliding window** ``window_left = w >= 0``: query at ``p`` sees keys ``j >= p - w`` (``-1`` = off).
- **logits** (FlashInfer's order): ``s = sm_scale * q.k``; then ALiBi ``s += slope[h] * (j - p)``; then
  soft-cap ``s = cap * tanh(s / cap)`` if ``logits_soft_cap > 0``; then the user's ``score_mod``; then masks.
  (FlashInfer measures ALiBi distances from the query's index within the request rather than its position,
  which shifts each row's logits by a constant: outputs agree, LSEs differ by ``slope[h] * (kv_len - qo_len)``.)
- **score_mod / mask_mod** (FlexAttention signatures) receive index tensors that broadcast to
  ``[num_qo_heads, qo_len, kv_len]``: ``b`` (0-d), ``h`` ``[H, 1, 1]``, ``q_idx`` ``[1, L, 1]`` (the query's
  *position* ``kv_len - qo_len + i``) and ``kv_idx`` ``[1, 1, S]``.
- **GQA**: query head ``h`` reads KV head ``h // (num_qo_heads // num_kv_heads)``.
- **LSE** is the natural log of the softmax denominator. A row that sees no key has output 0 and
  LSE ``-inf`` (never NaN).
- **RoPE** (if given) rotates q and k before the dot product. Key ``j`` of request ``b`` is rotated at position
  ``rope_k_offsets[b] + j`` (default offset 0); query ``i`` at ``rope_q_positions[qo_indptr[b] + i]`` (default its
  position ``kv_len - qo_len + i``). These are FlashInfer's ``k_rope_offset`` / ``q_rope_offset``.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch

from ..errors import InputError, is_int
from ._checks import check_indptr, check_tensor
from .rope import RoPE, apply_rope

ScoreMod = Callable[..., torch.Tensor]
MaskMod = Callable[..., torch.Tensor]


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    qo_indptr: torch.Tensor | Sequence[int] | None = None,
    kv_indptr: torch.Tensor | Sequence[int] | None = None,
    *,
    causal: bool = False,
    sm_scale: float | None = None,
    window_left: int = -1,
    logits_soft_cap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
    custom_mask: torch.Tensor | Sequence[torch.Tensor] | None = None,
    score_mod: ScoreMod | None = None,
    mask_mod: MaskMod | None = None,
    rope: RoPE | None = None,
    rope_q_positions: torch.Tensor | Sequence[int] | None = None,
    rope_k_offsets: torch.Tensor | Sequence[int] | None = None,
    softmax: bool = True,
    compute_dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over a ragged batch of requests, computed densely per request in ``compute_dtype``.

    Args:
        q: ``[total_qo, num_qo_heads, head_dim]`` queries of all requests, concatenated.
        k: ``[total_kv, num_kv_heads, head_dim]`` keys, concatenated.
        v: ``[total_kv, num_kv_heads, head_dim_v]`` values, concatenated.
        qo_indptr: ``[batch_size + 1]`` int; request ``b``'s queries are ``q[qo_indptr[b]:qo_indptr[b+1]]``.
            ``None``: one request holding all of ``q``.
        kv_indptr: ``[batch_size + 1]`` int, likewise for ``k``/``v``.
        causal: bottom-right aligned causal mask (see the module docstring).
        sm_scale: softmax scale; default ``1 / sqrt(head_dim)``.
        window_left: sliding window; a query at ``p`` sees keys ``>= p - window_left``; ``-1`` disables.
        logits_soft_cap: ``cap * tanh(s / cap)`` when ``> 0``.
        alibi_slopes: ``[num_qo_heads]`` float; adds ``slope[h] * (j - p)`` to the logits.
        custom_mask: ``torch.bool``, ``True`` = keep (additive float masks are rejected). Either FlashInfer's flat layout ``[sum_b qo_len_b * kv_len_b]``
            (row-major per request) or a sequence of ``[qo_len_b, kv_len_b]`` tensors.
        score_mod: ``score_mod(score, b, h, q_idx, kv_idx) -> score`` (FlexAttention signature).
        mask_mod: ``mask_mod(b, h, q_idx, kv_idx) -> bool`` (``True`` = keep).
        rope: apply RoPE to q and k first (positions as described above).
        rope_q_positions: ``[total_qo]`` int; RoPE position of each query (default: its position in the request).
        rope_k_offsets: ``[batch_size]`` int; RoPE position of each request's key 0 (default 0).
        softmax: ``False`` for sigmoid attention: ``out = sum_j sigmoid(s_ij) v_j`` over visible keys (no
            normalization); the returned "LSE" is then ``log(sum_j sigmoid(s_ij))``, and partial results of
            split keys merge by plain addition rather than by LSE.
        compute_dtype: ``torch.float64`` (default) or ``torch.float32``.
    Returns:
        ``(out, lse)``: ``out`` ``[total_qo, num_qo_heads, head_dim_v]`` and ``lse`` ``[total_qo, num_qo_heads]``,
        both in ``compute_dtype`` on ``q.device``.
    """
    check_tensor("q", q, ndim=3, dims="[total_qo, num_qo_heads, head_dim]", floating=True)
    check_tensor("k", k, ndim=3, dims="[total_kv, num_kv_heads, head_dim]", floating=True)
    check_tensor("v", v, ndim=3, dims="[total_kv, num_kv_heads, head_dim_v]", floating=True)
    total_qo, hq, d = q.shape
    total_kv, hkv, dk = k.shape
    if dk != d:
        raise InputError(f"k: head_dim {dk} differs from q's head_dim {d}")
    if v.shape[:2] != k.shape[:2]:
        raise InputError(f"v: expected shape [{total_kv}, {hkv}, head_dim_v] to match k, got {tuple(v.shape)}")
    if hkv == 0 or hq % hkv:
        raise InputError(f"num_qo_heads ({hq}) must be a positive multiple of num_kv_heads ({hkv}) for GQA")
    if len({q.device, k.device, v.device}) != 1:
        raise InputError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if compute_dtype not in (torch.float32, torch.float64):
        raise InputError(f"compute_dtype: expected torch.float32 or torch.float64, got {compute_dtype}")
    qo = check_indptr("qo_indptr", [0, total_qo] if qo_indptr is None else qo_indptr, total_qo,
                      total_name="q.shape[0]")
    kv = check_indptr("kv_indptr", [0, total_kv] if kv_indptr is None else kv_indptr, total_kv,
                      total_name="k.shape[0]")
    if len(qo) != len(kv):
        raise InputError(f"qo_indptr has {len(qo) - 1} requests but kv_indptr has {len(kv) - 1}")
    batch = len(qo) - 1
    if not is_int(window_left) or window_left < -1:
        raise InputError(f"window_left: expected an integer, -1 (off) or >= 0, got {window_left!r}")
    if logits_soft_cap < 0:
        raise InputError(f"logits_soft_cap: expected >= 0 (0 = off), got {logits_soft_cap}")
    if alibi_slopes is not None:
        alibi_slopes = torch.as_tensor(alibi_slopes)
        if alibi_slopes.shape != (hq,):
            raise InputError(f"alibi_slopes: expected shape [{hq}] (num_qo_heads), got {tuple(alibi_slopes.shape)}")
        alibi_slopes = alibi_slopes.to(q.device, compute_dtype)
    masks = _split_custom_mask(custom_mask, qo, kv, q.device)
    k_off = [0] * batch if rope_k_offsets is None else [int(x) for x in torch.as_tensor(rope_k_offsets).tolist()]
    if len(k_off) != batch:
        raise InputError(f"rope_k_offsets: expected {batch} entries (one per request), got {len(k_off)}")
    q_rpos = None
    if rope_q_positions is not None:
        q_rpos = torch.as_tensor(rope_q_positions).to(q.device)
        if q_rpos.shape != (total_qo,):
            raise InputError(f"rope_q_positions: expected shape [{total_qo}] (one per query), got {list(q_rpos.shape)}")
    if causal:
        for b in range(batch):
            if qo[b + 1] - qo[b] > kv[b + 1] - kv[b]:
                raise InputError(f"causal attention needs qo_len <= kv_len (append convention), but request {b} has "
                                 f"qo_len {qo[b + 1] - qo[b]} > kv_len {kv[b + 1] - kv[b]}")
    scale = d ** -0.5 if sm_scale is None else float(sm_scale)
    group = hq // hkv

    out = torch.zeros(total_qo, hq, v.shape[2], dtype=compute_dtype, device=q.device)
    lse = torch.full((total_qo, hq), float("-inf"), dtype=compute_dtype, device=q.device)
    for b in range(batch):
        qo_len, kv_len = qo[b + 1] - qo[b], kv[b + 1] - kv[b]
        if qo_len == 0:
            continue
        qb = q[qo[b]:qo[b + 1]].to(compute_dtype)
        kb = k[kv[b]:kv[b + 1]].to(compute_dtype)
        vb = v[kv[b]:kv[b + 1]].to(compute_dtype)
        q_pos = torch.arange(kv_len - qo_len, kv_len, device=q.device)     # [L]
        kv_pos = torch.arange(kv_len, device=q.device)                       # [S]
        if rope is not None:
            qp = q_pos if q_rpos is None else q_rpos[qo[b]:qo[b + 1]]
            qb = apply_rope(qb, qp, rope, compute_dtype=compute_dtype)
            kb = apply_rope(kb, kv_pos + k_off[b], rope, compute_dtype=compute_dtype)
        kb = kb.repeat_interleave(group, dim=1)                              # [S, Hq, D]
        vb = vb.repeat_interleave(group, dim=1)                              # [S, Hq, Dv]
        o, l = attend(qb, kb, vb, q_pos, kv_pos, torch.arange(hq, device=q.device), b=b, sm_scale=scale,
                      causal=causal, window_left=window_left, logits_soft_cap=logits_soft_cap,
                      alibi_slopes=alibi_slopes, keep=None if masks is None else masks[b], score_mod=score_mod,
                      mask_mod=mask_mod, softmax=softmax, compute_dtype=compute_dtype)
        out[qo[b]:qo[b + 1]] = o
        lse[qo[b]:qo[b + 1]] = l
    return out, lse


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, kv_pos: torch.Tensor,
           heads: torch.Tensor, *, b: int, sm_scale: float, causal: bool = False, window_left: int = -1,
           logits_soft_cap: float = 0.0, alibi_slopes: torch.Tensor | None = None, keep: torch.Tensor | None = None,
           score_mod: ScoreMod | None = None, mask_mod: MaskMod | None = None, softmax: bool = True,
           compute_dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention math on one block of queries and keys with explicit positions: the single definition
    that :func:`attention` and the plan emulator (which runs KV *chunks* of a request) both use.

    Args:
        q: ``[L, H, D]`` queries (RoPE already applied), ``H`` = the query heads in ``heads``.
        k, v: ``[S, H, D]`` / ``[S, H, Dv]`` keys and values, already expanded to those query heads.
        q_pos: ``[L]`` query positions; kv_pos: ``[S]`` key positions (in the request).
        heads: ``[H]`` query-head indices (for ALiBi slopes and the mods' ``h``).
        b: request index (the mods' ``b``).
        keep: optional ``[L, S]`` bool mask (``True`` = keep).
    Returns:
        ``(out [L, H, Dv], lse [L, H])``; rows with no visible key: 0 and ``-inf``.
    """
    L, S, H = q.shape[0], k.shape[0], q.shape[1]
    s = torch.einsum("lhd,shd->hls", q.to(compute_dtype), k.to(compute_dtype)) * sm_scale   # [H, L, S]
    h_idx = heads.to(q.device)[:, None, None]
    qi, ki = q_pos.to(q.device)[None, :, None], kv_pos.to(q.device)[None, None, :]
    if alibi_slopes is not None:
        s = s + alibi_slopes.to(q.device, compute_dtype)[heads][:, None, None] * (ki - qi).to(compute_dtype)
    if logits_soft_cap > 0:
        s = logits_soft_cap * torch.tanh(s / logits_soft_cap)
    b_idx = torch.tensor(b, device=q.device)
    if score_mod is not None:
        with _default_dtype(compute_dtype):  # int index tensor * Python float stays in compute_dtype
            s = torch.as_tensor(score_mod(s, b_idx, h_idx, qi, ki), dtype=compute_dtype, device=q.device)
        s = s.expand(H, L, S)
    mask = torch.ones(1, L, S, dtype=torch.bool, device=q.device)
    if causal:
        mask = mask & (ki <= qi)
    if window_left >= 0:
        mask = mask & (ki >= qi - window_left)
    if keep is not None:
        mask = mask & keep.to(q.device)[None]
    if mask_mod is not None:
        with _default_dtype(compute_dtype):
            mask = mask & torch.as_tensor(mask_mod(b_idx, h_idx, qi, ki), device=q.device).bool()
    if not softmax:                                                       # sigmoid attention
        p = torch.where(mask, torch.sigmoid(s), 0.0)
        return torch.einsum("hls,shd->lhd", p, v.to(compute_dtype)), torch.log(p.sum(-1)).transpose(0, 1)
    s = s.masked_fill(~mask, float("-inf"))
    row_lse = torch.logsumexp(s, dim=-1)                                  # [H, L]
    empty = torch.isinf(row_lse)
    p = torch.exp(s - torch.where(empty, 0.0, row_lse)[..., None])
    p = torch.where(empty[..., None], 0.0, p)
    return torch.einsum("hls,shd->lhd", p, v.to(compute_dtype)), row_lse.transpose(0, 1)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _split_custom_mask(custom_mask, qo: list[int], kv: list[int], device) -> list[torch.Tensor] | None:
    if custom_mask is None:
        return None
    batch = len(qo) - 1
    shapes = [(qo[b + 1] - qo[b], kv[b + 1] - kv[b]) for b in range(batch)]
    parts_in = [custom_mask] if isinstance(custom_mask, torch.Tensor) else list(custom_mask)
    for m in parts_in:
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
            raise InputError(f"custom_mask: expected torch.bool tensors (True = keep), got "
                             f"{m.dtype if isinstance(m, torch.Tensor) else type(m).__name__}; convert an additive "
                             "float mask with `mask == 0`")
    if isinstance(custom_mask, torch.Tensor):
        want = sum(a * c for a, c in shapes)
        if custom_mask.dim() != 1 or custom_mask.numel() != want:
            raise InputError(f"custom_mask: expected the flat layout [sum(qo_len * kv_len)] = [{want}], "
                             f"got shape {tuple(custom_mask.shape)}")
        parts, start = [], 0
        for a, c in shapes:
            parts.append(custom_mask[start:start + a * c].reshape(a, c))
            start += a * c
    else:
        parts = list(custom_mask)
        if len(parts) != batch:
            raise InputError(f"custom_mask: expected {batch} per-request masks, got {len(parts)}")
        for b, (m, shp) in enumerate(zip(parts, shapes)):
            if tuple(m.shape) != shp:
                raise InputError(f"custom_mask[{b}]: expected shape [qo_len, kv_len] = {list(shp)}, "
                                 f"got {tuple(m.shape)}")
    return [m.to(device=device) for m in parts]
