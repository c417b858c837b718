"""The Hopper vocabulary's proof (issue 16): infernb's wgmma + TMA bf16 GEMM against torch.matmul, one run.

    python benchmarks/bench_gemm.py [--out DIR] [--runs 20]

C = A B^T, bf16 in, fp32 accumulation, bf16 out; every path checked against float64 row sums first, then timed
in interleaved rounds with the L2 flushed (``infernb.profile.gemm_cases.gemm_benchmark``). Target: >= 90% of
torch.matmul's TFLOP/s in the same run. Writes ``gemm_<device>_<date>.json``. Needs an sm_90 GPU.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parse_args, write_result  # noqa: E402

SHAPES = [(8192, 8192, 8192), (4096, 4096, 4096), (8192, 8192, 2048), (16384, 4096, 4096)]


def main(argv=None) -> int:
    args = parse_args(argv, runs=20)
    from infernb.profile.gemm_cases import gemm_benchmark

    result = gemm_benchmark(SHAPES, runs=args.runs)
    path = write_result(args.out, f"gemm_{result['device']}_{result['date']}", result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
