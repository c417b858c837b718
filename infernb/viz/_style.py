"""Shared look of infernb figures."""
from __future__ import annotations

FREE = "#e5e7eb"
FULL = "#2563eb"
PARTIAL = "#f59e0b"
SHARED_OUTLINE = "#111827"


def seq_color(seq_id: int) -> str:
    """A stable colour per sequence id (plotly's qualitative palettes, cycled)."""
    from plotly.colors import qualitative as q

    palette = q.Plotly + q.D3 + q.Set2
    return palette[seq_id % len(palette)]


def base_layout(title: str, **kw) -> dict:
    return dict(title=dict(text=title, x=0.01, xanchor="left"), template="plotly_white",
                margin=dict(l=40, r=20, t=60, b=40), **kw)
