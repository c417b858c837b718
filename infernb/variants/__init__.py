"""Attention variants as Python functions (FlexAttention's ``score_mod`` / ``mask_mod``), traced to CUDA for the
kernels and evaluated on index tensors for the reference. Built-ins are factories returning a ``Variant``."""
from .builtins import (BUILTINS, EXAMPLE_CODE, alibi, alibi_slopes, and_masks, attention_sink, causal, combine, document, example_code,
                       examples, or_masks, prefix_lm, relative_position_bias, sigmoid_attention, sliding_window, softcap,
                       variant_from_code)
from .host_probe import host_probe
from .probe import probe, probe_spec
from .trace import APPROX_OPS, TraceError, approx_tanh
from .variant import Variant

__all__ = ["alibi", "APPROX_OPS", "approx_tanh", "alibi_slopes", "and_masks", "attention_sink", "BUILTINS", "causal", "combine", "document", "EXAMPLE_CODE",
           "example_code", "examples", "host_probe", "or_masks", "prefix_lm", "probe", "probe_spec",
           "relative_position_bias", "sigmoid_attention", "sliding_window", "softcap", "TraceError", "Variant",
           "variant_from_code"]
