"""The LSE merge: splitting keys into parts and merging equals attention over all keys."""
import math

import pytest
import torch

from infernb import InputError
from infernb.reference import attention, merge_state, merge_states
from infernb.testing import assert_close


@pytest.mark.parametrize("causal", [False, True])
def test_two_way_split_equals_whole(gen, causal):
    q = torch.randn(3, 4, 16, generator=gen, dtype=torch.float64)
    k = torch.randn(20, 2, 16, generator=gen, dtype=torch.float64)
    v = torch.randn(20, 2, 16, generator=gen, dtype=torch.float64)
    whole, whole_lse = attention(q, k, v, causal=causal)
    # keys [0, 7) and [7, 20); with causal, part masks must use global positions -> custom masks
    pos = torch.arange(17, 20)[:, None]
    mask_a = (torch.arange(0, 7)[None] <= pos) if causal else torch.ones(3, 7, dtype=torch.bool)
    mask_b = (torch.arange(7, 20)[None] <= pos) if causal else torch.ones(3, 13, dtype=torch.bool)
    va, sa = attention(q, k[:7], v[:7], custom_mask=[mask_a])
    vb, sb = attention(q, k[7:], v[7:], custom_mask=[mask_b])
    vm, sm = merge_state(va, sa, vb, sb)
    assert_close(vm, whole, tol=1e-12)
    assert_close(sm, whole_lse, tol=1e-12)


@pytest.mark.parametrize("num_states", [1, 2, 3, 7])
def test_n_way_split_equals_whole(gen, num_states):
    q = torch.randn(5, 4, 8, generator=gen, dtype=torch.float64)
    k = torch.randn(29, 4, 8, generator=gen, dtype=torch.float64)
    v = torch.randn(29, 4, 8, generator=gen, dtype=torch.float64)
    whole, whole_lse = attention(q, k, v)
    cuts = torch.linspace(0, 29, num_states + 1).round().long().tolist()
    parts = [attention(q, k[a:b], v[a:b]) for a, b in zip(cuts, cuts[1:])]
    vm, sm = merge_states(torch.stack([p[0] for p in parts], 1), torch.stack([p[1] for p in parts], 1))
    assert_close(vm, whole, tol=1e-12)
    assert_close(sm, whole_lse, tol=1e-12)


def test_merge_is_associative_and_commutative(gen):
    v = torch.randn(6, 3, 2, 8, generator=gen, dtype=torch.float64)
    s = torch.randn(6, 3, 2, generator=gen, dtype=torch.float64) * 5
    all3 = merge_states(v, s)
    ab = merge_state(v[:, 0], s[:, 0], v[:, 1], s[:, 1])
    abc = merge_state(*ab, v[:, 2], s[:, 2])
    ba = merge_state(v[:, 1], s[:, 1], v[:, 0], s[:, 0])
    assert_close(abc[0], all3[0], tol=1e-13)
    assert_close(abc[1], all3[1], tol=1e-13)
    assert_close(ba[0], ab[0], tol=1e-15)


def test_minus_inf_parts(gen):
    v = torch.randn(3, 2, 2, 4, generator=gen, dtype=torch.float64)
    s = torch.randn(3, 2, 2, generator=gen, dtype=torch.float64)
    s[0, 0] = -math.inf                     # one empty part: the other passes through
    s[1] = -math.inf                        # all empty: 0 and -inf
    out, lse = merge_states(v, s)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    assert torch.allclose(out[0], v[0, 1]) and torch.allclose(lse[0], s[0, 1])
    assert torch.equal(out[1], torch.zeros_like(out[1])) and bool((lse[1] == -math.inf).all())
    # huge LSEs do not overflow
    s2 = torch.full((1, 2, 1), 1e4, dtype=torch.float64)
    o2, l2 = merge_states(v[:1, :, :1], s2)
    assert torch.allclose(o2[0, 0], v[0, :, 0].mean(0)) and math.isclose(float(l2), 1e4 + math.log(2))


def test_invalid_lse_is_nan_and_no_states_is_empty(gen):
    v = torch.randn(3, 2, 1, 4, generator=gen, dtype=torch.float64)
    s = torch.tensor([[[float("nan")], [0.0]], [[float("inf")], [0.0]], [[1.0], [2.0]]], dtype=torch.float64)
    out, lse = merge_states(v, s)
    assert torch.isnan(out[:2]).all() and torch.isnan(lse[:2]).all()
    assert torch.isfinite(out[2]).all() and torch.isfinite(lse[2]).all()
    out, lse = merge_states(v[:, :0], s[:, :0])
    assert out.shape == (3, 1, 4) and (out == 0).all() and (lse == -math.inf).all()


def test_errors():
    with pytest.raises(InputError, match="s: expected shape"):
        merge_states(torch.zeros(2, 3, 4, 8), torch.zeros(2, 3, 5))
    with pytest.raises(InputError, match="v_b: expected shape"):
        merge_state(torch.zeros(2, 4, 8), torch.zeros(2, 4), torch.zeros(2, 4, 9), torch.zeros(2, 4))
