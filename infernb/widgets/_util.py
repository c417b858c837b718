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
            fw.layout = fig.layout
            return
    fw.data = ()
    fw.add_traces(list(fig.data))
    fw.layout = fig.layout
