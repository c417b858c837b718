"""PyTorch ground truth for every op and variant (float64 by default, any device). No GPU needed."""
from .attention import attend, attention
from .merge import merge_state, merge_states
from .paged import LAYOUTS, gather_paged_kv, kv_lengths, paged_attention, split_kv_pool
from .rope import RoPE, apply_rope

__all__ = ["LAYOUTS", "RoPE", "apply_rope", "attend", "attention", "gather_paged_kv", "kv_lengths", "merge_state",
           "merge_states", "paged_attention", "split_kv_pool"]
