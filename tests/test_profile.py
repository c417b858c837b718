"""infernb.profile's timing helpers: interleaved rounds (GPU) and the clear error without CUDA."""
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
