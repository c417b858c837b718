"""Pictures of block-sparse structures (pure: ``BlockSparse`` in, plotly ``Figure`` out)."""
from __future__ import annotations

import numpy as np

from ._style import FULL, PARTIAL, base_layout


def block_sparse(bs, *, title: str | None = None, max_cells: int = 250_000):
    """Query-block x KV-block picture: full blocks blue, partial orange, empty white. Hover gives the block's
    coordinates, the query and key tokens it covers, and whether the kernel evaluates the mask there."""
    import plotly.graph_objects as go

    grid = bs.block_grid().numpy().astype(float)
    nr, nc = grid.shape
    if nr * nc > max_cells:
        raise ValueError(f"{nr} x {nc} blocks is too many cells to draw (max_cells={max_cells}); use a coarser block")
    (M, N), (R, C) = bs.shape, bs.block
    i = np.arange(nr)[:, None].repeat(nc, 1)
    j = np.arange(nc)[None, :].repeat(nr, 0)
    state = np.array(["empty (skipped)", "partial (mask evaluated)", "full (no mask)"])[grid.astype(int)]
    custom = np.stack([i * R, np.minimum((i + 1) * R, M), j * C, np.minimum((j + 1) * C, N)], -1)
    fig = go.Figure(go.Heatmap(
        z=grid, zmin=0, zmax=2, customdata=custom, text=state, showscale=False, xgap=1 if nc <= 128 else 0,
        ygap=1 if nr <= 128 else 0,
        colorscale=[[0, "#ffffff"], [0.33, "#ffffff"], [0.34, PARTIAL], [0.66, PARTIAL], [0.67, FULL], [1, FULL]],
        hovertemplate="block (%{y}, %{x})<br>queries [%{customdata[0]}, %{customdata[1]})"
                      "<br>keys [%{customdata[2]}, %{customdata[3]})<br>%{text}<extra></extra>"))
    st = bs.stats()
    fig.update_yaxes(autorange="reversed", title=f"query block (R={R})", scaleanchor="x", constrain="domain")
    fig.update_xaxes(title=f"KV block (C={C})", constrain="domain")
    fig.update_layout(**base_layout(title or f"Block-sparse {M}x{N}: {st['full_blocks']} full, {st['partial_blocks']} "
                                    f"partial of {st['blocks']} blocks (density {st['density']:.1%})"),
                      height=min(800, max(300, 80 + 12 * nr)))
    return fig
