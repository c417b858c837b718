"""Compile latency of infernb.jit, per kernel specialization.

    python benchmarks/bench_jit.py [--out DIR]

cold: ``infernb.jit.build`` with an empty disk cache (NVRTC compile + cache write), in a process where CuPy
      is already imported.
warm: ``build`` in a fresh memory cache with the disk entry present (read + checksum), plus loading the
      module onto the GPU and fetching each function (``cuModuleLoadData``) when there is a GPU.
Targets (issue 2): cold <= 3 s, warm <= 50 ms per specialization on the GPU machine.
Writes ``jit_<device>_<date>.json``.
"""
from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parse_args, write_result  # noqa: E402


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ["INFERNB_CACHE_DIR"] = tempfile.mkdtemp(prefix="infernb-bench-jit-")
    import cupy  # noqa: F401  (import cost is not compile latency)
    import torch

    import infernb
    from infernb import jit
    from infernb.ops import kernel_specializations

    info = infernb.device_info()
    rows = []
    for spec in kernel_specializations():
        jit.clear_memory_cache()
        t0 = time.perf_counter()
        k = jit.build(spec)
        cold = time.perf_counter() - t0
        assert not k.report.cache_hit
        warms = []
        for _ in range(5):
            jit.clear_memory_cache()
            t0 = time.perf_counter()
            k = jit.build(spec)
            if info.has_cuda:
                for name in k.lowered:
                    k.function(name)
                torch.cuda.synchronize()
            warms.append(time.perf_counter() - t0)
            assert k.report.cache_hit
        rows.append(dict(spec=spec.name, arch=k.arch, cold_s=round(cold, 4), nvrtc_s=round(k.report.compile_seconds, 4),
                         warm_ms=round(statistics.median(warms) * 1e3, 3),
                         registers={r.name: r.registers for r in k.report.kernels},
                         spills=sum(r.spill_stores + r.spill_loads for r in k.report.kernels)))
    result = dict(benchmark="jit_compile_latency", device=info.name, arch=info.arch,
                  date=dt.date.today().isoformat(), host=platform.node(), nvrtc=list(jit.nvrtc_version()),
                  targets=dict(cold_s=3.0, warm_ms=50.0), rows=rows,
                  max_cold_s=max(r["cold_s"] for r in rows), max_warm_ms=max(r["warm_ms"] for r in rows))
    path = write_result(args.out, f"jit_{info.name}_{result['date']}", result)
    print(f"{'spec':<28} {'cold s':>7} {'warm ms':>8}")
    for r in rows:
        print(f"{r['spec']:<28} {r['cold_s']:>7.3f} {r['warm_ms']:>8.2f}")
    print(f"device {info.name} ({info.arch}); max cold {result['max_cold_s']:.3f} s (target 3), "
          f"max warm {result['max_warm_ms']:.2f} ms (target 50) -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
