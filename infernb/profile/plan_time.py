"""Planning time on the CPU (``benchmarks/bench_plan.py`` writes the JSON): the planner runs every decode step, so
building and validating a :class:`~infernb.plan.Plan` must be cheap (issue 5: 256 requests in under 1 ms); and the
page table a step hands the kernels (:meth:`~infernb.layout.PagedKVCache.page_table`) of a batch with one very long
sequence. Wall-clock times (``time.perf_counter``) of the host code; nothing here needs a GPU."""
from __future__ import annotations

import datetime as dt
import platform
import statistics
import time

import torch

from ..plan import plan as make_plan
from ..plan import presets as _presets

#: the problem every preset is planned for: 32 query / 8 KV heads, head dim 128, 132 CTAs (an H100's SMs)
PLAN_SHAPE = dict(num_qo_heads=32, num_kv_heads=8, head_dim=128, num_sms=132)
#: issue 5's target for 256 requests, in microseconds
TARGET_US = 1000


def plan_rows(requests: int = 256, *, presets=_presets.PRESETS, warmup: int = 20, runs: int = 200,
              **shape) -> list[dict]:
    """Time :func:`infernb.plan` for each preset batch (:func:`infernb.plan.presets.batch`) of ``requests`` requests.

    ``warmup`` untimed calls, then ``runs`` calls each timed on its own; ``shape``: plan keyword arguments
    (default :data:`PLAN_SHAPE`). Returns one row per preset: ``{preset, requests, median_us, p90_us, units, items,
    split_units, imbalance}`` (times in microseconds per call; the rest from ``Plan.stats()``).
    """
    kw = dict(PLAN_SHAPE, **shape)
    rows = []
    for preset in presets:
        qo, kv = _presets.batch(preset, requests)
        for _ in range(warmup):
            p = make_plan(qo, kv, **kw)
        ts = []
        for _ in range(runs):
            t0 = time.perf_counter()
            p = make_plan(qo, kv, **kw)
            ts.append(time.perf_counter() - t0)
        ts.sort()
        s = p.stats()
        rows.append(dict(preset=preset, requests=requests, median_us=statistics.median(ts) * 1e6,
                         p90_us=ts[int(0.9 * len(ts))] * 1e6, units=s["units"], items=s["items"],
                         split_units=s["split_units"], imbalance=s["imbalance"]))
    return rows


def page_table_time(sequences: int = 4096, longest: int = 1 << 20, *, page_size: int = 16, short: int = 3,
                    runs: int = 20) -> dict:
    """Time :meth:`~infernb.layout.PagedKVCache.page_table` of a CPU cache holding ``sequences`` sequences: one of
    ``longest`` tokens, the others of ``short`` (1 KV head, head dim 8, fp16: the table's size, not the data's,
    matters). Returns ``{sequences, longest_tokens, page_size, median_ms, block_table_bytes}`` (the median of ``runs``
    calls in milliseconds; the block table's memory in bytes)."""
    from ..layout import PagedKVCache

    cache = PagedKVCache(-(-longest // page_size) + sequences + 8, page_size, 1, 8, dtype=torch.float16)
    ids = cache.add_sequences(sequences)
    lens = [longest] + [short] * (sequences - 1)
    cache.append(ids, torch.randn(sum(lens), 1, 8), torch.randn(sum(lens), 1, 8), lengths=lens)
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        cache.page_table(ids)
        ts.append(time.perf_counter() - t0)
    return dict(sequences=sequences, longest_tokens=longest, page_size=page_size, median_ms=statistics.median(ts) * 1e3,
                block_table_bytes=cache._table.nbytes())


def plan_benchmark(requests: int = 256, *, warmup: int = 20, runs: int = 200, page_table: dict | None = None) -> dict:
    """The planning benchmark's JSON: :func:`plan_rows` of ``requests`` requests (``warmup``, ``runs``), then
    :func:`page_table_time` (``page_table``: its keyword arguments; default 4096 sequences, one of 1M tokens).

    Returns ``{benchmark: "plan_time", page_table, host, cpu, python, date, target_us, rows}``.
    """
    rows = plan_rows(requests, warmup=warmup, runs=runs)
    table = page_table_time(**(page_table or {}))
    return dict(benchmark="plan_time", page_table=table, host=platform.node(),
                cpu=platform.processor() or platform.machine(), python=platform.python_version(),
                date=dt.date.today().isoformat(), target_us=TARGET_US, rows=rows)


def plan_summary(result: dict) -> str:
    """A :func:`plan_benchmark` result as text: one line per preset, then the page table's."""
    lines = [f"{r['preset']:<24} {r['requests']} requests: median {r['median_us']:6.0f} us, p90 {r['p90_us']:6.0f} us "
             f"({r['units']} units -> {r['items']} items, {r['split_units']} split, imbalance {r['imbalance']:.3f})"
             for r in result["rows"]]
    t = result.get("page_table")
    if t is not None:
        n = t["longest_tokens"]
        longest = f"{n >> 20}M" if n and n % 2**20 == 0 else str(n)
        lines.append(f"page table of {t['sequences']} sequences (one of {longest} tokens): "
                     f"{t['median_ms']:.1f} ms, block table {t['block_table_bytes'] / 2**20:.1f} MiB")
    lines.append(f"target < {result['target_us']} us")
    return "\n".join(lines)
