"""Compile latency of infernb.jit, per kernel specialization.

    python benchmarks/bench_jit.py [--out DIR]

cold: ``infernb.jit.build`` with an empty disk cache (NVRTC compile + cache write), in a process where CuPy
      is already imported.
warm: ``build`` in a fresh memory cache with the disk entry present (read + checksum), plus loading the
      module onto the GPU and fetching each function (``cuModuleLoadData``) when there is a GPU.
Targets (issue 2): cold <= 3 s, warm <= 50 ms per specialization on the GPU machine. The measurement is
``infernb.profile.jit_latency.jit_benchmark`` over every specialization. Writes ``jit_<device>_<date>.json``.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parse_args, write_result  # noqa: E402


def main(argv=None) -> int:
    args = parse_args(argv)
    from infernb.profile.jit_latency import jit_benchmark, jit_summary

    result = jit_benchmark()
    path = write_result(args.out, f"jit_{result['device']}_{result['date']}", result)
    print(jit_summary(result))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
