"""Timing helpers (CUDA events, warm-up, L2 flush, median and spread) and side-by-side comparisons."""
from .decode import committed_results, copy_ceiling_tbps, profile_decode, random_decode_batch
from .timing import Timing, cuda_graph_time, cuda_time, cuda_time_interleaved, device_name

__all__ = ["Timing", "committed_results", "copy_ceiling_tbps", "cuda_graph_time", "cuda_time", "cuda_time_interleaved",
           "device_name", "profile_decode", "random_decode_batch"]
