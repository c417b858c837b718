"""Compile latency of :mod:`infernb.jit`, per kernel specialization (``benchmarks/bench_jit.py`` writes the JSON).

cold: :func:`infernb.jit.build` with an empty disk cache (NVRTC compile + cache write), in a process where CuPy is
      already imported (its import is not compile latency).
warm: ``build`` in a fresh memory cache with the disk entry present (read + checksum), plus loading the module onto
      the GPU and fetching each function (``cuModuleLoadData``) when there is a GPU.

Wall-clock times (``time.perf_counter``); runs without a GPU (NVRTC compiles for the default architecture).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import shutil
import statistics
import tempfile
import time

import torch

#: issue 2's targets on the GPU machine, per specialization
TARGETS = dict(cold_s=3.0, warm_ms=50.0)


@contextlib.contextmanager
def _empty_kernel_cache():
    """``INFERNB_CACHE_DIR`` pointed at a new empty folder for the duration (removed afterwards, the previous value
    restored)."""
    old = os.environ.get("INFERNB_CACHE_DIR")
    tmp = tempfile.mkdtemp(prefix="infernb-bench-jit-")
    os.environ["INFERNB_CACHE_DIR"] = tmp
    try:
        yield tmp
    finally:
        if old is None:
            os.environ.pop("INFERNB_CACHE_DIR", None)
        else:
            os.environ["INFERNB_CACHE_DIR"] = old
        shutil.rmtree(tmp, ignore_errors=True)


def jit_row(kernel, cold_s: float, warm_s: list[float]) -> dict:
    """One specialization's row: ``{spec, arch, cold_s, nvrtc_s, warm_ms, registers, spills}`` from the built
    ``kernel`` (its :class:`~infernb.jit.CompileReport`), the cold build's seconds and the warm builds' seconds
    (their median, in milliseconds). ``registers``: per entry point; ``spills``: stores + loads of all of them."""
    r = kernel.report
    return dict(spec=kernel.spec.name, arch=kernel.arch, cold_s=round(cold_s, 4), nvrtc_s=round(r.compile_seconds, 4),
                warm_ms=round(statistics.median(warm_s) * 1e3, 3),
                registers={x.name: x.registers for x in r.kernels},
                spills=sum(x.spill_stores + x.spill_loads for x in r.kernels))


def jit_benchmark(specs=None, *, warm_runs: int = 5, progress: bool = False) -> dict:
    """Cold and warm build time of each of ``specs`` (default: :func:`infernb.ops.kernel_specializations`, every
    specialization the library generates), in a new empty disk cache (removed afterwards).

    Each spec: one cold build (asserted a cache miss), then ``warm_runs`` warm builds (asserted cache hits) with the
    memory cache cleared before each; on a GPU a warm build also loads every entry point and synchronizes.
    ``progress``: a progress bar over the specs.

    Returns ``{benchmark: "jit_compile_latency", device, arch, date, host, nvrtc, targets, rows, max_cold_s,
    max_warm_ms}``, rows as :func:`jit_row` makes them (seconds / milliseconds).
    """
    import cupy  # noqa: F401  (import cost is not compile latency)
    from tqdm.auto import tqdm

    from .. import jit
    from ..device import device_info

    if specs is None:
        from ..ops import kernel_specializations
        specs = kernel_specializations()
    info = device_info()
    rows = []
    with _empty_kernel_cache():
        for spec in tqdm(list(specs), desc="jit builds", disable=not progress):
            jit.clear_memory_cache()
            t0 = time.perf_counter()
            k = jit.build(spec)
            cold = time.perf_counter() - t0
            if k.report.cache_hit:
                raise RuntimeError(f"{spec.name}: the cold build hit the disk cache (a spec listed twice?)")
            warms = []
            for _ in range(warm_runs):
                jit.clear_memory_cache()
                t0 = time.perf_counter()
                k = jit.build(spec)
                if info.has_cuda:
                    for name in k.lowered:
                        k.function(name)
                    torch.cuda.synchronize()
                warms.append(time.perf_counter() - t0)
                if not k.report.cache_hit:
                    raise RuntimeError(f"{spec.name}: a warm build missed the disk cache (did a file under kernels/ "
                                       "change during the run?)")
            rows.append(jit_row(k, cold, warms))
    return dict(benchmark="jit_compile_latency", device=info.name, arch=info.arch,
                date=dt.date.today().isoformat(), host=platform.node(), nvrtc=list(jit.nvrtc_version()),
                targets=dict(TARGETS), rows=rows,
                max_cold_s=max(r["cold_s"] for r in rows), max_warm_ms=max(r["warm_ms"] for r in rows))


def jit_summary(result: dict) -> str:
    """A :func:`jit_benchmark` result as text: cold seconds and warm milliseconds per spec, then the maxima against
    the targets."""
    lines = [f"{'spec':<28} {'cold s':>7} {'warm ms':>8}"]
    lines += [f"{r['spec']:<28} {r['cold_s']:>7.3f} {r['warm_ms']:>8.2f}" for r in result["rows"]]
    t = result["targets"]
    lines.append(f"device {result['device']} ({result['arch']}); max cold {result['max_cold_s']:.3f} s (target "
                 f"{t['cold_s']:g}), max warm {result['max_warm_ms']:.2f} ms (target {t['warm_ms']:g})")
    return "\n".join(lines)
