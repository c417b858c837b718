"""LSE-merge kernel bandwidth: infernb vs torch (eager, fp32) vs FlashInfer (when installed), one run.

    python benchmarks/bench_merge.py [--out DIR]

Bytes counted: every input state read once (v and s) and the merged output written once. Checks every path
against infernb.reference before timing it (CUDA events, median of 50, L2 flushed); the measurement is
``infernb.profile.merge_cases.merge_benchmark``. Writes ``merge_<device>_<date>.json``.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parse_args, write_result  # noqa: E402

CASES = [  # (seq_len, num_states, num_heads, head_dim); the first is latency-bound (launch overhead shows)
    (1, 2, 32, 128),
    (8192, 2, 32, 128),
    (8192, 4, 32, 128),
    (2048, 16, 32, 128),
    (65536, 2, 8, 64),
    (4096, 8, 32, 256),
]


def main(argv=None) -> int:
    args = parse_args(argv)
    from infernb.profile.merge_cases import merge_benchmark, merge_summary

    result = merge_benchmark(CASES, warmup=10, runs=50)
    path = write_result(args.out, f"merge_{result['device']}_{result['date']}", result)
    print(merge_summary(result))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
