"""The decode kernel's per-CTA timeline: when each CTA started, got its first keys, finished streaming, ended, and
when it merged a split unit. The kernel records it when built with ``-DINFERNB_DECODE_TRACE=<max CTAs>``
(``kernels/include/infernb/decode.cuh``): 16 x u64 per CTA, its global timer at start and end and clock deltas of
its phases. :func:`decode_trace` captures one launch on the GPU; :func:`trace_phases` turns the raw rows into
microseconds (CPU); ``ib.viz.cta_timeline`` draws them.
"""
from __future__ import annotations

import numpy as np
import torch

TRACE_MAX = 4096          # CTAs the trace build records (the -D value)
PHASES = ("start", "first_data", "stream_end", "end", "merge_start", "merge_end")


def trace_phases(raw: np.ndarray) -> dict:
    """Per-CTA phases of a raw trace ``[num_ctas, 16]`` (uint64), in microseconds from the first CTA's start.

    Returns ``dict(start, first_data, stream_end, end, merge_start, merge_end [num_ctas] float (merge_*: NaN where
    the CTA merged no split unit), sm, items [num_ctas] int, clock_mhz, span_us)``: first_data = its first keys
    landed, stream_end = every warp done with its last item's keys, merge = the last split unit it merged.
    Rows of CTAs that did not run (all zero) are dropped."""
    t = np.asarray(raw, dtype=np.uint64)
    t = t[t[:, 0] > 0].astype(np.float64)
    if not len(t):
        raise ValueError("trace: no CTA recorded (was the kernel built with -DINFERNB_DECODE_TRACE?)")
    base = t[:, 0].min()
    start, end = (t[:, 0] - base) / 1e3, (t[:, 1] - base) / 1e3
    clk = float(np.median(t[:, 10] / np.maximum(t[:, 1] - t[:, 0], 1) * 1e3))   # clocks per microsecond

    def at(col):
        return start + t[:, col] / clk

    merged = t[:, 4] > 0
    info = t[:, 11].astype(np.uint64)
    return dict(start=start, first_data=at(2), stream_end=at(6), end=end,
                merge_start=np.where(merged, at(4), np.nan), merge_end=np.where(merged, at(5), np.nan),
                sm=(info & np.uint64(0xFFFFFFFF)).astype(np.int64), items=(info >> np.uint64(32)).astype(np.int64),
                clock_mhz=clk, span_us=float(end.max()))


def trace_summary(ph: dict) -> dict:
    """Percentiles (0, 50, 90, 100) of each phase's time, and the merges' durations (µs)."""
    pct = lambda x: [round(float(v), 2) for v in np.percentile(x, (0, 50, 90, 100))] if len(x) else []  # noqa: E731
    m = ~np.isnan(ph["merge_start"])
    return dict(ctas=len(ph["start"]), clock_mhz=round(ph["clock_mhz"], 1), span_us=round(ph["span_us"], 2),
                first_data=pct(ph["first_data"] - ph["start"]), stream_end=pct(ph["stream_end"]), end=pct(ph["end"]),
                end_after_stream=pct(ph["end"] - ph["stream_end"]), merges=int(m.sum()),
                merge_us=pct((ph["merge_end"] - ph["merge_start"])[m]))


def decode_trace(plan, cache, page_table, q: torch.Tensor, *, repeats: int = 3, **runner_kw) -> np.ndarray:
    """Raw per-CTA trace ``[plan.num_ctas, 16]`` (uint64) of one decode launch on the GPU (after an L2 flush; the
    last of ``repeats`` launches, the first ones warm up). Builds its own runner with the trace compiled in
    (``runner_kw`` as for :class:`~infernb.ops.paged_decode.DecodeRunner`). The trace build is slower to compile
    and slightly slower to run; its timeline is for reading phases, not for timing."""
    from ..ops.paged_decode import DecodeRunner

    if plan.num_ctas > TRACE_MAX:
        raise ValueError(f"trace: the plan has {plan.num_ctas} CTAs, the trace build records {TRACE_MAX}")
    extra = tuple(runner_kw.pop("extra_options", ())) + (f"-DINFERNB_DECODE_TRACE={TRACE_MAX}",)
    runner = DecodeRunner(plan, cache, page_table, extra_options=extra, **runner_kw)
    buf = runner.kernel.global_array("infernb_decode_trace", TRACE_MAX * 16, np.uint64, q.device.index)
    flush = torch.empty(256 * 2**20, dtype=torch.uint8, device=q.device)
    for _ in range(repeats):
        buf.fill(0)
        flush.zero_()
        torch.cuda.synchronize(q.device)
        runner(q)
        torch.cuda.synchronize(q.device)
    return buf.get().reshape(TRACE_MAX, 16)[:plan.num_ctas]
