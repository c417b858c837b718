"""Honest GPU timing: warm up first, flush L2 between runs, time each run with CUDA events, report the
median and spread (Triton's ``do_bench`` and llm.c's ``benchmark_kernel`` do the same)."""
from __future__ import annotations

import dataclasses
import statistics
from typing import Callable

import torch


@dataclasses.dataclass(frozen=True)
class Timing:
    """Milliseconds per call: median, 10th and 90th percentile over ``runs`` timed calls."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def cuda_time(fn: Callable[[], object], *, warmup: int = 10, runs: int = 50, flush_l2: bool = True) -> Timing:
    """Time ``fn()`` on the current CUDA stream.

    Each timed call is preceded (outside the events) by a write of 256 MiB so that inputs are not served
    from L2 (50 MiB on H100) unless ``flush_l2=False``.
    """
    return cuda_time_interleaved({"fn": fn}, warmup=warmup, runs=runs, flush_l2=flush_l2)["fn"]


def cuda_time_interleaved(fns: dict[str, Callable[[], object]], *, warmup: int = 10, runs: int = 50,
                          flush_l2: bool = True) -> dict[str, Timing]:
    """:func:`cuda_time` of several ``{name: fn}`` in rounds (each round times every fn once, in turn), so that
    drifting clocks or temperature weigh on all of them alike instead of on whichever ran last. Returns
    ``{name: Timing}``. Use it to compare paths (ratios); each call is preceded by the L2 flush, as in cuda_time."""
    if not torch.cuda.is_available():
        raise RuntimeError("CUDA timing needs a CUDA device")
    flush = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda") if flush_l2 else None
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    torch.cuda.synchronize()
    ev = {k: [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(runs)]
          for k in fns}
    for i in range(runs):
        for k, fn in fns.items():
            if flush is not None:
                flush.zero_()
            ev[k][i][0].record()
            fn()
            ev[k][i][1].record()
    torch.cuda.synchronize()
    out = {}
    for k in fns:
        ms = sorted(a.elapsed_time(b) for a, b in ev[k])
        q = statistics.quantiles(ms, n=10) if len(ms) >= 2 else [ms[0]] * 9
        out[k] = Timing(statistics.median(ms), q[0], q[-1], runs)
    return out


def cuda_graph_time(fn: Callable[[], object], *, runs: int = 20, flush_l2: bool = True) -> Timing:
    """Time ``fn()`` captured once in a CUDA graph and replayed (:func:`cuda_time` of the replay): the GPU time
    without the host's Python per call. ``fn`` runs once on the capture stream first (warm-up)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=s):
        fn()
    return cuda_time(g.replay, warmup=5, runs=runs, flush_l2=flush_l2)
