"""Pictures: pure functions from infernb data structures to plotly figures (no computation, no CuPy).
plotly is imported inside each function, so ``import infernb.viz`` is cheap."""
from .kv import page_pool, sequence_pages
from .sparse import block_sparse

__all__ = ["block_sparse", "page_pool", "sequence_pages"]
