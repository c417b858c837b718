"""Pictures of ``ib.profile.compare`` results: each path's time with its error, and a roofline."""
from __future__ import annotations

from ._style import base_layout

#: colour per path family (the label's prefix)
FAMILY_COLORS = (("infernb", "#2563eb"), ("flashinfer", "#f59e0b"), ("flex", "#8b5cf6"), ("sdpa_flash", "#6b7280"),
                 ("sdpa_cudnn", "#10b981"), ("sdpa", "#9ca3af"), ("eager", "#dc2626"))
LABELS = {"infernb": "infernb", "flashinfer": "FlashInfer", "flex": "FlexAttention (compiled)",
          "sdpa_flash": "SDPA flash", "sdpa_cudnn": "SDPA cuDNN", "eager_fp32": "eager reference, fp32"}


def path_color(label: str) -> str:
    return next((c for p, c in FAMILY_COLORS if label.startswith(p)), "#374151")


def _source(result: dict) -> str:
    return f"{result['device']}, {result['date']}" + (f", FlashInfer {result['flashinfer']}"
                                                       if result.get("flashinfer") else "")


def compare_bars(result: dict, *, subtitle: str = ""):
    """One bar per path of a :func:`infernb.profile.compare` result (fastest on top): its median time, labelled with
    its speed relative to infernb's and its error against the float64 reference (red when above bf16's 1e-2)."""
    import plotly.graph_objects as go

    paths = sorted(result["paths"].items(), key=lambda kv: kv[1]["ms"])
    base = result["paths"].get("infernb", {}).get("ms")
    text = [f"{p['ms']:.3f} ms" + (f" · {base / p['ms']:.2f}x infernb" if base and lab != "infernb" else "")
            + f" · err {p['err']:.1e}" for lab, p in paths]
    fig = go.Figure(go.Bar(
        x=[p["ms"] for _, p in paths], y=[LABELS.get(lab, lab) for lab, _ in paths], orientation="h",
        marker_color=[path_color(lab) if p["err"] <= 1e-2 else "#fca5a5" for lab, p in paths], text=text,
        textposition="outside", cliponaxis=False,
        hovertemplate="%{y}: %{x:.3f} ms<extra></extra>"))
    title = f"{result['case']}" + (f", variant {result['variant']}" if result.get("variant") else "")
    sub = subtitle or _source(result)
    fig.update_layout(**base_layout(f"{title}<br><sup>{sub}</sup>"), height=140 + 42 * max(len(paths), 1),
                      xaxis_title="median time (ms, log scale), paths timed in interleaved rounds",
                      yaxis=dict(autorange="reversed"), showlegend=False)
    if paths:                       # log time: an eager reference 50x slower and the kernels on one axis
        import math
        lo, hi = min(p["ms"] for _, p in paths), max(p["ms"] for _, p in paths)
        fig.update_xaxes(type="log", range=[math.log10(lo / 2), math.log10(hi * 12)])   # room for the labels
    fig.update_layout(margin=dict(l=190, r=30, t=80, b=50))
    return fig


def roofline(results, *, subtitle: str = ""):
    """Achieved TFLOP/s of every path of one or several :func:`infernb.profile.compare` results against the roofs
    measured in the same runs: the copy ceiling times the problem's arithmetic intensity (FLOPs per byte of q, k,
    v and o) and the bf16 GEMM ceiling (log-log axes)."""
    import numpy as np
    import plotly.graph_objects as go

    results = [results] if isinstance(results, dict) else list(results)
    fig = go.Figure()
    shown = set()
    for r in results:
        x = r["flops"] / r["bytes"]
        for lab, p in r["paths"].items():
            name = LABELS.get(lab, lab)
            fig.add_trace(go.Scatter(
                x=[x], y=[p["TFLOPs"]], mode="markers", name=name, legendgroup=name, showlegend=name not in shown,
                marker=dict(size=11, color=path_color(lab), line=dict(width=1, color="#111827")),
                hovertemplate=f"{r['case']}<br>{name}: %{{y:.0f}} TFLOP/s, {p['TBps']:.2f} TB/s, {p['ms']:.3f} ms"
                              "<extra></extra>"))
            shown.add(name)
    copy = min(r["copy_TBps"] for r in results)
    gemm = max(r["gemm_TFLOPs"] for r in results)
    xs = [r["flops"] / r["bytes"] for r in results]
    grid = np.logspace(np.log10(min(xs) / 4), np.log10(max(xs) * 4), 64)
    fig.add_trace(go.Scatter(x=grid, y=np.minimum(copy * grid, gemm), mode="lines", name=(
        f"roof: copy {copy:.2f} TB/s x intensity, GEMM {gemm:.0f} TFLOP/s"),
        line=dict(color="#111827", dash="dash"), hoverinfo="skip"))
    for r in results:
        fig.add_annotation(x=np.log10(r["flops"] / r["bytes"]), y=np.log10(gemm), text=r["case"], showarrow=False,
                           yshift=14, font=dict(size=11))
    sub = subtitle or _source(results[0])
    fig.update_layout(**base_layout(f"Roofline<br><sup>{sub}</sup>"), height=460,
                      xaxis=dict(type="log", title="arithmetic intensity (FLOP per byte of q, k, v, o)"),
                      yaxis=dict(type="log", title="TFLOP/s (visible pairs)"),
                      legend=dict(orientation="h", y=-0.22))
    fig.update_layout(margin=dict(l=60, r=20, t=90, b=40))
    return fig
