"""How fast this GPU *reads* N bytes, timed the way the decode benchmark times a kernel (CUDA events, L2 flushed
before each call, median): a streaming read kernel (``kernels/include/infernb/stream_read.cuh``: 16-byte loads,
several in flight per thread, no computation) at several grid shapes, and torch's device copy. References for a
decode of N KV bytes, measured instead of assumed (``benchmarks/bench_decode.py``; the table of sizes and shapes:
``benchmarks/diag/read_floor.py``)."""
from __future__ import annotations

import numpy as np
import torch

from ..jit import KernelSpec, build
from .timing import cuda_time, cuda_time_interleaved

UNROLLS = (4, 8, 16)
SPEC = KernelSpec(family="stream_read", name="stream_read",                 # kernels/include/infernb/stream_read.cuh
                  kernels=tuple((f"read{u}", f"infernb::stream_read_kernel<{u}>") for u in UNROLLS)
                  + (("empty", "infernb::empty_kernel"),))


def launcher(name: str):
    """``go(grid, block, kargs)`` for entry point ``name`` of SPEC on the current device, torch's current stream."""
    return build(SPEC).launcher(name, device_index=torch.cuda.current_device())


def read_floor(nbytes: int, runs: int = 50, buf: torch.Tensor | None = None) -> dict:
    """The fastest read of ``nbytes`` (best of 24 grid shapes of the streaming read kernel), timed like a kernel
    of the decode benchmark: ``dict(ms, TBps, unroll, ctas_per_sm, threads, fn)``."""
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    sink = torch.zeros(1, dtype=torch.int32, device="cuda")
    buf = torch.randn(nbytes // 2, dtype=torch.bfloat16, device="cuda") if buf is None else buf
    args = (np.uint64(buf.data_ptr()), np.uint64(nbytes // 16), np.uint64(sink.data_ptr()))
    best = None
    for u in UNROLLS:
        go = launcher(f"read{u}")
        for per_sm in (1, 2, 4, 8):
            for threads in (256, 512):
                fn = (lambda go, g, t: lambda: go((g, 1, 1), (t, 1, 1), args))(go, sms * per_sm, threads)
                ms = cuda_time(fn, runs=runs).median_ms
                if best is None or ms < best["ms"]:
                    best = dict(ms=ms, TBps=nbytes / ms / 1e9, unroll=u, ctas_per_sm=per_sm, threads=threads, fn=fn)
    best["fn"] = (lambda fn, keep: lambda: fn())(best["fn"], (buf, sink))   # the buffers live as long as fn
    return best


def read_references(nbytes: int, runs: int = 50) -> dict:
    """For ``nbytes``: the streaming read kernel's best grid shape (a short search, 10 calls per shape), then that
    kernel and torch's device copy of ``nbytes / 2`` (``nbytes`` moved) timed in the same rounds (``runs``), so the
    reported read time carries no best-of-many selection. Returns ``dict(read_ms, copy_ms, shape)``."""
    buf = torch.randn(nbytes // 2, dtype=torch.bfloat16, device="cuda")
    best = read_floor(nbytes, runs=10, buf=buf)
    half = buf[: nbytes // 4]
    dst = torch.empty_like(half)
    t = cuda_time_interleaved({"read": best["fn"], "copy": lambda: dst.copy_(half)}, runs=runs)
    shape = {k: best[k] for k in ("unroll", "ctas_per_sm", "threads")}
    del buf, half, dst
    torch.cuda.empty_cache()
    return dict(read_ms=t["read"].median_ms, copy_ms=t["copy"].median_ms, shape=shape)
