"""Timing helpers (CUDA events, warm-up, L2 flush, median and spread) and side-by-side comparisons."""
from ._optional import optional_flashinfer
from .compare import OPS, case_name, committed_compare, compare, compare_sweep, result_label
from .decode import committed_results, copy_ceiling_tbps, profile_decode, random_decode_batch
from .prefill import (flashinfer_ragged, flex_call, flex_path, gemm_ceiling_tflops, profile_prefill, sdpa_paths,
                      timing_fields, visible_pairs)
from .summary import compare_table, short_lens, speed_table
from .timing import Timing, cuda_graph_time, cuda_time, cuda_time_interleaved, device_name
from .trace import (decode_trace, sm90_trace, sm90_trace_phases, sm90_trace_summary, sm90_trace_window,
                    trace_phases, trace_summary)

__all__ = ["case_name", "committed_compare", "committed_results", "compare", "compare_sweep", "compare_table",
           "copy_ceiling_tbps", "cuda_graph_time", "cuda_time", "cuda_time_interleaved", "decode_trace",
           "device_name", "flashinfer_ragged", "flex_call", "flex_path", "gemm_ceiling_tflops", "OPS",
           "optional_flashinfer", "profile_decode", "profile_prefill", "random_decode_batch", "result_label",
           "sdpa_paths", "short_lens", "sm90_trace", "sm90_trace_phases", "sm90_trace_summary", "sm90_trace_window",
           "speed_table", "Timing", "timing_fields", "trace_phases", "trace_summary", "visible_pairs"]
