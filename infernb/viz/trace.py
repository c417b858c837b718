"""The decode kernel's timeline, one row per CTA (phases from :func:`infernb.profile.trace_phases`)."""
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
