"""The saved tutorials, as a reader opens them: no widget view whose state is not saved (JupyterLab fails to
initialize it and plotly.js throws before the cell is run again: the planner notebook's SchedulerExplorer did)."""
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_saved_notebook_has_no_orphan_widget_views(path):
    nb = nbformat.read(path, as_version=4)
    assert "widgets" not in nb.metadata, "widget state is not kept (scripts/refresh_notebooks.py strips it)"
    views = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" for o in c.get("outputs", [])
             if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert not views, f"cells {views} keep widget views without their state: run scripts/refresh_notebooks.py"
