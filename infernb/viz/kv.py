"""Pictures of the paged KV cache: the page pool and one sequence's chain of pages.

Pure functions: data (a :class:`~infernb.layout.PagedKVCache` or its :class:`~infernb.layout.PoolSnapshot`)
in, a plotly ``Figure`` out. No computation beyond laying out what the data says.
"""
from __future__ import annotations

import numpy as np

from ._style import FREE, SHARED_OUTLINE, base_layout, seq_color


def _snapshot(obj):
    return obj.snapshot() if hasattr(obj, "snapshot") else obj


def page_pool(cache, *, columns: int | None = None, title: str | None = None):
    """The page pool as a grid: one square per page, coloured by the sequence that owns it, faded by how full
    it is; free pages grey; pages shared after a fork outlined in black. A table of occupancy and
    fragmentation figures sits beside it.

    Args:
        cache: a ``PagedKVCache`` or a ``PoolSnapshot``.
        columns: pages per grid row (default: about square).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    snap = _snapshot(cache)
    n = snap.num_pages
    cols = columns or max(8, int(np.ceil(np.sqrt(n * 2))))
    rows = -(-n // cols)
    pid = np.arange(n)
    x, y = pid % cols, pid // cols
    fig = make_subplots(rows=1, cols=2, column_widths=[0.74, 0.26], horizontal_spacing=0.03,
                        specs=[[{"type": "xy"}, {"type": "table"}]])
    size = max(4, min(22, int(560 / max(cols, rows))))

    def add(mask, name, color, opacity, hover, symbol="square", line=None, legendgroup=None):
        if not mask.any():
            return
        fig.add_trace(go.Scatter(x=x[mask], y=y[mask], mode="markers", name=name, legendgroup=legendgroup,
                                 marker=dict(symbol=symbol, size=size, color=color, opacity=opacity,
                                             line=line or dict(width=0)),
                                 hovertext=[hover[i] for i in np.nonzero(mask)[0]], hoverinfo="text"), 1, 1)

    holders = {p: [] for p in range(n)}
    for sid, pages in snap.seq_pages.items():
        for p in pages:
            holders[p].append(sid)
    hover = []
    for p in range(n):
        if snap.refcount[p] == 0:
            hover.append(f"page {p}: free")
        else:
            who = ", ".join(map(str, holders[p]))
            hover.append(f"page {p}: {snap.fill[p]}/{snap.page_size} tokens, held by seq {who}"
                         + (" (shared)" if snap.refcount[p] > 1 else ""))
    add(snap.refcount == 0, "free", FREE, 1.0, hover)
    fillfrac = snap.fill / max(snap.page_size, 1)
    for sid in snap.seq_pages:
        mask = snap.owner == sid
        if mask.any():
            add(mask, f"seq {sid} ({snap.seq_lens[sid]} tok)", seq_color(sid), list(0.35 + 0.65 * fillfrac[mask]), hover,
                legendgroup=f"s{sid}")
    add(snap.refcount > 1, "shared (fork)", SHARED_OUTLINE, 1.0, hover, symbol="square-open",
        line=dict(width=2, color=SHARED_OUTLINE))
    st = snap.stats()
    keys = ["pages_used", "pages_free", "pages_shared", "sequences", "tokens", "slot_utilization",
            "internal_fragmentation", "free_runs", "sharing_saved_pages"]
    vals = [f"{st[k]:.1%}" if isinstance(st[k], float) else str(st[k]) for k in keys]
    # (non-breaking spaces: plotly.js wraps a table cell's text at spaces when the column is narrow, and a
    # wrapped label overflowed its 22-pixel row and was drawn as nothing in the notebooks' panels)
    nb = lambda t: t.replace(" ", "\u00a0")  # noqa: E731
    fig.add_trace(go.Table(header=dict(values=["pool", nb(f"{n} pages x {snap.page_size}")], align="left"),
                           cells=dict(values=[[nb(k.replace("_", " ")) for k in keys], vals], align="left",
                                      height=22),
                           columnwidth=[1.6, 1]), 1, 2)
    fig.update_xaxes(visible=False, range=[-1, cols], row=1, col=1)
    fig.update_yaxes(visible=False, autorange="reversed", scaleanchor="x", row=1, col=1)
    fig.update_layout(**base_layout(title or f"Page pool: {st['pages_used']}/{n} pages used, "
                                    f"{st['slot_utilization']:.0%} of their slots filled"),
                      height=max(400, min(900, 140 + rows * (size + 4))), legend=dict(orientation="h", y=-0.05))
    return fig


def sequence_pages(cache, seq_id: int, *, title: str | None = None):
    """One sequence's chain of pages: logical order (top row) against where each page sits in the pool
    (bottom axis), with a line from each logical page to its physical page. Shared pages drawn outlined."""
    import plotly.graph_objects as go

    snap = _snapshot(cache)
    if seq_id not in snap.seq_pages:
        raise KeyError(f"sequence {seq_id} is not live in this cache (live: {list(snap.seq_pages)})")
    pages = snap.seq_pages[seq_id]
    n, N = len(pages), snap.num_pages
    color = seq_color(seq_id)
    step = (N - 1) / max(n - 1, 1) if n > 1 else 0.0
    lx = [i * step if n > 1 else (N - 1) / 2 for i in range(n)]
    fig = go.Figure()
    xs, ys = [], []
    for i, p in enumerate(pages):
        xs += [lx[i], p, None]
        ys += [1, 0, None]
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color=color, width=1), hoverinfo="skip",
                             showlegend=False))
    shared = [snap.refcount[p] > 1 for p in pages]
    fills = [int(snap.fill[p]) for p in pages]
    text = [f"logical page {i} -> pool page {p}<br>{f}/{snap.page_size} tokens{' (shared)' if s else ''}"
            for i, (p, f, s) in enumerate(zip(pages, fills, shared))]
    fig.add_trace(go.Scatter(x=lx, y=[1] * n, mode="markers+text" if n <= 32 else "markers", name="logical order",
                             text=[str(i) for i in range(n)], textposition="top center",
                             marker=dict(symbol="square", size=14, color=color,
                                         line=dict(width=[2 if s else 0 for s in shared], color=SHARED_OUTLINE)),
                             hovertext=text, hoverinfo="text"))
    fig.add_trace(go.Scatter(x=pages, y=[0] * n, mode="markers", name="pool position",
                             marker=dict(symbol="square", size=10, color=color,
                                         line=dict(width=[2 if s else 0 for s in shared], color=SHARED_OUTLINE)),
                             hovertext=text, hoverinfo="text"))
    fig.update_yaxes(range=[-0.5, 1.6], tickvals=[0, 1], ticktext=["pool", "logical"])
    fig.update_xaxes(range=[-1, N], title="page id in the pool (bottom row)", zeroline=False)
    fig.update_layout(**base_layout(title or f"Sequence {seq_id}: {snap.seq_lens[seq_id]} tokens in {n} pages "
                                    f"({sum(shared)} shared)"), height=300, showlegend=False)
    return fig


def prefix_levels(tree, *, labels=None, title: str = "Shared prefixes: which keys each level gives each sequence"):
    """A :class:`~infernb.layout.prefix.PrefixTree` as bars, one row per sequence (batch row) along its key
    positions: each shared level it reads in that level's colour (the same level, read once by cascade attention,
    in the same colour on every row that shares it), its own keys in grey. ``labels``: the rows' names (default
    their sequence index in the batch)."""
    import plotly.graph_objects as go

    names = [str(b) if labels is None else str(labels[b]) for b in range(tree.batch_size)]
    fig = go.Figure()
    for i, lv in enumerate(tree.levels):
        fig.add_trace(go.Bar(name=f"level {i} (depth {lv.depth}, {len(lv.rows)} sequences, {lv.tokens} keys)",
                             orientation="h", y=[names[b] for b in lv.rows], base=[lv.start] * len(lv.rows),
                             x=[lv.tokens] * len(lv.rows), marker_color=seq_color(i),
                             marker_line_width=0,
                             hovertemplate=f"level {i}: keys %{{base}} - %{{x}} more<extra></extra>"))
    rows = range(tree.batch_size)
    fig.add_trace(go.Bar(name="own keys (decode)", orientation="h", y=names, base=[tree.unique_start(b) for b in rows],
                         x=[tree.unique_tokens(b) for b in rows], marker_color="#9ca3af",
                         marker_line_width=0, hovertemplate="own keys from %{base}: %{x}<extra></extra>"))
    fig.update_layout(**base_layout(title), barmode="overlay", bargap=0.3, height=180 + 28 * tree.batch_size,
                      xaxis_title="key position", yaxis_title="sequence", legend=dict(orientation="h", y=-0.25))
    fig.update_yaxes(autorange="reversed")
    return fig
