"""Planning time on the CPU (the planner runs every decode step, so it must be cheap).

    python benchmarks/bench_plan.py [--out DIR] [--batch N]

Target (issue 5): planning 256 requests takes under 1 ms. Times ``infernb.plan`` (building and validating the
Plan) for each preset at 256 requests, 32 query / 8 KV heads, d=128, 132 CTAs: median and p90 of 200 calls after
20 warm-up calls. Also the page table a step hands the kernels: ``PagedKVCache.page_table`` of 4096 sequences, one
of them 1M tokens (page 16), and the block table's memory. The measurement is
``infernb.profile.plan_time.plan_benchmark``. Writes ``plan_<host>_<date>.json``.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parse_args, write_result  # noqa: E402


def main(argv=None) -> int:
    args = parse_args(argv, batch=256)
    from infernb.profile import device_name
    from infernb.profile.plan_time import plan_benchmark, plan_summary

    result = plan_benchmark(args.batch)
    host = "cpu" if device_name() == "cpu" else "gpuhost"
    path = write_result(args.out, f"plan_{host}_{result['date']}", result)
    print(plan_summary(result))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
