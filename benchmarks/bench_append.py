"""Appending new K/V to a paged cache: one decode-style step of a batch, end to end.

    python benchmarks/bench_append.py [--out DIR]

Case (issue 3): 64 sequences x 16 new tokens, 8 KV heads, head_dim 128, bf16, page size 16, NHD and HND,
sequences already holding 1000 tokens. Timed paths (CUDA events, median of 50, L2 flushed):

- ``infernb``: ``PagedKVCache.append`` as a user calls it (page allocation and destinations on the CPU,
  an async copy of the destinations, one kernel), timed two ways: CUDA events around one call (L2 flushed
  before it, which can hide host time behind the flush), and ``infernb_step`` = wall time per call over
  100 back-to-back appends followed by a synchronize (what a serving loop sees per step);
- ``infernb_kernel``: only our append kernel, destinations precomputed on the GPU (what FlashInfer's
  number below measures too);
- ``torch_index_put``: the same device write as two torch ``index_put`` calls;
- ``flashinfer``: ``flashinfer.page.append_paged_kv_cache`` with precomputed batch indices/positions,
  when FlashInfer is installed (it also takes its page table as given).

Reports GB/s of K/V written (bytes = 2 x tokens x heads x dim x 2). The measurement is
``infernb.profile.append_cases.append_benchmark``. Writes ``append_<device>_<date>.json``.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parse_args, write_result  # noqa: E402

CASE = dict(batch=64, new_tokens=16, kv_heads=8, head_dim=128, page_size=16, cached=1000)


def main(argv=None) -> int:
    args = parse_args(argv)
    from infernb.profile.append_cases import append_benchmark, append_summary

    result = append_benchmark(layouts=("NHD", "HND"), warmup=10, runs=50, step_runs=100, **CASE)
    path = write_result(args.out, f"append_{result['device']}_{result['date']}", result)
    print(append_summary(result))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
