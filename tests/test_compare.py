"""ib.profile.compare and its pictures and panel: the committed runs on the CPU, a small problem on the GPU."""
import pytest
import torch

import infernb as ib

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run `pytest -m gpu tests` on a "
                                                               "GPU machine)")


def test_committed_compare_runs_have_every_field_the_pictures_read():
    c = ib.profile.committed_compare()
    assert c and c["benchmark"] == "compare" and c["results"]
    for r in c["results"]:
        assert r["op"] in ib.profile.OPS and r["paths"]["infernb"]["err"] < 1e-2
        for lab, p in r["paths"].items():
            assert p["ms"] > 0 and 0 <= p["err"] < 1e-2, (r["case"], lab)
            assert p["TFLOPs"] == pytest.approx(r["flops"] / (p["ms"] * 1e-3) / 1e12)
        assert r["copy_TBps"] > 0 and r["gemm_TFLOPs"] > 0


def test_compare_bars_and_roofline_draw_every_path():
    c = ib.profile.committed_compare()
    r = next(x for x in c["results"] if x["case"] == "prefill 1 x 8192" and x["variant"] is None)
    fig = ib.viz.compare_bars(r)
    assert len(fig.data[0].y) == len(r["paths"]) and "committed" not in fig.layout.title.text
    assert fig.layout.xaxis.type == "log"
    ms = sorted(p["ms"] for p in r["paths"].values())
    assert list(fig.data[0].x) == ms                                   # fastest first
    roof = ib.viz.roofline(c["results"])
    points = [t for t in roof.data if t.mode == "markers"]
    assert len(points) == sum(len(x["paths"]) for x in c["results"])
    assert any(t.mode == "lines" and "roof" in t.name for t in roof.data)


def test_compare_table_and_case_names():
    r = ib.profile.committed_compare()["results"][0]
    lines = ib.profile.compare_table(r).splitlines()
    assert len(lines) == 1 + len(r["paths"]) and "speed vs infernb" in lines[0]
    assert ib.profile.case_name("append", [512] * 16, [8704] * 16) == "append 16 x 512 on 8704"
    assert ib.profile.case_name("prefill", [8192], [8192]) == "prefill 1 x 8192"
    assert ib.profile.case_name("decode", [1, 1], [5, 9]) == "decode 2 requests, 14 keys"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU behaviour")
def test_compare_without_a_gpu_points_to_the_committed_runs():
    with pytest.raises(ib.InputError, match="committed_compare"):
        ib.profile.compare("prefill", [16], [16])
    with pytest.raises(ib.InputError, match="op"):
        ib.profile.compare("train", [16], [16])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU behaviour")
def test_profiler_panel_offers_the_committed_problems_and_redraws():
    p = ib.widgets.ProfilerPanel()
    assert p.run_button.disabled and "committed run" in p.status.value
    first = p.bars.layout.title.text
    p.problem.value = "prefill 1 x 8192 · alibi_h32"
    assert p.bars.layout.title.text != first and "alibi_h32" in p.bars.layout.title.text
    assert set(p.bars.data[0].y) >= {"infernb", "FlexAttention (compiled)"}
    assert p.run() is None and "no GPU" in p.status.value


@gpu
@pytest.mark.gpu
def test_gpu_compare_small_problems():
    for op, qo, kv in (("prefill", [100, 37], [100, 60]), ("decode", [1, 1], [300, 17]), ("append", [5], [40])):
        r = ib.profile.compare(op, qo, kv, num_qo_heads=8, num_kv_heads=2, runs=2, flex=False, progress=False)
        assert r["paths"]["infernb"]["err"] < 1e-2 and r["paths"]["eager_fp32"]["err"] < 1e-4
        assert r["copy_TBps"] > 0 and r["gemm_TFLOPs"] > 0
    # block-sparse: a block window (all blocks full: FlashInfer's wrapper too) and a data mask with partial blocks
    from infernb.ops.block_sparse import block_window
    dense = torch.rand(200, 300, generator=torch.Generator().manual_seed(0)) < 0.3
    for mask, causal in ((block_window(256, (32, 32), 3), False), (ib.BlockSparse.from_dense(dense, (16, 32)), True)):
        M, N = mask.shape
        r = ib.profile.compare("block_sparse", [M], [N], mask=mask, causal=causal, num_qo_heads=8, num_kv_heads=2,
                               runs=2, flex=False, progress=False)
        assert r["paths"]["infernb"]["err"] < 1e-2 and r["paths"]["eager_fp32"]["err"] < 1e-4, r["paths"]
        assert r["flops"] == 4 * 8 * 128 * int((mask.to_dense() & (torch.ones(M, N, dtype=torch.bool).tril(N - M)
                                                                    if causal else True)).sum())
        if not causal:
            assert r["paths"]["sdpa_masked"]["err"] < 1e-2


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU behaviour")
def test_compare_sweep_reports_each_failed_problem():
    results, failed = ib.profile.compare_sweep([("prefill", [8], [8], None), ("decode", [1], [5], None)],
                                               progress=False)
    assert results == [] and set(failed) == {"prefill 1 x 8", "decode 1 x 5"}
    assert all("committed_compare" in why for why in failed.values())
