"""Planning time on the CPU (the planner runs every decode step, so it must be cheap).

    python benchmarks/bench_plan.py [--out DIR]

Target (issue 5): planning 256 requests takes under 1 ms. Times ``infernb.plan`` (building and validating the
Plan) for each preset at 256 requests, 32 query / 8 KV heads, d=128, 132 CTAs: median and p90 of 200 calls after
20 warm-up calls. Also the page table a step hands the kernels: ``PagedKVCache.page_table`` of 4096 sequences, one
of them 1M tokens (page 16), and the block table's memory. Writes ``plan_<host>_<date>.json``.
"""
from __future__ import annotations

import datetime as dt
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parse_args, write_result  # noqa: E402


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv=None) -> int:
    args = parse_args(argv, batch=256)
    import infernb as ib
    from infernb.plan import presets

    rows = []
    for preset in presets.PRESETS:
        qo, kv = presets.batch(preset, args.batch)
        kw = dict(num_qo_heads=32, num_kv_heads=8, head_dim=128, num_sms=132)
        for _ in range(20):
            p = ib.plan(qo, kv, **kw)
        ts = []
        for _ in range(200):
            t0 = time.perf_counter()
            p = ib.plan(qo, kv, **kw)
            ts.append(time.perf_counter() - t0)
        ts.sort()
        s = p.stats()
        rows.append(dict(preset=preset, requests=args.batch, median_us=statistics.median(ts) * 1e6,
                         p90_us=ts[int(0.9 * len(ts))] * 1e6, units=s["units"], items=s["items"],
                         split_units=s["split_units"], imbalance=s["imbalance"]))
    # the page table of a batch with one very long sequence (4096 sequences, one of 1M tokens, page 16)
    import torch

    cache = ib.PagedKVCache((1 << 20) // 16 + 4096 + 8, 16, 1, 8, dtype=torch.float16)
    ids = cache.add_sequences(4096)
    lens = [1 << 20] + [3] * 4095
    cache.append(ids, torch.randn(sum(lens), 1, 8), torch.randn(sum(lens), 1, 8), lengths=lens)
    ts = []
    for _ in range(20):
        t0 = time.perf_counter()
        cache.page_table(ids)
        ts.append(time.perf_counter() - t0)
    page_table = dict(sequences=4096, longest_tokens=1 << 20, page_size=16, median_ms=statistics.median(ts) * 1e3,
                      block_table_bytes=cache._table.nbytes())
    result = dict(benchmark="plan_time", page_table=page_table, host=platform.node(), cpu=platform.processor() or platform.machine(),
                  python=platform.python_version(), date=dt.date.today().isoformat(), target_us=1000, rows=rows)
    path = write_result(args.out, f"plan_{'gpuhost' if _has_gpu() else 'cpu'}_{result['date']}", result)
    for r in rows:
        print(f"{r['preset']:<24} {r['requests']} requests: median {r['median_us']:6.0f} us, p90 {r['p90_us']:6.0f} us "
              f"({r['units']} units -> {r['items']} items, {r['split_units']} split, imbalance {r['imbalance']:.3f})")
    print(f"page table of 4096 sequences (one of 1M tokens): {page_table['median_ms']:.1f} ms, block table "
          f"{page_table['block_table_bytes'] / 2**20:.1f} MiB")
    print(f"target < 1000 us -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
