"""infernb.profile.jit_latency (benchmarks/bench_jit.py): one small specialization compiled cold and loaded warm on
the CPU (NVRTC needs no GPU), in the JSON schema of the committed run."""
import os

import pytest
import torch

import infernb as ib
from infernb.ops.merge import merge_spec
from infernb.profile.jit_latency import jit_benchmark, jit_summary


def test_jit_benchmark_builds_cold_then_warm_in_an_empty_cache():
    before = os.environ.get("INFERNB_CACHE_DIR")
    spec = merge_spec(torch.float16, 64)
    result = jit_benchmark([spec], warm_runs=2)
    assert os.environ.get("INFERNB_CACHE_DIR") == before                 # the temporary cache is gone again
    committed = ib.profile.committed_results("jit")
    assert committed is not None, "benchmarks/results/jit_*.json is committed"
    assert set(result) == set(committed) and result["benchmark"] == "jit_compile_latency"
    (row,) = result["rows"]
    assert set(row) == set(committed["rows"][0])
    assert row["spec"] == spec.name and row["arch"] == result["arch"] == ib.device_info().arch
    assert set(row["registers"]) == {"merge_state", "merge_states", "merge_gather"} and \
        all(r > 0 for r in row["registers"].values())
    assert row["spills"] == 0
    assert 0 < row["nvrtc_s"] <= row["cold_s"] + 1e-4 and row["warm_ms"] > 0
    assert row["warm_ms"] < row["cold_s"] * 1e3                           # reading the cache beats compiling
    assert result["max_cold_s"] == row["cold_s"] and result["max_warm_ms"] == row["warm_ms"]
    assert result["targets"] == committed["targets"] == dict(cold_s=3.0, warm_ms=50.0)
    text = jit_summary(result).splitlines()
    assert len(text) == 3 and text[1].startswith(spec.name) and "target 3" in text[2] and "target 50" in text[2]


def test_jit_benchmark_refuses_a_spec_listed_twice():
    spec = merge_spec(torch.float16, 64)
    with pytest.raises(RuntimeError, match="cold build hit the disk cache"):
        jit_benchmark([spec, spec], warm_runs=1)
