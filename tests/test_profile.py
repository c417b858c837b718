"""infernb.profile's timing helpers: interleaved rounds (GPU) and the clear error without CUDA."""
import numpy as np
import pytest
import torch

import infernb as ib

gpu = pytest.mark.gpu                            # skipped without CUDA (tests/conftest.py)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only error")
def test_interleaved_timing_needs_cuda():
    with pytest.raises(RuntimeError, match="CUDA"):
        ib.profile.cuda_time_interleaved({"a": lambda: None})


@gpu
def test_interleaved_timing_orders_and_separates_paths():
    """Every path gets `runs` timings with p10 <= median <= p90, and a 64x larger matmul measures slower."""
    a, b = torch.randn(512, 512, device="cuda"), torch.randn(2048, 2048, device="cuda")
    t = ib.profile.cuda_time_interleaved({"small": lambda: a @ a, "large": lambda: b @ b}, warmup=3, runs=9)
    assert set(t) == {"small", "large"}
    for x in t.values():
        assert x.runs == 9 and 0 < x.p10_ms <= x.median_ms <= x.p90_ms
    assert t["large"].median_ms > 2 * t["small"].median_ms


def test_trace_phases_and_timeline_from_raw_rows():
    """trace_phases reads the kernel's 16 x u64 rows (global timer ns, clock deltas) into microseconds; empty rows
    are dropped; cta_timeline draws one bar per CTA and phase, merges in red."""
    rows = np.zeros((4, 16), np.uint64)
    clk = 2000                                        # clocks per microsecond (2 GHz)
    for i, (t0, t1, sm, merged) in enumerate([(1000, 11000, 5, False), (1500, 9500, 7, True), (1000, 8000, 5, False)]):
        rows[i, 0], rows[i, 1] = t0, t1               # ns
        rows[i, 2] = 2 * clk                          # first data 2 us after its start
        rows[i, 6] = 6 * clk                          # all warps done
        rows[i, 10] = (t1 - t0) // 1000 * clk         # total clocks
        rows[i, 11] = sm | (2 << 32)
        if merged:
            rows[i, 4], rows[i, 5] = 6 * clk + 200, 7 * clk
    ph = ib.profile.trace_phases(rows)
    assert len(ph["start"]) == 3 and ph["clock_mhz"] == pytest.approx(2000)
    assert ph["start"].tolist() == [0.0, 0.5, 0.0] and ph["end"].tolist() == [10.0, 8.5, 7.0]
    assert ph["first_data"].tolist() == [2.0, 2.5, 2.0] and ph["stream_end"].tolist() == [6.0, 6.5, 6.0]
    assert ph["sm"].tolist() == [5, 7, 5] and ph["items"].tolist() == [2, 2, 2]
    assert np.isnan(ph["merge_start"][0]) and ph["merge_end"][1] == pytest.approx(7.5)
    s = ib.profile.trace_summary(ph)
    assert s["merges"] == 1 and s["span_us"] == 10.0 and s["first_data"] == [2.0, 2.0, 2.0, 2.0]
    fig = ib.viz.cta_timeline(ph)
    assert [len(t.y) for t in fig.data] == [3, 3, 3, 1]
    with pytest.raises(ValueError, match="no CTA"):
        ib.profile.trace_phases(np.zeros((2, 16), np.uint64))


def test_committed_trace_draws():
    run = ib.profile.committed_results("trace_decode")
    assert run is not None, "benchmarks/results/trace_decode_*.json is committed"
    for name, case in run["cases"].items():
        fig = ib.viz.cta_timeline(case["phases"], subtitle=name)
        assert len(fig.data[0].y) == case["summary"]["ctas"] > 0


@gpu
def test_decode_trace_records_every_cta():
    """The trace build runs the same plan to the same output and records every CTA's phases in order."""
    from infernb.profile import random_decode_batch

    cache, ids, q = random_decode_batch([3000, 40, 9000], num_qo_heads=32, num_kv_heads=8, head_dim=128, page_size=16)
    table = cache.page_table(ids)
    p = ib.plan([1] * 3, cache.lengths(ids), page_table=table, num_qo_heads=32, num_kv_heads=8, head_dim=128,
                num_sms=20)
    raw = ib.profile.decode_trace(p, cache, table, q)
    ph = ib.profile.trace_phases(raw)
    assert raw.shape == (p.num_ctas, 16) and len(ph["start"]) == p.num_ctas
    assert (ph["start"] <= ph["first_data"]).all() and (ph["first_data"] <= ph["stream_end"]).all()
    assert (ph["stream_end"] <= ph["end"] + 1.0).all()    # (clock deltas vs the global timer: within ~0.3 us)
    assert 0 < (~np.isnan(ph["merge_start"])).sum() <= len(p.merge_unit)     # (a CTA keeps its last merge only)


def test_benchmark_stream_read_kernel_builds():
    """The read reference of benchmarks/bench_decode.py (infernb.profile.read) compiles for Hopper without spills."""
    from infernb.jit import build
    from infernb.profile.read import SPEC

    k = build(SPEC, arch="sm_90a")
    assert {r.name for r in k.report.kernels} >= {"read4", "read8", "read16", "empty"} and not k.report.spills


def test_library_and_tests_do_not_import_the_diagnostics_and_results_hold_json():
    # benchmarks/diag/ holds diagnostics: scripts over the library, never imported by it or by the tests
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    pat = re.compile(r"^\s*(from|import)\s+\S*diag\b|spec_from_file_location\([^)]*diag", re.M)
    for f in [*(root / "infernb").rglob("*.py"), *(root / "tests").rglob("*.py")]:
        assert not pat.search(f.read_text()), f"{f.relative_to(root)} imports benchmarks/diag"
    results = [p.name for p in (root / "benchmarks" / "results").iterdir()]
    assert results and all(n.endswith(".json") for n in results), [n for n in results if not n.endswith(".json")]


@pytest.mark.parametrize("causal,window", [(False, -1), (True, -1), (True, 3), (False, 2)])
def test_visible_pairs_counts_the_reference_mask(causal, window):
    """visible_pairs (the FLOP count of the prefill benchmark) equals the number of keys the reference's mask keeps."""
    qo, kv = [1, 5, 7, 0, 9], [4, 5, 12, 3, 9]
    brute = 0
    for L, S in zip(qo, kv):
        i = torch.arange(L)[:, None] + (S - L)
        j = torch.arange(S)[None, :]
        keep = torch.ones(L, S, dtype=torch.bool)
        if causal:
            keep &= j <= i
        if window >= 0:
            keep &= j >= i - window
        brute += int(keep.sum())
    assert ib.profile.visible_pairs(qo, kv, causal, window) == brute


def test_committed_prefill_run_draws():
    run = ib.profile.committed_results("prefill")
    assert run is not None and run["gemm_tflops"] > 0
    fig = ib.viz.tflops_bars(run["cases"], run["gemm_tflops"], subtitle="committed")
    names = {t.name for t in fig.data}
    assert {"infernb", "FlashInfer fa2"} <= names
    for c in run["cases"]:                                   # every path of every case was checked before timing
        assert all(e < 2e-2 for e in c["errors"].values()), c["case"]


def test_committed_hopper_run_draws_both_kernels():
    run = ib.profile.committed_results("hopper_prefill")
    assert run is not None and run["gemm_tflops"] > 0
    assert "infernb_sm90_ms" in run["cases"][0]
    fig = ib.viz.tflops_bars(run["cases"], run["gemm_tflops"], paths=ib.viz.profile.HOPPER_PATHS)
    names = {t.name for t in fig.data}
    assert {"infernb Hopper (wgmma + TMA)", "infernb mma.sync", "FlashInfer fa3", "torch SDPA cuDNN"} <= names
    for c in run["cases"]:                                   # every path of every case was checked before timing
        assert all(e < 2e-2 for e in c["errors"].values()), c["case"]
    # the mma.sync benchmark's committed run is not the Hopper one
    assert "infernb_sm90_ms" not in ib.profile.committed_results("prefill")["cases"][0]


def test_committed_results_pick_the_newest_complete_run(tmp_path, monkeypatch):
    """Partial runs (a suffix after the date: BENCH_CASES subsets) are never the committed run; dates decide."""
    import infernb.profile.decode as pd
    for name, date in (("x_GPU_2026-11-25", "a"), ("x_GPU_2026-11-30", "b"), ("x_GPU_2026-11-30_subset", "c"),
                       ("x_OTHER_2026-11-28", "d")):
        (tmp_path / f"{name}.json").write_text(f'{{"date": "{date}"}}')
    monkeypatch.setattr(pd, "RESULTS_DIR", tmp_path)
    assert pd.committed_results("x")["date"] == "b"
    assert pd.committed_results("x", tag="subset")["date"] == "c"
    assert pd.committed_results("y") is None


def test_prefill_comparison_paths_on_the_cpu():
    """The shared pieces of the prefill comparisons (bench_prefill, profile_prefill): SDPA's paths report what they
    cannot run, FlashInfer's wrapper is planned with the batch's shape, timings turn into the JSON's fields."""
    import types

    from infernb.profile.prefill import flashinfer_ragged, sdpa_paths, timing_fields
    from infernb.profile.timing import Timing

    q, k, v = torch.randn(5, 4, 16), torch.randn(7, 2, 16), torch.randn(7, 2, 16)
    calls, missing = sdpa_paths(q, k, v, causal=True)
    assert set(calls) | set(missing) == {"sdpa_flash", "sdpa_cudnn"}
    for call in calls.values():
        assert call().shape == q.shape
    seen = {}

    class Wrapper:
        def __init__(self, ws, layout, backend):
            seen.update(layout=layout, backend=backend)

        def plan(self, qo, kv, hq, hkv, d, **kw):
            seen.update(qo=qo.tolist(), kv=kv.tolist(), shape=(hq, hkv, d), **kw)

        def run(self, q, k, v):
            return q

    fi = types.SimpleNamespace(BatchPrefillWithRaggedKVCacheWrapper=Wrapper)
    run = flashinfer_ragged(fi, q, k, v, [2, 3], [3, 4], causal=True, workspace=torch.empty(0), window_left=2)
    assert run() is q
    assert seen == dict(layout="NHD", backend="fa2", qo=[0, 2, 5], kv=[0, 3, 7], shape=(4, 2, 16), causal=True,
                        q_data_type=torch.float32, window_left=2)
    row = timing_fields({"infernb": Timing(2.0, 1.5, 2.5, 10)}, 4e12)
    assert row == dict(infernb_ms=2.0, infernb_p10_ms=1.5, infernb_p90_ms=2.5, infernb_tflops=2000.0)


def test_flashinfer_paged_decode_and_block_sparse_wrappers_are_planned_with_the_problem():
    """The paged, decode and block-sparse FlashInfer calls (compare, the benchmarks) are planned with the cache's and
    the mask's shapes, in FlashInfer's argument order, and run on the tensors given (a stand-in module on the CPU)."""
    import types

    from infernb.ops.block_sparse import block_window
    from infernb.profile.prefill import flashinfer_block_sparse, flashinfer_decode, flashinfer_paged

    seen = []

    def wrapper(name):
        class W:
            def __init__(self, ws, *a, **kw):
                seen.append((name, "init", a, kw))

            def plan(self, *a, **kw):
                seen.append((name, "plan", [x.tolist() if isinstance(x, torch.Tensor) else x for x in a], kw))

            def run(self, *a):
                return a
        return W

    fi = types.SimpleNamespace(BatchPrefillWithPagedKVCacheWrapper=wrapper("paged"),
                               BatchDecodeWithPagedKVCacheWrapper=wrapper("decode"),
                               BlockSparseAttentionWrapper=wrapper("bsr"))
    cache = ib.PagedKVCache(num_pages=8, page_size=4, num_kv_heads=2, head_dim=16, dtype=torch.bfloat16)
    ids = cache.add_sequences(2)
    cache.append(ids, torch.randn(11, 2, 16).bfloat16(), torch.randn(11, 2, 16).bfloat16(), [6, 5])
    table = cache.page_table(ids)
    q = torch.randn(3, 4, 16).bfloat16()
    assert flashinfer_paged(fi, q, cache.pool, table, [2, 1], causal=True)() == (q, cache.pool)
    assert seen[-2][0:2] == ("paged", "init") and seen[-2][2] == ("NHD",) and seen[-2][3] == dict(backend="fa2")
    assert seen[-1][2] == [[0, 2, 3], table.indptr.tolist(), table.indices.tolist(), table.last_page_len.tolist(),
                           4, 2, 16, 4] and seen[-1][3] == dict(causal=True, q_data_type=torch.bfloat16)
    qd = q[:2]
    assert flashinfer_decode(fi, qd, cache.pool, table, use_tensor_cores=False)() == (qd, cache.pool)
    assert seen[-2][3] == dict(use_tensor_cores=False)
    assert seen[-1][2] == [table.indptr.tolist(), table.indices.tolist(), table.last_page_len.tolist(), 4, 2, 16, 4]
    assert seen[-1][3] == dict(data_type=torch.bfloat16, q_data_type=torch.bfloat16)
    mask = block_window(96, (32, 32), 2)
    qb, kb = torch.randn(96, 4, 16).bfloat16(), torch.randn(96, 2, 16).bfloat16()
    assert flashinfer_block_sparse(fi, qb, kb, kb, mask)() == (qb, kb, kb)
    assert seen[-1][2] == [mask.indptr.tolist(), mask.indices.tolist(), 96, 96, 32, 32, 4, 2, 16]


def test_sm90_trace_phases_and_warpgroup_timeline_from_raw_rows():
    """sm90_trace_phases reads the Hopper kernel's trace rows (header: global timer, clock64, SM and items; clock
    stamps per role, block and slot) into per-warpgroup segments in microseconds from the CTA's start; CTAs that did
    not run are dropped; warpgroup_timeline draws three rows per CTA."""
    from infernb.profile.trace import SM90_TR_BLOCKS, SM90_TR_CTA, SM90_TR_HEADER, SM90_TR_SLOTS

    raw = np.zeros((3, SM90_TR_CTA), np.uint64)
    clk0, mhz = 10_000, 2000.0                       # 2 clocks per ns
    raw[0, 0], raw[0, 1], raw[0, 2] = 5_000, clk0, 9 | (2 << 32)
    raw[0, 4], raw[0, 5] = 5_000 + 10_000, clk0 + 20_000          # 10 us later
    st = raw[0, SM90_TR_HEADER:].reshape(3, SM90_TR_BLOCKS, SM90_TR_SLOTS)
    us = lambda x: clk0 + int(x * mhz)  # noqa: E731
    st[0, 0, :3] = [us(0.0), us(0.0), us(0.1)]                    # producer: block 0 free at once, issued at 0.1
    st[0, 1, :3] = [us(0.2), us(1.0), us(1.1)]                    # block 1 waits 0.8 us for a free stage
    for c in (1, 2):                                              # consumers: two blocks, the second the item's last
        st[c, 0, :6] = [us(0.1), us(0.5), us(0.6), us(1.0), us(1.5), us(2.6)]
        st[c, 1, :8] = [us(1.5), us(1.6), us(1.7), us(2.0), us(2.5), us(3.0), us(3.0), us(3.5)]
    ph = ib.profile.sm90_trace_phases(raw)
    assert len(ph) == 1 and ph[0]["sm"] == 9 and ph[0]["items"] == 2
    assert ph[0]["clock_mhz"] == pytest.approx(2000) and ph[0]["span_us"] == pytest.approx(10.0)
    prod = ph[0]["roles"]["producer"]
    assert prod["waiting for a free stage"] == [[0.0, 0.0], [0.2, 1.0]] and prod["copies in flight (paged)"] == []
    c0 = ph[0]["roles"]["consumer 0"]
    assert c0["waiting for K/V"] == [[0.1, 0.5], [1.5, 1.6]] and c0["softmax"] == [[1.0, 1.5], [2.0, 2.5]]
    # block 0's P V is waited for after block 1's softmax (overlap); block 1's, the item's last, after its own
    assert c0["waiting for P V"] == [[2.5, 2.6], [2.5, 3.0]] and c0["epilogue"] == [[3.0, 3.5]]
    s = ib.profile.sm90_trace_summary(ph)
    # shares of the recorded time: from the CTA's start to its last recorded stamp (3.5 us), softmax 0.5 + 0.5 us
    assert s["consumer 1"]["softmax"] == pytest.approx(1.0 / 3.5, abs=1e-4)
    fig = ib.viz.warpgroup_timeline(ph)
    assert {t.y[0] for t in fig.data} == {"CTA 0 (SM 9) producer", "CTA 0 (SM 9) consumer 0", "CTA 0 (SM 9) consumer 1"}
    with pytest.raises(ValueError, match="no CTA"):
        ib.profile.sm90_trace_phases(np.zeros((2, SM90_TR_CTA), np.uint64))


@pytest.mark.parametrize("kv", ["ragged", "NHD"])
def test_sm90_trace_build_compiles(kv):
    """The Hopper kernel's trace build compiles (CPU, NVRTC) and holds the trace buffer; the plain build has none."""
    from infernb.jit import build
    from infernb.ops.prefill_sm90 import sm90_spec

    k = build(sm90_spec(torch.bfloat16, 128, True, kv=kv), "sm_90a", extra_options=("-DINFERNB_SM90_TRACE=2",))
    assert b"infernb_sm90_trace\0" in k.cubin                       # unmangled: the host finds it by name
    assert b"infernb_sm90_trace" not in build(sm90_spec(torch.bfloat16, 128, True, kv=kv), "sm_90a").cubin
