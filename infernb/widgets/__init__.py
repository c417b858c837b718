"""ipywidgets panels: controls wired to ``infernb.viz`` figures and library calls; no computation of their own."""
from .kv_layout import KVLayoutExplorer

__all__ = ["KVLayoutExplorer"]
