"""How fast does this GPU *read* N bytes, timed the way the decode benchmark times a kernel (CUDA events, L2
flushed before each call, median)? References for a decode of N KV bytes, measured instead of assumed: a simple
streaming read kernel (16-byte loads, several in flight per thread, no computation) at several grid shapes, the best
shape per size, plus an empty launch (the events' own cost) and torch's device copy of N/2 bytes (N bytes moved).
Neither is a hard floor (a decode streams its bytes as well as these kernels do: the uniform cases of
bench_decode.py run as fast as the read kernel), but a kernel that must also compute cannot be expected to beat
the copy by much.

    python benchmarks/diag/read_floor.py [--out OUT.json] [--runs 50]

Diagnostic (not a benchmark of infernb): prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json

import cupy as cp
import torch

from infernb.jit.builder import _stream as _torch_stream
from infernb.profile import cuda_graph_time, cuda_time, cuda_time_interleaved

SRC = r"""
extern "C" __global__ void __launch_bounds__(512) read_all(const uint4* __restrict__ p, unsigned long long n,
                                                           unsigned* __restrict__ sink) {
  // Grid-stride over n 16-byte vectors, UNROLL independent loads in flight per thread per step.
  unsigned acc = 0;
  unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
  const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  for (; i + (UNROLL - 1) * stride < n; i += UNROLL * stride) {
    uint4 v[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) v[u] = __ldcs(p + i + u * stride);
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
  }
  for (; i < n; i += stride) { uint4 v = __ldcs(p + i); acc ^= v.x ^ v.y ^ v.z ^ v.w; }
  if (acc == 0x9e3779b9u) sink[0] = acc;   // keeps the loads; practically never taken
}
extern "C" __global__ void empty() {}
"""


def _stream():  # torch's current stream at call time (a graph capture runs on a side stream)
    return _torch_stream(torch.cuda.current_device())


_MODS: dict = {}


def read_floor(nbytes: int, runs: int = 50, buf: torch.Tensor | None = None) -> dict:
    """The fastest read of ``nbytes`` (best of 24 grid shapes of the streaming read kernel), timed like a kernel
    of the decode benchmark: ``dict(ms, TBps, unroll, ctas_per_sm, threads, fn)``."""
    if not _MODS:
        _MODS.update({u: cp.RawModule(code=SRC.replace("UNROLL", str(u)), options=("-std=c++17",)) for u in (4, 8, 16)})
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    sink = cp.zeros(1, cp.uint32)
    buf = torch.randn(nbytes // 2, dtype=torch.bfloat16, device="cuda") if buf is None else buf
    p, n = cp.asarray(buf).view(cp.uint8), nbytes // 16
    best = None
    for u, mod in _MODS.items():
        f = mod.get_function("read_all")
        for per_sm in (1, 2, 4, 8):
            for threads in (256, 512):
                fn = (lambda f, g, t: lambda: f((g,), (t,), (p, cp.uint64(n), sink), stream=_stream()))(
                    f, sms * per_sm, threads)
                ms = cuda_time(fn, runs=runs).median_ms
                if best is None or ms < best["ms"]:
                    best = dict(ms=ms, TBps=nbytes / ms / 1e9, unroll=u, ctas_per_sm=per_sm, threads=threads, fn=fn)
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()
    rows = []
    empty = lambda: cp.RawModule(code=SRC.replace("UNROLL", "4")).get_function("empty")  # noqa: E731
    e = empty()
    t = cuda_time(lambda: e((1,), (32,), (), stream=_stream()), runs=args.runs)
    rows.append(dict(what="empty launch", bytes=0, ms=t.median_ms))
    tg = cuda_graph_time(lambda: e((1,), (32,), (), stream=_stream()), runs=args.runs)
    rows.append(dict(what="empty launch (graph)", bytes=0, ms=tg.median_ms))
    for nbytes in (2**26, 2**27, 2**28, 2**30):
        buf = torch.randn(nbytes // 2, dtype=torch.bfloat16, device="cuda")
        best = read_floor(nbytes, args.runs, buf)
        gms = cuda_graph_time(best.pop("fn"), runs=args.runs).median_ms
        rows.append(dict(what="read kernel (best shape)", bytes=nbytes, graph_ms=gms, **best))
        half = buf[: nbytes // 4]
        dst = torch.empty_like(half)
        cms = cuda_time(lambda: dst.copy_(half), runs=args.runs).median_ms
        rows.append(dict(what="torch copy of bytes/2 (bytes moved)", bytes=nbytes, ms=cms, TBps=nbytes / cms / 1e9))
        del buf, dst, half
        torch.cuda.empty_cache()
    print(f"{'what':<38}{'MB':>8}{'us':>9}{'graph us':>10}{'TB/s':>7}  shape")
    for r in rows:
        print(f"{r['what']:<38}{r['bytes'] / 1e6:8.1f}{r['ms'] * 1e3:9.1f}"
              f"{r.get('graph_ms', float('nan')) * 1e3:10.1f}{r.get('TBps', float('nan')):7.2f}  "
              + " ".join(f"{k}={r[k]}" for k in ("unroll", "ctas_per_sm", "threads") if k in r))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(dict(device=torch.cuda.get_device_name(), rows=rows), fh, indent=1)


if __name__ == "__main__":
    main()
