"""Shared argument handling for the public ops."""
from __future__ import annotations

import torch

from ..errors import InputError
from ..jit.build import _cupy  # noqa: F401  (re-exported for ops that launch)

DTYPE_NAMES = {torch.float16: "f16", torch.bfloat16: "bf16", torch.float32: "f32"}
CUDA_TYPES = {torch.float16: "half", torch.bfloat16: "__nv_bfloat16", torch.float32: "float"}
HEAD_DIMS = (64, 128, 256)


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
