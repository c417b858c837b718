"""infernb.profile.merge_cases (benchmarks/bench_merge.py) on the CPU: inputs, byte counts, the paths (FlashInfer's
base-2 LSE through a stand-in) and their checks against float64, and the whole benchmark with a stand-in timer (the
GPU timing itself runs on a GPU machine), in the JSON schema of the committed run."""
import math
import types

import pytest
import torch

import infernb as ib
from infernb import reference
from infernb.profile.merge_cases import (check_merge_path, merge_benchmark, merge_bytes, merge_inputs, merge_paths,
                                         merge_summary, merge_timing_fields)
from infernb.profile.timing import Timing


def _fake_flashinfer():
    """FlashInfer's merge_states contract: base-2 LSEs in and out."""
    def merge_states(v, s2):
        ov, os_ = reference.merge_states(v, s2 * math.log(2), compute_dtype=torch.float64)
        return ov.to(v.dtype), (os_ / math.log(2)).float()
    return types.SimpleNamespace(merge_states=merge_states, __version__="stand-in")


def test_merge_bytes_counts_states_in_and_merged_out():
    v, s = merge_inputs(3, 2, 4, 8, generator=torch.Generator().manual_seed(0), device="cpu")
    assert v.shape == (3, 2, 4, 8) and v.dtype == torch.bfloat16 and s.shape == (3, 2, 4) and s.dtype == torch.float32
    assert merge_bytes(v, s) == 3 * 2 * 4 * 8 * 2 + 3 * 2 * 4 * 4 + 3 * 4 * 8 * 2 + 3 * 4 * 4
    for r in ib.profile.committed_results("merge")["rows"]:   # the committed rows count the same bytes
        n, k, h, d = r["seq_len"], r["num_states"], r["num_heads"], r["head_dim"]
        assert merge_bytes(torch.empty(n, k, h, d, dtype=torch.bfloat16, device="meta"),
                           torch.empty(n, k, h, device="meta")) == r["bytes"]


def test_every_path_passes_its_check_and_a_wrong_one_fails():
    v, s = merge_inputs(5, 3, 4, 64, generator=torch.Generator().manual_seed(1), device="cpu")
    ref_v, ref_s = reference.merge_states(v, s, compute_dtype=torch.float64)
    paths = merge_paths(v, s, _fake_flashinfer())
    assert list(paths) == ["infernb", "torch_eager_fp32", "flashinfer"]
    assert list(merge_paths(v, s)) == ["infernb", "torch_eager_fp32"]
    for name, fn in paths.items():
        errs = check_merge_path(name, fn, ref_v, ref_s, torch.bfloat16)
        assert set(errs) == {f"{name}_err_v", f"{name}_err_lse"} and max(errs.values()) < 1e-2
    assert check_merge_path("flashinfer", paths["flashinfer"], ref_v, ref_s, torch.bfloat16)["flashinfer_err_lse"] \
        < 1e-6                                                 # the base-2 LSE converted back exactly
    with pytest.raises(AssertionError, match="wrong v"):
        check_merge_path("wrong", lambda: (v[:, 0], s[:, 0]), ref_v, ref_s, torch.bfloat16)


def test_merge_benchmark_assembles_the_committed_schema_on_the_cpu():
    calls = []

    def timer(fn, *, warmup, runs):                     # stand-in for cuda_time: no GPU here
        calls.append((warmup, runs))
        return Timing(0.002, 0.001, 0.004, runs)

    cases = [(1, 2, 4, 64), (16, 3, 2, 128)]
    result = merge_benchmark(cases, warmup=1, runs=2, flashinfer=False, device="cpu", timer=timer)
    assert calls == [(1, 2)] * 4                        # two paths per case
    committed = ib.profile.committed_results("merge")
    assert committed is not None, "benchmarks/results/merge_*.json is committed"
    assert set(result) == set(committed) and result["benchmark"] == "merge_states" and result["flashinfer"] is None
    flashinfer_keys = {k for k in committed["rows"][0] if k.startswith("flashinfer_")}
    for r, (n, k, h, d) in zip(result["rows"], cases, strict=True):
        assert set(r) == set(committed["rows"][0]) - flashinfer_keys
        assert (r["seq_len"], r["num_states"], r["num_heads"], r["head_dim"], r["dtype"]) == (n, k, h, d,
                                                                                             "torch.bfloat16")
        assert r["infernb_TBps"] == pytest.approx(r["bytes"] / 0.002e-3 / 1e12)
        assert r["infernb_err_v"] < 1e-2 and r["torch_eager_fp32_err_lse"] < 1e-6
    text = merge_summary(result).splitlines()
    assert len(text) == 4 and "flashinfer" not in text[0] and text[1].startswith("(1, 2, 4, 64)")


def test_timing_fields_and_summary_of_the_committed_run():
    f = merge_timing_fields("infernb", Timing(2.0, 1.0, 3.0, 50), 4_000_000_000)
    assert f == dict(infernb_ms=2.0, infernb_p10_ms=1.0, infernb_p90_ms=3.0, infernb_TBps=pytest.approx(2.0))
    committed = ib.profile.committed_results("merge")
    for r in committed["rows"]:                         # the committed rates are bytes / median time
        for p in ("infernb", "torch_eager_fp32", "flashinfer"):
            t = Timing(r[f"{p}_ms"], r[f"{p}_p10_ms"], r[f"{p}_p90_ms"], 50)
            assert merge_timing_fields(p, t, r["bytes"]) == pytest.approx({k: r[k] for k in f"{p}_ms {p}_p10_ms "
                                                                            f"{p}_p90_ms {p}_TBps".split()})
    lines = merge_summary(committed).splitlines()
    assert "infernb/flashinfer" in lines[0] and len(lines) == len(committed["rows"]) + 2
    r0 = committed["rows"][0]
    assert lines[1].rstrip().endswith(f"{r0['flashinfer_ms'] / r0['infernb_ms']:.2f}x")
