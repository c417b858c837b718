"""The decode kernel's timeline, one row per CTA (phases from :func:`infernb.profile.trace_phases`), and the Hopper
prefill kernel's, three rows (warpgroups) per CTA (:func:`infernb.profile.sm90_trace_phases`)."""
from __future__ import annotations

import numpy as np

from ._style import base_layout

SEGMENTS = (("start", "first_data", "waiting for its first keys", "#d1d5db"),
            ("first_data", "stream_end", "streaming its keys", "#2563eb"),
            ("stream_end", "end", "last item's epilogue (and merge)", "#f59e0b"))


def cta_timeline(ph: dict, *, title: str = "Decode: each CTA's timeline", subtitle: str = "", by_sm: bool = True):
    """Horizontal bars per CTA: waiting for the first keys, streaming, the end (epilogue, split-unit merges, the
    merges themselves drawn in red). ``by_sm`` orders rows by SM (the 3 CTAs of an SM side by side, so per-SM rate
    differences show as steps); otherwise by CTA index. ``ph``: :func:`infernb.profile.trace_phases` of a trace or
    the ``phases`` of a committed ``trace_decode_*.json``."""
    import plotly.graph_objects as go

    n = len(ph["start"])
    order = np.lexsort((np.asarray(ph["start"]), np.asarray(ph["sm"]))) if by_sm else np.arange(n)
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    fig = go.Figure()
    for a, b, label, color in SEGMENTS:
        x0, x1 = np.asarray(ph[a], float), np.asarray(ph[b], float)
        fig.add_trace(go.Bar(name=label, orientation="h", y=rank, base=x0, x=x1 - x0, marker_color=color,
                             marker_line_width=0, customdata=np.stack([np.asarray(ph["sm"]), x0, x1], axis=1),
                             hovertemplate="SM %{customdata[0]}: %{customdata[1]:.1f} - %{customdata[2]:.1f} us"
                                           "<extra>" + label + "</extra>"))
    m = ~np.isnan(np.asarray(ph["merge_start"], float))
    if m.any():
        x0, x1 = np.asarray(ph["merge_start"], float)[m], np.asarray(ph["merge_end"], float)[m]
        fig.add_trace(go.Bar(name="merging a split unit", orientation="h", y=rank[m], base=x0, x=x1 - x0,
                             marker_color="#dc2626", marker_line_width=0,
                             hovertemplate="merge %{base:.1f} us, %{x:.2f} us<extra></extra>"))
    fig.update_layout(**base_layout(title + (f"<br><sup>{subtitle}</sup>" if subtitle else "")), barmode="overlay",
                      bargap=0, height=480, xaxis_title="us from the first CTA's start",
                      yaxis_title="CTA (ordered by SM)" if by_sm else "CTA", legend=dict(orientation="h", y=-0.2))
    return fig


SM90_COLORS = {"waiting for a free stage": "#d1d5db", "issuing the block's loads": "#2563eb",
               "copies in flight (paged)": "#93c5fd", "waiting for K/V": "#d1d5db", "waiting for its turn": "#fde68a",
               "S = Q K^T in flight": "#1d4ed8", "softmax": "#f59e0b", "waiting for P V": "#10b981",
               "epilogue": "#dc2626"}


def warpgroup_timeline(ctas: list[dict], *, title: str = "Hopper prefill: each warpgroup's timeline",
                       subtitle: str = "", window_us: tuple[float, float] | None = None):
    """The Hopper prefill kernel's warpgroups over time, three rows per CTA (producer, consumer 0, consumer 1), each
    block's phases as bars (:data:`SM90_COLORS`): the producer waiting for a free stage and issuing loads; each
    consumer waiting for K/V, for its pingpong turn, for S = Q K^T, running the softmax, waiting for P V, and the
    items' epilogues. ``ctas``: :func:`infernb.profile.sm90_trace_phases` of a trace or the ``ctas`` of a committed
    ``trace_sm90_*.json``; ``window_us``: the time range shown (default: all)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    labels, seen = [], set()
    for c in ctas:
        for role, segs in c["roles"].items():
            y = f"CTA {c['cta']} (SM {c['sm']}) {role}"
            labels.append(y)
            for label, xs in segs.items():
                if not xs:
                    continue
                a = np.asarray(xs, float)
                fig.add_trace(go.Bar(name=label, legendgroup=label, showlegend=label not in seen, orientation="h",
                                     y=[y] * len(a), base=a[:, 0], x=a[:, 1] - a[:, 0],
                                     marker_color=SM90_COLORS.get(label, "#6b7280"), marker_line_width=0,
                                     hovertemplate="%{base:.2f} us + %{x:.3f} us<extra>" + label + "</extra>"))
                seen.add(label)
    fig.update_layout(**base_layout(title + (f"<br><sup>{subtitle}</sup>" if subtitle else "")), barmode="overlay",
                      bargap=0.25, height=160 + 60 * len(labels), xaxis_title="us from the CTA's start",
                      legend=dict(orientation="h", y=-0.25))
    fig.update_yaxes(categoryorder="array", categoryarray=labels[::-1])
    if window_us is not None:
        fig.update_xaxes(range=list(window_us))
    return fig
