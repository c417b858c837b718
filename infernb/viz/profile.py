"""Benchmark pictures: bandwidth of each path per case against the device's copy ceiling (decode); TFLOP/s of each
path per case against the GEMM ceiling (prefill)."""
from __future__ import annotations

from ._style import base_layout

PATHS = {"infernb": "#2563eb", "flashinfer": "#f59e0b", "sdpa": "#6b7280"}
LABELS = {"infernb": "infernb", "flashinfer": "FlashInfer (best path)", "sdpa": "torch SDPA, contiguous KV"}


def bandwidth_bars(rows: list[dict], ceiling_tbps: float | None = None, *, title: str = "Decode: KV bytes read per second",
                   subtitle: str = ""):
    """Grouped bars of ``<path>_TBps`` per case (``rows`` from :func:`infernb.profile.profile_decode` or a committed
    benchmark JSON), with the copy ceiling as a dashed line and, where the rows have them (``read_ref_TBps``,
    ``copy_same_bytes_TBps``), marks for a streaming read and a device copy of each case's bytes; bars are labelled
    with their time, and the ratio to FlashInfer is written under each case."""
    import plotly.graph_objects as go

    cases = [r["case"] for r in rows]
    fig = go.Figure()
    for path, color in PATHS.items():
        if not any(f"{path}_TBps" in r for r in rows):
            continue
        y = [r.get(f"{path}_TBps") for r in rows]
        text = [f"{r[path + '_ms'] * 1e3:.1f} us" if f"{path}_ms" in r else "" for r in rows]
        fig.add_trace(go.Bar(name=LABELS[path], x=cases, y=y, marker_color=color, text=text, textposition="outside",
                             hovertemplate="%{x}: %{y:.2f} TB/s (%{text})<extra>" + LABELS[path] + "</extra>"))
    for key, label, color in (("read_ref", "streaming read of the same bytes (no compute)", "#111827"),
                              ("copy_same_bytes", "device copy moving the same bytes", "#9ca3af")):
        if not any(f"{key}_TBps" in r for r in rows):      # references measured by benchmarks/bench_decode.py
            continue
        fig.add_trace(go.Scatter(name=label, x=cases, y=[r.get(f"{key}_TBps") for r in rows], mode="markers",
                                 marker=dict(symbol="line-ew", size=34, line=dict(width=3, color=color)),
                                 text=[f"{r[key + '_ms'] * 1e3:.1f} us" if f"{key}_ms" in r else "" for r in rows],
                                 hovertemplate="%{x}: %{y:.2f} TB/s (%{text})<extra>" + label + "</extra>"))
    if ceiling_tbps:
        _ceiling(fig, go, ceiling_tbps, f"copy ceiling {ceiling_tbps:.2f} TB/s")
    _headroom(fig, rows, [f"{p}_TBps" for p in PATHS] + ["read_ref_TBps", "copy_same_bytes_TBps"], ceiling_tbps)
    for r in rows:
        if "speedup_vs_flashinfer" in r:
            fig.add_annotation(x=r["case"], y=0, yshift=-28, showarrow=False, font=dict(size=11),
                               text=f"{r['speedup_vs_flashinfer']:.2f}x FlashInfer")
    fig.update_layout(**base_layout(title + (f"<br><sup>{subtitle}</sup>" if subtitle else "")), barmode="group",
                      yaxis_title="TB/s of KV read", height=430, legend=dict(orientation="h", y=-0.25))
    return fig


def _ceiling(fig, go, y: float, label: str) -> None:
    """A ceiling as a dashed line named in the legend (an annotation on the line sat on the bars' time labels)."""
    fig.add_hline(y=y, line_dash="dash", line_color="#111827")
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=label,
                             line=dict(dash="dash", color="#111827", width=2)))


def _headroom(fig, rows, keys, ceiling) -> None:
    """y from 0 to 18% above the tallest bar or the ceiling: room for the time labels drawn above the bars."""
    top = max([float(r[k]) for r in rows for k in keys if isinstance(r.get(k), (int, float))] + [ceiling or 0.0])
    if top > 0:
        fig.update_yaxes(range=[0, 1.18 * top])


#: prefill paths drawn by tflops_bars, in order: (key in the rows, label, colour)
PREFILL_PATHS = (("infernb", "infernb", "#2563eb"), ("flashinfer_fa2", "FlashInfer fa2", "#f59e0b"),
                 ("flex", "FlexAttention", "#8b5cf6"), ("sdpa_flash", "torch SDPA flash", "#6b7280"),
                 ("sdpa_cudnn", "torch SDPA cuDNN", "#10b981"))


#: the Hopper benchmark's paths (benchmarks/bench_prefill_sm90.py): both infernb kernels and Hopper's competitors
HOPPER_PATHS = (("infernb_sm90", "infernb Hopper (wgmma + TMA)", "#1d4ed8"), ("infernb", "infernb mma.sync", "#93c5fd"),
                ("flashinfer_fa3", "FlashInfer fa3", "#b45309"), ("flashinfer_fa2", "FlashInfer fa2", "#f59e0b"),
                ("sdpa_cudnn", "torch SDPA cuDNN", "#10b981"), ("flex", "FlexAttention", "#8b5cf6"))


def tflops_bars(rows: list[dict], gemm_tflops: float | None = None, *, title: str = "Prefill: attention TFLOP/s",
                subtitle: str = "", paths=PREFILL_PATHS):
    """Grouped bars of ``<path>_tflops`` per case (``rows`` from :func:`infernb.profile.profile_prefill` or the
    ``cases`` of a committed ``prefill_*.json``), labelled with each path's time; the bf16 GEMM ceiling measured in
    the same run as a dashed line. ``paths``: ``[(key, label, color)]`` (default :data:`PREFILL_PATHS`;
    :data:`HOPPER_PATHS` for the Hopper benchmark's rows)."""
    import plotly.graph_objects as go

    cases = [r["case"] for r in rows]
    fig = go.Figure()
    for key, label, color in paths:
        if not any(f"{key}_tflops" in r for r in rows):
            continue
        fig.add_trace(go.Bar(name=label, x=cases, y=[r.get(f"{key}_tflops") for r in rows], marker_color=color,
                             text=[f"{r[key + '_ms']:.2f} ms" if f"{key}_ms" in r else "" for r in rows],
                             textposition="outside",
                             hovertemplate="%{x}: %{y:.0f} TFLOP/s (%{text})<extra>" + label + "</extra>"))
    if gemm_tflops:
        _ceiling(fig, go, gemm_tflops, f"bf16 GEMM {gemm_tflops:.0f} TFLOP/s")
    _headroom(fig, rows, [f"{k}_tflops" for k, _, _ in paths], gemm_tflops)
    fig.update_layout(**base_layout(title + (f"<br><sup>{subtitle}</sup>" if subtitle else "")), barmode="group",
                      yaxis_title="TFLOP/s (visible pairs)", height=430, legend=dict(orientation="h", y=-0.25))
    return fig


def time_bars(rows: list[dict], paths: list[tuple[str, str]] | None = None, *, title: str = "Time per call",
              subtitle: str = ""):
    """Grouped bars of ``<path>_ms`` per case (rows in the benchmarks' JSON schema), each labelled with its time:
    the picture for cases whose paths do different work (a mask's block structure against the dense mask) where
    TFLOP/s would mislead. ``paths``: ``[(key, label)]`` in order (default: every path the rows time)."""
    import plotly.graph_objects as go

    if paths is None:
        keys = [k[:-3] for r in rows for k in r if k.endswith("_ms") and not k.endswith(("_p10_ms", "_p90_ms"))]
        paths = [(k, k) for k in dict.fromkeys(keys)]
    cases = [r["case"] for r in rows]
    fig = go.Figure()
    for key, label in paths:
        fig.add_trace(go.Bar(name=label, x=cases, y=[r.get(f"{key}_ms") for r in rows],
                             text=[f"{r[key + '_ms']:.3f} ms" if f"{key}_ms" in r else "" for r in rows],
                             textposition="outside",
                             hovertemplate="%{x}: %{y:.3f} ms<extra>" + label + "</extra>"))
    _headroom(fig, rows, [f"{k}_ms" for k, _ in paths], None)
    fig.update_layout(**base_layout(title + (f"<br><sup>{subtitle}</sup>" if subtitle else "")), barmode="group",
                      yaxis_title="ms (median, lower is faster)", height=430, legend=dict(orientation="h", y=-0.25))
    return fig


def speedup_bars(rows: list[dict], ratios: list[tuple[str, str]], *, title: str = "Speedup", subtitle: str = ""):
    """Grouped bars of ratios the benchmark recorded per case (``rows`` in the benchmarks' JSON schema; ``ratios``:
    ``[(key, label)]``, e.g. ``("cascade_vs_plain_decode", "vs infernb plain decode")``), a line at 1x (level):
    the shared-prefix speedup picture."""
    import plotly.graph_objects as go

    cases = [r["case"] for r in rows]
    fig = go.Figure()
    for key, label in ratios:
        fig.add_trace(go.Bar(name=label, x=cases, y=[r.get(key) for r in rows],
                             text=[f"{r[key]:.2f}x" if key in r else "" for r in rows], textposition="outside",
                             hovertemplate="%{x}: %{y:.2f}x<extra>" + label + "</extra>"))
    fig.add_hline(y=1.0, line_dash="dot", line_color="#6b7280", annotation_text="level", annotation_position="top left")
    fig.update_layout(**base_layout(title + (f"<br><sup>{subtitle}</sup>" if subtitle else "")), barmode="group",
                      yaxis_title="speedup (x, higher is faster)", yaxis_type="log", height=460,
                      legend=dict(orientation="h", y=-0.3))
    return fig
