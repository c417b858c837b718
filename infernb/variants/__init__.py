"""Attention variants as Python functions (FlexAttention's ``score_mod`` / ``mask_mod``), traced to CUDA for the
kernels and evaluated on index tensors for the reference. Built-ins are factories returning a ``Variant``."""
from .builtins import (BUILTINS, alibi, alibi_slopes, and_masks, causal, combine, document, examples, or_masks,
                       prefix_lm, relative_position_bias, sigmoid_attention, sliding_window, softcap)
from .host_probe import host_probe
from .probe import probe, probe_spec
from .trace import TraceError
from .variant import Variant

__all__ = ["BUILTINS", "TraceError", "Variant", "alibi", "alibi_slopes", "and_masks", "causal", "combine", "document",
           "examples", "host_probe", "or_masks", "probe", "probe_spec", "prefix_lm", "relative_position_bias", "sigmoid_attention", "sliding_window", "softcap"]
