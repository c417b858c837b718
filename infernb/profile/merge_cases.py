"""LSE-merge bandwidth (``benchmarks/bench_merge.py`` lists the cases and writes the JSON): infernb's merge kernel,
the eager reference in fp32 (torch) and FlashInfer's ``merge_states`` when installed, each checked against the
float64 reference (:func:`infernb.reference.merge_states`) before it is timed (:func:`~infernb.profile.cuda_time`:
CUDA events, median, L2 flushed). Bytes counted: every input state read once (``v`` and ``s``) and the merged output
written once. The inputs, the paths and their checks run on any device (the tests run them on the CPU, where
``infernb.merge_states`` is the reference); the timing needs CUDA."""
from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable

import torch

from ._optional import optional_flashinfer
from .timing import Timing, cuda_time, device_name

#: the timed paths, in the order the summary lists them
MERGE_PATHS = ("infernb", "torch_eager_fp32", "flashinfer")


def merge_inputs(seq_len: int, num_states: int, num_heads: int, head_dim: int, *, generator: torch.Generator,
                 dtype: torch.dtype = torch.bfloat16, device="cuda") -> tuple[torch.Tensor, torch.Tensor]:
    """Random partial states drawn from ``generator`` on ``device``: ``v [seq_len, num_states, num_heads, head_dim]``
    in ``dtype`` and their LSEs ``s [seq_len, num_states, num_heads]`` fp32 (standard normal x 4)."""
    v = torch.randn(seq_len, num_states, num_heads, head_dim, device=device, generator=generator).to(dtype)
    s = torch.randn(seq_len, num_states, num_heads, device=device, generator=generator) * 4
    return v, s


def merge_bytes(v: torch.Tensor, s: torch.Tensor) -> int:
    """Bytes a merge of ``v`` / ``s`` moves at least: the states read once, the merged ``v`` (``v``'s dtype) and LSE
    (fp32) written once."""
    n, _, h, d = v.shape
    return v.numel() * v.element_size() + s.numel() * 4 + n * h * d * v.element_size() + n * h * 4


def merge_paths(v: torch.Tensor, s: torch.Tensor, flashinfer=None) -> dict[str, Callable]:
    """``{path: call}``, each call returning the merged ``(v [seq_len, num_heads, head_dim], lse [seq_len,
    num_heads])`` with a natural-log LSE: ``infernb`` (:func:`infernb.merge_states`), ``torch_eager_fp32`` (the
    reference in fp32) and, with the ``flashinfer`` module given, ``flashinfer`` (its LSE is base 2: converted on the
    way in and out)."""
    from .. import reference
    from ..ops import merge_states

    paths = {
        "infernb": lambda: merge_states(v, s),
        "torch_eager_fp32": lambda: reference.merge_states(v, s, compute_dtype=torch.float32),
    }
    if flashinfer is not None:
        s2 = s * (1 / math.log(2))  # FlashInfer's LSE is base 2
        paths["flashinfer"] = lambda: (lambda o: (o[0], o[1] * math.log(2)))(flashinfer.merge_states(v, s2))
    return paths


def check_merge_path(name: str, fn: Callable, ref_v: torch.Tensor, ref_s: torch.Tensor, dtype: torch.dtype) -> dict:
    """Run ``fn`` once (synchronizing on CUDA) and check its merged ``v`` (tolerance of ``dtype``) and LSE (fp32's)
    against the float64 reference; raises ``AssertionError`` beyond tolerance. Returns ``{<name>_err_v,
    <name>_err_lse}`` (relative errors)."""
    from ..testing import assert_close

    ov, os_ = fn()
    if ov.is_cuda:
        torch.cuda.synchronize()
    return {f"{name}_err_v": assert_close(ov.float(), ref_v, dtype, name=f"{name} v"),
            f"{name}_err_lse": assert_close(os_.float(), ref_s, torch.float32, name=f"{name} lse")}


def merge_timing_fields(name: str, t: Timing, nbytes: int) -> dict:
    """A path's timing as JSON fields: ``<name>_ms`` (median), ``_p10_ms``, ``_p90_ms`` and ``_TBps`` (``nbytes`` at
    the median)."""
    return {f"{name}_ms": t.median_ms, f"{name}_p10_ms": t.p10_ms, f"{name}_p90_ms": t.p90_ms,
            f"{name}_TBps": nbytes / (t.median_ms * 1e-3) / 1e12}


def merge_benchmark(cases, *, dtype: torch.dtype = torch.bfloat16, warmup: int = 10, runs: int = 50,
                    flashinfer: bool = True, seed: int = 0, device="cuda", timer: Callable = cuda_time) -> dict:
    """Time every merge path on each case ``(seq_len, num_states, num_heads, head_dim)`` of ``cases`` on the GPU
    (inputs from one generator seeded ``seed``, in case order). Per path, in turn: :func:`check_merge_path`, then
    :func:`~infernb.profile.cuda_time` (``warmup``, ``runs``). ``flashinfer``: include it when installed. ``device``
    and ``timer`` (called as ``timer(fn, warmup=, runs=)``, returning a :class:`~infernb.profile.Timing`) are for the
    tests: on the CPU with a stand-in timer they run everything but the GPU timing.

    Returns ``{benchmark: "merge_states", device, date, torch, flashinfer, rows}``, one row per case: ``{seq_len,
    num_states, num_heads, head_dim, dtype, bytes}`` and per path ``_err_v``, ``_err_lse``, ``_ms``, ``_p10_ms``,
    ``_p90_ms``, ``_TBps``.
    """
    from .. import reference

    fi = optional_flashinfer() if flashinfer else None
    gen = torch.Generator(device=device).manual_seed(seed)
    rows = []
    for n, k, h, d in cases:
        v, s = merge_inputs(n, k, h, d, generator=gen, dtype=dtype, device=device)
        nbytes = merge_bytes(v, s)
        ref_v, ref_s = reference.merge_states(v, s, compute_dtype=torch.float64)
        row = dict(seq_len=n, num_states=k, num_heads=h, head_dim=d, dtype=str(dtype), bytes=nbytes)
        for name, fn in merge_paths(v, s, fi).items():
            row.update(check_merge_path(name, fn, ref_v, ref_s, dtype))
            row.update(merge_timing_fields(name, timer(fn, warmup=warmup, runs=runs), nbytes))
        rows.append(row)
    return dict(benchmark="merge_states", device=device_name(), date=dt.date.today().isoformat(),
                torch=torch.__version__, flashinfer=getattr(fi, "__version__", None), rows=rows)


def merge_summary(result: dict) -> str:
    """A :func:`merge_benchmark` result as text: per case, each path's TB/s and microseconds, and FlashInfer's time
    over infernb's when it ran."""
    rows = result["rows"]
    names = [p for p in MERGE_PATHS if f"{p}_ms" in rows[0]]
    lines = [f"{'case (n,k,h,d)':<24}" + "".join(f"{p + ' TB/s':>22}" for p in names) +
             ("  infernb/flashinfer" if "flashinfer" in names else "")]
    for r in rows:
        line = f"{(r['seq_len'], r['num_states'], r['num_heads'], r['head_dim'])!s:<24}"
        line += "".join(f"{r[p + '_TBps']:>13.2f} {r[p + '_ms'] * 1e3:>6.1f}us" for p in names)
        if "flashinfer" in names:
            line += f"  {r['flashinfer_ms'] / r['infernb_ms']:>8.2f}x"
        lines.append(line)
    lines.append(f"device {result['device']}")
    return "\n".join(lines)
