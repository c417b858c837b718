"""Timing helpers: CUDA events, warm-up, L2 flush, median and spread."""
from .timing import Timing, cuda_time, device_name

__all__ = ["Timing", "cuda_time", "device_name"]
