"""Data layouts every kernel consumes: the paged KV cache, its page table, and block-sparse (BSR) masks.
CPU-only bookkeeping (NumPy) plus vectorized torch data movement; no GPU library needed."""
from .block_sparse import BlockSparse
from .convert import LAYOUTS, convert_pool_layout
from .page_table import PageTable
from .paged_cache import PagedKVCache, PoolSnapshot
from .prefix import PrefixLevel, PrefixTree, prefix_tree

__all__ = ["BlockSparse", "LAYOUTS", "PageTable", "PagedKVCache", "PoolSnapshot", "PrefixLevel", "PrefixTree",
           "convert_pool_layout", "prefix_tree"]
