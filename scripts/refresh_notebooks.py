"""Re-execute tutorials in place (so the outputs nbval checks are current) and strip widget state.

    .venv/bin/python scripts/refresh_notebooks.py [notebooks/NN_name.ipynb ...]   # default: all

Widget state (anywidget embeds the whole plotly.js bundle, ~10 MB) is removed from the saved file, and with it the
widget views of outputs (without their state they cannot render); figures keep their small plotly JSON outputs so
the notebooks read well unexecuted.
"""
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def strip_widgets(nb) -> int:
    """Drop the widget state and the widget views of outputs (a view whose model state is not saved cannot render:
    opened in JupyterLab it fails to initialize, and plotly.js throws, before the cell is run again); their
    text/plain fallback stays. Returns how many views were dropped."""
    nb.metadata.pop("widgets", None)
    n = 0
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        for out in cell.get("outputs", []):
            if WIDGET_VIEW in out.get("data", {}):
                del out["data"][WIDGET_VIEW]
                n += 1
    return n


def refresh(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    strip_widgets(nb)
    nbformat.write(nb, path)
    print(f"refreshed {path} ({path.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[1] / "notebooks"
    for p in [Path(a) for a in sys.argv[1:]] or sorted(root.glob("[0-9][0-9]_*.ipynb")):
        refresh(p)
