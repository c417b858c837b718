"""Helpers for wiring figures into widgets (no computation)."""
from __future__ import annotations


def figure_widget(fig):
    """A plotly ``FigureWidget`` showing ``fig``."""
    import plotly.graph_objects as go

    return go.FigureWidget(fig)


def replace_figure(fw, fig) -> None:
    """Show ``fig`` in the existing ``FigureWidget`` ``fw`` (in place: the widget object stays the same, so
    the notebook output updates without re-running the cell)."""
    with fw.batch_update():
        if len(fw.data) == len(fig.data) and all(a.type == b.type for a, b in zip(fw.data, fig.data)):
            for old, new in zip(fw.data, fig.data):
                old.update(new.to_plotly_json(), overwrite=True)
            _replace_layout(fw, fig)
            return
    fw.data = ()
    fw.add_traces(list(fig.data))
    _replace_layout(fw, fig)


#: Layout lists the browser keeps when a new layout has fewer entries (plotly.js merges a relayout index by index).
LAYOUT_LISTS = ("annotations", "shapes", "images")


def _replace_layout(fw, fig) -> None:
    """``fw.layout = fig.layout``, with the lists that shrink padded by hidden entries: plotly.js merges a relayout,
    so an annotation the new layout lacks stayed drawn (the merge map's "no row was split" over 50 split rows)."""
    pads = {}
    for k in LAYOUT_LISTS:
        old, new = fw.layout[k] or (), fig.layout[k] or ()
        if len(old) > len(new):
            pads[k] = [*new, *[dict(visible=False)] * (len(old) - len(new))]
    with fw.batch_update():
        fw.layout = fig.layout
        if pads:
            fw.layout.update(pads)
