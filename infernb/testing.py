"""The one place where "close enough" is defined.

Every fast path is checked against ``infernb.reference`` computed in float64 (or float32) on fresh random
inputs, with outputs poisoned (NaN) before the run. The error is ``||out - ref|| / ||ref||`` over all
elements, in float64; a NaN anywhere fails. Tolerances depend on the *input* dtype the fast path used:

=========  =========  ==============================================================
dtype      tolerance  why
=========  =========  ==============================================================
float64    1e-12      same math, different summation order
float32    2e-5       fp32 accumulation over up to ~10^5 terms
float16    3e-3       10-bit mantissa operands and outputs, fp32 accumulation
bfloat16   1e-2       7-bit mantissa operands and outputs, fp32 accumulation
=========  =========  ==============================================================
"""
from __future__ import annotations

import math

import torch

TOLERANCE: dict[torch.dtype, float] = {
    torch.float64: 1e-12,
    torch.float32: 2e-5,
    torch.float16: 3e-3,
    torch.bfloat16: 1e-2,
}


def tolerance(dtype: torch.dtype) -> float:
    """Relative-error tolerance for results computed from ``dtype`` inputs (see the module table)."""
    try:
        return TOLERANCE[dtype]
    except KeyError:
        raise ValueError(f"no tolerance defined for dtype {dtype}; expected one of {list(TOLERANCE)}") from None


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref||_2 / ||ref||_2`` in float64. NaN in ``out`` gives ``inf``; ``ref == 0`` gives ``||out||``.

    Elements where both are the same infinity (e.g. LSE = -inf of an empty row) count as equal.
    """
    if out.shape != ref.shape:
        raise ValueError(f"shape mismatch: out {tuple(out.shape)} vs ref {tuple(ref.shape)}")
    o = out.detach().to("cpu", torch.float64)
    r = ref.detach().to("cpu", torch.float64)
    if torch.isnan(o).any() or torch.isnan(r).any():
        return math.inf
    same_inf = torch.isinf(o) & torch.isinf(r) & (torch.sign(o) == torch.sign(r))
    if (torch.isinf(o) ^ torch.isinf(r)).any() or (torch.isinf(o) & ~same_inf).any():
        return math.inf
    o = torch.where(same_inf, 0.0, o)
    r = torch.where(same_inf, 0.0, r)
    den = torch.linalg.vector_norm(r).item()
    num = torch.linalg.vector_norm(o - r).item()
    return num / den if den > 0 else num


def max_row_error(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, int]:
    """Worst :func:`rel_error` over rows (all dims but the last), and that row's flat index. A whole-tensor
    norm can hide one bad row among many good ones; this cannot. Same NaN/infinity rules as :func:`rel_error`."""
    if out.shape != ref.shape:
        raise ValueError(f"shape mismatch: out {tuple(out.shape)} vs ref {tuple(ref.shape)}")
    width = out.shape[-1] if out.dim() else 1
    o = out.detach().to("cpu", torch.float64).reshape(-1, width)
    r = ref.detach().to("cpu", torch.float64).reshape(-1, width)
    if o.shape[0] == 0:
        return 0.0, 0
    same_inf = torch.isinf(o) & torch.isinf(r) & (torch.sign(o) == torch.sign(r))
    broken = (torch.isnan(o) | torch.isnan(r) | ((torch.isinf(o) | torch.isinf(r)) & ~same_inf)).any(1)
    o, r = torch.where(same_inf, 0.0, o), torch.where(same_inf, 0.0, r)
    num = torch.linalg.vector_norm(o - r, dim=1)
    den = torch.linalg.vector_norm(r, dim=1)
    err = torch.where(den > 0, num / torch.where(den > 0, den, 1.0), num)
    err = torch.where(broken, math.inf, err)
    worst = int(torch.argmax(err))
    return float(err[worst]), worst


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype | None = None, *,
                 tol: float | None = None, name: str = "output", rowwise: bool = False) -> float:
    """Assert ``rel_error(out, ref) <= tol`` (default: ``tolerance(dtype or out.dtype)``); return the error.

    ``rowwise=True`` also asserts it for every row on its own (:func:`max_row_error`), so a single wrong
    row (one token/head) cannot hide in the whole-tensor norm.
    """
    tol = tolerance(dtype or out.dtype) if tol is None else tol
    err = rel_error(out, ref)
    if not err <= tol:
        raise AssertionError(f"{name}: relative error {err:.3e} > tolerance {tol:.1e} "
                             f"(shape {tuple(out.shape)}, dtype {dtype or out.dtype})")
    if rowwise:
        row_err, row = max_row_error(out, ref)
        if not row_err <= tol:
            raise AssertionError(f"{name}: row {row} has relative error {row_err:.3e} > tolerance {tol:.1e} "
                                 f"(whole tensor {err:.3e}; shape {tuple(out.shape)})")
    return err


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill ``t`` with NaN (floating) or -1 (integer) in place, so an unwritten element shows up."""
    if t.is_floating_point():
        return t.fill_(float("nan"))
    return t.fill_(-1)


def poisoned_like(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``torch.empty_like`` filled with NaN."""
    return poison_(torch.empty_like(t, dtype=dtype))
