"""ipywidgets panels: controls wired to ``infernb.viz`` figures and library calls; no computation of their own."""
from .kv_layout import KVLayoutExplorer
from .profiler import ProfilerPanel
from .scheduler import SchedulerExplorer
from .variant_editor import VariantEditor

__all__ = ["KVLayoutExplorer", "ProfilerPanel", "SchedulerExplorer", "VariantEditor"]
