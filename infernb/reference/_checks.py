"""Argument checks shared by the reference functions: fail early, name the argument."""
from __future__ import annotations

import torch

from ..errors import InputError


def check_tensor(name: str, t, *, ndim: int | None = None, dims: str = "", floating: bool | None = None,
                 dtype: torch.dtype | None = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise InputError(f"{name}: expected a torch.Tensor {dims}, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise InputError(f"{name}: expected {ndim} dims {dims}, got shape {tuple(t.shape)}")
    if floating is True and not t.is_floating_point():
        raise InputError(f"{name}: expected a floating dtype, got {t.dtype}")
    if floating is False and t.is_floating_point():
        raise InputError(f"{name}: expected an integer dtype, got {t.dtype}")
    if dtype is not None and t.dtype != dtype:
        raise InputError(f"{name}: expected dtype {dtype}, got {t.dtype}")
    return t


def check_indptr(name: str, indptr, total: int | None = None, *, total_name: str = "") -> list[int]:
    """Validate a CSR-style indptr (1-D int, starts at 0, non-decreasing, ends at ``total``)."""
    if not isinstance(indptr, torch.Tensor):
        indptr = torch.as_tensor(indptr)
    check_tensor(name, indptr, ndim=1, dims="[batch_size + 1]", floating=False)
    if indptr.numel() < 1:
        raise InputError(f"{name}: expected at least one element ([batch_size + 1]), got an empty tensor")
    vals = indptr.tolist()
    if vals[0] != 0:
        raise InputError(f"{name}: must start at 0, got {vals[0]}")
    for i in range(len(vals) - 1):
        if vals[i + 1] < vals[i]:
            raise InputError(f"{name}: must be non-decreasing, but {name}[{i + 1}] = {vals[i + 1]} < "
                             f"{name}[{i}] = {vals[i]} (request {i} has a negative length)")
    if total is not None and vals[-1] != total:
        raise InputError(f"{name}: last element {vals[-1]} must equal {total_name} = {total}")
    return vals
