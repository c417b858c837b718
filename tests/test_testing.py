import math

import pytest
import torch

from infernb.testing import assert_close, poison_, rel_error, tolerance


def test_rel_error_basics():
    r = torch.tensor([3.0, 4.0])
    assert rel_error(r, r) == 0
    assert math.isclose(rel_error(r + torch.tensor([0.0, 0.5]), r), 0.1)
    assert rel_error(torch.tensor([float("nan"), 4.0]), r) == math.inf
    inf = torch.tensor([-math.inf, 1.0])
    assert rel_error(inf, inf) == 0                      # matching -inf (empty rows) are equal
    assert rel_error(torch.tensor([0.0, 1.0]), inf) == math.inf
    with pytest.raises(ValueError, match="shape mismatch"):
        rel_error(r, r[:1])


def test_assert_close_and_tolerances():
    assert tolerance(torch.bfloat16) == 1e-2 and tolerance(torch.float16) < tolerance(torch.bfloat16)
    r = torch.randn(100, dtype=torch.float64)
    assert_close(r.bfloat16(), r)
    with pytest.raises(AssertionError, match="relative error"):
        assert_close(r.bfloat16(), r, torch.float32)
    with pytest.raises(ValueError, match="no tolerance"):
        tolerance(torch.int8)


def test_poison():
    t = poison_(torch.zeros(3))
    assert torch.isnan(t).all()
    assert (poison_(torch.zeros(3, dtype=torch.int32)) == -1).all()


def test_rowwise_catches_one_bad_row(gen):
    ref = torch.randn(500, 64, dtype=torch.float64, generator=gen)
    ref = ref / ref.norm(dim=1, keepdim=True)        # rows of equal norm: the error below is exactly 0.2 / sqrt(500)
    out = ref.clone()
    out[123] = ref[123] * 1.2                       # one row 20% off: invisible in the whole-tensor norm
    assert abs(rel_error(out, ref) - 0.2 / 500 ** 0.5) < 1e-12 and rel_error(out, ref) < 1e-2
    assert_close(out, ref, tol=1e-2)
    with pytest.raises(AssertionError, match="row 123"):
        assert_close(out, ref, tol=1e-2, rowwise=True)
    big = torch.randn(10000, 8, dtype=torch.float64, generator=gen)
    bad = big.clone()
    bad[7777, 3] += 5
    from infernb.testing import max_row_error
    assert max_row_error(bad, big)[1] == 7777
