"""infernb.profile.plan_time (benchmarks/bench_plan.py): the planner and page-table timings on tiny sizes, on the CPU,
in the JSON schema of the committed runs."""
import pytest

import infernb as ib
from infernb.plan import presets
from infernb.profile.plan_time import PLAN_SHAPE, page_table_time, plan_benchmark, plan_rows, plan_summary


def test_plan_rows_time_each_preset_and_report_its_plan():
    rows = plan_rows(8, warmup=1, runs=5)
    assert [r["preset"] for r in rows] == list(presets.PRESETS)
    for r in rows:
        assert r["requests"] == 8 and 0 < r["median_us"] <= r["p90_us"]
        s = ib.plan(*presets.batch(r["preset"], 8), **PLAN_SHAPE).stats()     # the plan it timed
        assert (r["units"], r["items"], r["split_units"]) == (s["units"], s["items"], s["split_units"])
        assert r["imbalance"] == pytest.approx(s["imbalance"])


def test_page_table_time_sizes_the_cache_for_the_long_sequence():
    small, large = page_table_time(4, 64, runs=2), page_table_time(4, 4096, page_size=16, runs=2)
    assert (large["sequences"], large["longest_tokens"], large["page_size"]) == (4, 4096, 16)
    assert large["median_ms"] > 0
    assert large["block_table_bytes"] > small["block_table_bytes"] > 0   # one row of 256 pages vs 4


def test_plan_benchmark_writes_the_committed_schema():
    result = plan_benchmark(4, warmup=1, runs=3, page_table=dict(sequences=8, longest=256, runs=2))
    committed = ib.profile.committed_results("plan")
    assert committed is not None, "benchmarks/results/plan_*.json is committed"
    assert set(result) == set(committed) | {"page_table"}           # (the committed runs predate page_table)
    assert result["benchmark"] == committed["benchmark"] == "plan_time" and result["target_us"] == 1000
    assert [set(r) for r in result["rows"]] == [set(r) for r in committed["rows"]]
    assert result["page_table"]["sequences"] == 8 and result["page_table"]["longest_tokens"] == 256
    lines = plan_summary(result).splitlines()
    assert len(lines) == len(presets.PRESETS) + 2 and lines[0].startswith("uniform ") and "4 requests" in lines[0]
    assert "page table of 8 sequences (one of 256 tokens)" in lines[-2]
    assert "one of 1M tokens" in plan_summary(dict(result, page_table=dict(result["page_table"], longest_tokens=2**20)))
