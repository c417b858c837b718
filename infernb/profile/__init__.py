"""Timing helpers (CUDA events, warm-up, L2 flush, median and spread) and side-by-side comparisons."""
from .decode import committed_results, copy_ceiling_tbps, profile_decode, random_decode_batch
from .timing import Timing, cuda_graph_time, cuda_time, cuda_time_interleaved, device_name
from .trace import decode_trace, trace_phases, trace_summary

__all__ = ["Timing", "committed_results", "copy_ceiling_tbps", "cuda_graph_time", "cuda_time", "cuda_time_interleaved",
           "decode_trace", "device_name", "profile_decode", "random_decode_batch", "trace_phases", "trace_summary"]
