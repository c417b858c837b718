"""Pictures: pure functions from infernb data structures to plotly figures (no computation, no CuPy).
plotly is imported inside each function, so ``import infernb.viz`` is cheap."""
from .compare import compare_bars, roofline
from .kv import page_pool, prefix_levels, sequence_pages
from .profile import bandwidth_bars, speedup_bars, tflops_bars, time_bars
from .schedule import merge_map, plan_gantt
from .sparse import block_sparse
from .trace import cta_timeline, warpgroup_timeline
from .variant import variant_grid

__all__ = ["bandwidth_bars", "block_sparse", "compare_bars", "roofline", "cta_timeline", "merge_map", "page_pool", "plan_gantt", "prefix_levels", "sequence_pages", "warpgroup_timeline",
           "speedup_bars", "tflops_bars", "time_bars", "variant_grid"]
