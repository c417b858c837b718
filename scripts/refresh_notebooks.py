"""Re-execute tutorials in place (so the outputs nbval checks are current) and strip widget state.

    .venv/bin/python scripts/refresh_notebooks.py [notebooks/NN_name.ipynb ...]   # default: all

Widget state (anywidget embeds the whole plotly.js bundle, ~10 MB) is removed from the saved file;
figures keep their small plotly JSON outputs so the notebooks read well unexecuted.
"""
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def refresh(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    nbformat.write(nb, path)
    print(f"refreshed {path} ({path.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[1] / "notebooks"
    for p in [Path(a) for a in sys.argv[1:]] or sorted(root.glob("[0-9][0-9]_*.ipynb")):
        refresh(p)
