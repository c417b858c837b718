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


# ---------------------------------------------------------------------------------------------- the Hopper kernel
#: the Hopper prefill kernel's trace build (``-DINFERNB_SM90_TRACE=<CTAs>``, prefill_sm90.cuh): per CTA a header of
#: SM90_TR_HEADER u64 and, for each role (producer, consumer 0, consumer 1) and each of its first SM90_TR_BLOCKS
#: blocks, SM90_TR_SLOTS clock64 stamps
SM90_TR_BLOCKS, SM90_TR_SLOTS, SM90_TR_HEADER = 256, 8, 8
SM90_TR_CTA = SM90_TR_HEADER + 3 * SM90_TR_BLOCKS * SM90_TR_SLOTS
SM90_ROLES = ("producer", "consumer 0", "consumer 1")
#: the segments drawn per role: (name, from slot, to slot) of the same block (the consumers' "waiting for P V" spans
#: two blocks: sm90_trace_phases)
SM90_SEGMENTS = {
    "producer": (("waiting for a free stage", 0, 1), ("issuing the block's loads", 1, 2),
                 ("copies in flight (paged)", 2, 3)),
    "consumer": (("waiting for K/V", 0, 1), ("waiting for its turn", 1, 2), ("S = Q K^T in flight", 2, 3),
                 ("softmax", 3, 4), ("epilogue", 6, 7)),
}


def sm90_trace(plan, q: torch.Tensor, k=None, v=None, *, cache=None, page_table=None, ctas: int = 8,
               repeats: int = 3, **runner_kw) -> np.ndarray:
    """Raw trace ``[ctas, SM90_TR_CTA]`` (uint64) of one launch of the Hopper prefill kernel on the GPU (after an L2
    flush; the last of ``repeats``), its first ``ctas`` CTAs recorded. Builds its own
    :class:`~infernb.ops.PrefillRunner` (``backend="sm90"``, ``runner_kw`` as for it) with the trace compiled in:
    slower to compile, slightly slower to run; for reading the warpgroups' phases, not for timing."""
    from ..ops.prefill import PrefillRunner

    runner = PrefillRunner(plan, cache, page_table, backend="sm90",
                           extra_options=(f"-DINFERNB_SM90_TRACE={int(ctas)}",), **runner_kw)
    buf = runner._sm90.kernel.global_array("infernb_sm90_trace", ctas * SM90_TR_CTA, np.uint64, q.device.index)
    flush = torch.empty(256 * 2**20, dtype=torch.uint8, device=q.device)
    for _ in range(repeats):
        buf.fill(0)
        flush.zero_()
        torch.cuda.synchronize(q.device)
        runner(q, k, v) if cache is None else runner(q, cache=cache)
        torch.cuda.synchronize(q.device)
    return buf.get().reshape(ctas, SM90_TR_CTA)


def sm90_trace_phases(raw: np.ndarray) -> list[dict]:
    """Each recorded CTA's warpgroup timelines from a raw :func:`sm90_trace`, in microseconds from the CTA's start
    (CPU). Returns ``[dict(cta, sm, items, clock_mhz, span_us, roles={role: {segment: [[t0, t1], ...]}})]`` with the
    segments of :data:`SM90_SEGMENTS` per recorded block, and per consumer ``"waiting for P V"``: from the softmax's
    end to the end of the P V it waits for (the previous block's, in the overlapped schedule; the block's own at an
    item's last block and without overlap). CTAs that did not run (zero header) are dropped."""
    raw = np.asarray(raw, dtype=np.uint64)
    out = []
    for cta, row in enumerate(raw):
        h = row[:SM90_TR_HEADER].astype(np.float64)
        if h[0] == 0:
            continue
        gt0, clk0, info = h[0], h[1], int(row[2])
        gt1, clk1 = h[4], h[5]
        mhz = (clk1 - clk0) / max(gt1 - gt0, 1.0) * 1e3 if gt1 > gt0 else float("nan")
        st = row[SM90_TR_HEADER:].reshape(3, SM90_TR_BLOCKS, SM90_TR_SLOTS).astype(np.float64)
        us = np.where(st > 0, (st - clk0) / mhz, np.nan)
        roles = {}
        for r, name in enumerate(SM90_ROLES):
            segs = {}
            kind = "producer" if r == 0 else "consumer"
            for label, a, b in SM90_SEGMENTS[kind]:
                x0, x1 = us[r, :, a], us[r, :, b]
                ok = ~np.isnan(x0) & ~np.isnan(x1)
                segs[label] = np.stack([x0[ok], x1[ok]], axis=1).round(4).tolist()
            if kind == "consumer":
                soft, pv, last = us[r, :, 4], us[r, :, 5], ~np.isnan(us[r, :, 6])
                nxt = np.r_[soft[1:], np.nan]                  # the next block's softmax end
                start = np.where(last | np.isnan(nxt), soft, nxt)
                ok = ~np.isnan(start) & ~np.isnan(pv) & (pv >= start)
                segs["waiting for P V"] = np.stack([start[ok], pv[ok]], axis=1).round(4).tolist()
            roles[name] = segs
        out.append(dict(cta=cta, sm=info & 0xFFFFFFFF, items=info >> 32, clock_mhz=round(mhz, 1),
                        span_us=round(float((clk1 - clk0) / mhz), 3) if clk1 > clk0 else float("nan"), roles=roles))
    if not out:
        raise ValueError("trace: no CTA recorded (was the kernel built with -DINFERNB_SM90_TRACE?)")
    return out


def sm90_trace_summary(ctas: list[dict]) -> dict:
    """Per role, each segment's share of the recorded time (from each CTA's start to its last recorded stamp: the
    trace holds a CTA's first SM90_TR_BLOCKS blocks), summed over the recorded CTAs: where the warpgroups' time
    goes."""
    tot = {}
    span = 0.0
    for c in ctas:
        span += max((b for segs in c["roles"].values() for xs in segs.values() for _, b in xs), default=0.0)
        for role, segs in c["roles"].items():
            for label, xs in segs.items():
                tot.setdefault(role, {}).setdefault(label, 0.0)
                tot[role][label] += sum(b - a for a, b in xs)
    return {role: {label: round(t / span, 4) for label, t in segs.items()} for role, segs in tot.items()}


def sm90_trace_window(ctas: list[dict], t0: float, t1: float, cta: int | None = None) -> list[dict]:
    """The segments of :func:`sm90_trace_phases` (or a committed trace's ``ctas``) that overlap ``[t0, t1]`` us,
    clipped to it; only CTA ``cta`` when given (a picture of a few blocks, not thousands of bars)."""
    out = []
    for c in ctas:
        if cta is not None and c["cta"] != cta:
            continue
        roles = {role: {label: [[max(a, t0), min(b, t1)] for a, b in xs if b >= t0 and a <= t1]
                        for label, xs in segs.items()} for role, segs in c["roles"].items()}
        out.append(dict(c, roles=roles))
    return out
