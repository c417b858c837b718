"""Llama-style rotary position embedding (RoPE), reference implementation.

Frequencies follow FlashInfer/Llama: for pair index ``i`` in ``[0, rotary_dim / 2)``,
``freq_i = theta ** (-2 i / rotary_dim) / scale`` and the angle of a token at position ``p`` is ``p * freq_i``.
Two layouts of the rotated pairs:

- ``interleave=False`` (Llama / GPT-NeoX, "half rotated"): pairs ``(x[i], x[i + rotary_dim/2])``;
- ``interleave=True`` (GPT-J): pairs ``(x[2i], x[2i + 1])``.
"""
from __future__ import annotations

import dataclasses

import torch

from ..errors import InputError


@dataclasses.dataclass(frozen=True)
class RoPE:
    """RoPE parameters.

    Args:
        theta: base of the frequencies (Llama 2: 1e4, Llama 3: 5e5).
        scale: linear position interpolation factor (positions are divided by it).
        interleave: GPT-J pairing instead of Llama's half rotation.
        rotary_dim: leading dims that rotate (default: the whole head dim).
    """

    theta: float = 1e4
    scale: float = 1.0
    interleave: bool = False
    rotary_dim: int | None = None

    def __post_init__(self):
        if not self.theta > 0:
            raise InputError(f"RoPE.theta: expected > 0, got {self.theta}")
        if not self.scale > 0:
            raise InputError(f"RoPE.scale: expected > 0, got {self.scale}")
        if self.rotary_dim is not None and (self.rotary_dim <= 0 or self.rotary_dim % 2):
            raise InputError(f"RoPE.rotary_dim: expected a positive even number, got {self.rotary_dim}")


def apply_rope(x: torch.Tensor, positions: torch.Tensor, rope: RoPE = RoPE(), *,
               compute_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Rotate ``x`` by its tokens' positions.

    Args:
        x: ``[num_tokens, num_heads, head_dim]`` any float dtype.
        positions: ``[num_tokens]`` integer (or float) positions.
        rope: the RoPE parameters.
    Returns:
        ``[num_tokens, num_heads, head_dim]`` in ``compute_dtype``.
    """
    if x.dim() != 3:
        raise InputError(f"x: expected [num_tokens, num_heads, head_dim], got shape {tuple(x.shape)}")
    if positions.shape != (x.shape[0],):
        raise InputError(f"positions: expected shape [{x.shape[0]}] (one per token of x), got {tuple(positions.shape)}")
    d = x.shape[-1]
    rd = rope.rotary_dim or d
    if rd > d:
        raise InputError(f"RoPE.rotary_dim = {rd} exceeds head_dim = {d}")
    x = x.to(compute_dtype)
    half = rd // 2
    i = torch.arange(half, device=x.device, dtype=compute_dtype)
    freq = rope.theta ** (-2.0 * i / rd) / rope.scale                      # [half]
    ang = positions.to(device=x.device, dtype=compute_dtype)[:, None] * freq  # [T, half]
    cos, sin = torch.cos(ang)[:, None, :], torch.sin(ang)[:, None, :]       # [T, 1, half]
    out = x.clone()
    if rope.interleave:
        a, b = x[..., 0:rd:2], x[..., 1:rd:2]
        out[..., 0:rd:2] = a * cos - b * sin
        out[..., 1:rd:2] = b * cos + a * sin
    else:
        a, b = x[..., :half], x[..., half:rd]
        out[..., :half] = a * cos - b * sin
        out[..., half:rd] = b * cos + a * sin
    return out
