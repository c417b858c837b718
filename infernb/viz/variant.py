"""Pictures of a variant on a small grid: its mask and its modified scores (pure: arrays in, figure out)."""
from __future__ import annotations

from ._style import base_layout


def variant_grid(scores, mask, *, title: str = "", head: int = 0, batch: int = 0, q_offset: int = 0):
    """Two heatmaps side by side: the mask (visible = dark) and the modified scores with masked entries blank.

    Args:
        scores, mask: ``[B, H, Q, K]`` from :meth:`infernb.Variant.evaluate` (or the GPU probe).
        head, batch: which ``(b, h)`` slice to draw.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    import numpy as np

    m = mask[batch, head].cpu().float().numpy()
    # masked entries as None (blank in the heatmap; NaN is not valid JSON for widgets)
    s = np.where(m > 0, scores[batch, head].cpu().float().numpy(), None).tolist()
    Q, K = m.shape
    fig = make_subplots(rows=1, cols=2, subplot_titles=[f"mask (b={batch}, h={head}): {int(m.sum())} of {m.size} visible",
                                                        "modified scores (masked: blank)"], horizontal_spacing=0.12)
    y = list(range(q_offset, q_offset + Q))
    fig.add_trace(go.Heatmap(z=m, y=y, colorscale=[[0, "#f3f4f6"], [1, "#1d4ed8"]], showscale=False,
                             hovertemplate="q_idx %{y}, kv_idx %{x}: %{z}<extra></extra>"), 1, 1)
    fig.add_trace(go.Heatmap(z=s, y=y, colorscale="RdBu_r", zmid=0, colorbar=dict(x=1.02),
                             hovertemplate="q_idx %{y}, kv_idx %{x}: %{z:.3f}<extra></extra>"), 1, 2)
    for c in (1, 2):
        fig.update_yaxes(autorange="reversed", title="q_idx" if c == 1 else None, scaleanchor=f"x{'' if c == 1 else 2}",
                         row=1, col=c)
        fig.update_xaxes(title="kv_idx", row=1, col=c)
    fig.update_layout(**base_layout(title or "variant on a grid"), height=420)
    return fig
