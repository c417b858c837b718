"""The emulator executes plans item by item and merges split rows: it must equal the reference on the batch."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import infernb as ib
from infernb import reference
from infernb.layout import PagedKVCache
from infernb.testing import assert_close

TIGHT = 1e-12


def batch(kind, B, rng, max_kv=300):
    if kind == "uniform":
        kv = np.full(B, int(rng.integers(1, max_kv)))
    elif kind == "skewed":
        kv = np.r_[rng.integers(max_kv // 2, max_kv * 3), rng.integers(1, 20, B - 1)]
    elif kind == "long-tail":
        kv = np.minimum(np.minimum(rng.zipf(1.5, B), 1000) * 7, max_kv * 2)
    else:                                                     # mixed decode + prefill/append
        kv = rng.integers(0, max_kv, B)
    qo = np.where(rng.random(B) < (0.5 if kind == "mixed" else 0.15), np.minimum(kv, rng.integers(1, 40, B)),
                  np.minimum(kv, 1))
    return qo.astype(int).tolist(), kv.astype(int).tolist()


CASES = st.tuples(st.sampled_from(["uniform", "skewed", "long-tail", "mixed"]), st.integers(1, 6),
                  st.integers(0, 2**31), st.sampled_from([1, 3, 8, 16, 64]), st.sampled_from([1, 2, 4, 8]),
                  st.sampled_from([1, 2]), st.sampled_from([2, 5, 16]), st.booleans(),
                  st.sampled_from(["none", "window", "softcap", "alibi"]), st.sampled_from(["NHD", "HND"]))


@settings(max_examples=150, deadline=None, derandomize=True)
@given(CASES)
def test_emulator_equals_reference_on_random_batches(case):
    kind, B, seed, page, group, hkv, sms, causal, variant, layout = case
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    qo, kv = batch(kind, B, rng)
    hq, d = hkv * group, 16
    cache = PagedKVCache(sum(-(-x // page) for x in kv) + 2, page, hkv, d, dtype=torch.float32, layout=layout)
    ids = cache.add_sequences(B)
    k = torch.randn(sum(kv), hkv, d, generator=gen, dtype=torch.float64)
    v = torch.randn(sum(kv), hkv, d, generator=gen, dtype=torch.float64)
    cache.append(ids, k, v, kv)
    table = cache.page_table(ids)
    q = torch.randn(sum(qo), hq, d, generator=gen, dtype=torch.float64)
    window = int(rng.integers(0, 50)) if variant == "window" else -1
    opts = {}
    if variant == "softcap":
        opts["logits_soft_cap"] = 3.0
    if variant == "alibi":
        opts["alibi_slopes"] = torch.rand(hq, generator=gen, dtype=torch.float64)
    p = ib.plan(qo, kv, num_qo_heads=hq, num_kv_heads=hkv, head_dim=d, page_size=page, page_table=table,
                causal=causal, window_left=window, num_sms=sms, tile_q=int(rng.choice([group, 4 * group, 16])))
    out, lse = ib.run(p, q, cache, page_table=table, **opts)
    k32, v32 = k.float().double(), v.float().double()           # what the fp32 pool holds
    ref, ref_lse = reference.attention(q, k32, v32, np.r_[0, np.cumsum(qo)].tolist(), np.r_[0, np.cumsum(kv)].tolist(),
                                       causal=causal, window_left=window, **opts)
    assert_close(out, ref, tol=TIGHT, rowwise=True)
    assert_close(lse, ref_lse, tol=TIGHT, rowwise=True)


def test_split_rows_really_are_split_and_merged():
    """A skewed batch on few CTAs: the long row is cut into several items merged by LSE; exact anyway."""
    gen = torch.Generator().manual_seed(0)
    qo, kv = [1, 1, 1], [1000, 10, 10]
    p = ib.plan(qo, kv, num_qo_heads=4, num_kv_heads=2, head_dim=16, num_sms=8)
    assert len(p.merge_unit) >= 2 and p.merge_indptr[-1] >= 6
    q = torch.randn(3, 4, 16, generator=gen, dtype=torch.float64)
    k = torch.randn(1020, 2, 16, generator=gen, dtype=torch.float64)
    v = torch.randn(1020, 2, 16, generator=gen, dtype=torch.float64)
    out, lse = ib.emulate(p, q, k, v, rope=reference.RoPE(theta=100.0), sm_scale=0.3)
    ref, ref_lse = reference.attention(q, k, v, [0, 1, 2, 3], [0, 1000, 1010, 1020], rope=reference.RoPE(theta=100.0),
                                       sm_scale=0.3)
    assert_close(out, ref, tol=TIGHT, rowwise=True)
    assert_close(lse, ref_lse, tol=TIGHT, rowwise=True)


def test_block_masked_plan_matches_reference():
    gen = torch.Generator().manual_seed(1)
    mm = lambda b, h, q, k: (k <= q) & ((q - k < 20) | (k < 8))   # noqa: E731  sliding window + sink tokens
    qo, kv = [48, 1], [64, 40]
    masks = [ib.BlockSparse.from_mask_mod(mm, L, S, (8, 8)) for L, S in zip(qo, kv)]
    p = ib.plan(qo, kv, num_qo_heads=4, num_kv_heads=2, head_dim=16, num_sms=6, block_masks=masks, tile_q=16)
    q = torch.randn(49, 4, 16, generator=gen, dtype=torch.float64)
    k = torch.randn(104, 2, 16, generator=gen, dtype=torch.float64)
    v = torch.randn(104, 2, 16, generator=gen, dtype=torch.float64)
    dense = [m.to_dense() for m in masks]
    out, lse = ib.emulate(p, q, k, v, custom_masks=dense)
    ref, ref_lse = reference.attention(q, k, v, [0, 48, 49], [0, 64, 104], mask_mod=mm)
    assert_close(out, ref, tol=TIGHT, rowwise=True)
    assert_close(lse, ref_lse, tol=TIGHT, rowwise=True)


def test_block_masked_plans_with_empty_tail_and_required_masks():
    gen = torch.Generator().manual_seed(2)
    masks = [ib.BlockSparse.from_mask_mod(lambda b, h, q, k: k <= q, 1, 4, (1, 2)),
             ib.BlockSparse.from_mask_mod(lambda b, h, q, k: k <= q, 1, 0, (1, 2))]
    p = ib.plan([1, 1], [4, 0], num_qo_heads=2, num_kv_heads=1, head_dim=16, num_sms=4, block_masks=masks, check=True)
    q = torch.randn(2, 2, 16, generator=gen, dtype=torch.float64)
    k = torch.randn(4, 1, 16, generator=gen, dtype=torch.float64)
    v = torch.randn(4, 1, 16, generator=gen, dtype=torch.float64)
    with pytest.raises(ib.InputError, match="built with block_masks"):
        ib.emulate(p, q, k, v)
    out, lse = ib.emulate(p, q, k, v, custom_masks=[m.to_dense() for m in masks])
    ref, ref_lse = reference.attention(q, k, v, [0, 1, 2], [0, 4, 4], custom_mask=[m.to_dense() for m in masks])
    assert_close(out, ref, tol=TIGHT)
    assert_close(lse, ref_lse, tol=TIGHT)


def test_page_table_must_match_the_plan():
    cache = PagedKVCache(8, 4, 1, 16, dtype=torch.float32)
    ids = cache.add_sequences(2)
    cache.append(ids, torch.randn(8, 1, 16), torch.randn(8, 1, 16), [5, 3])
    p = ib.plan([1, 1], [3, 5], num_qo_heads=1, num_kv_heads=1, head_dim=16, num_sms=2, page_size=4)
    with pytest.raises(ib.InputError, match="page_table does not match the plan"):
        ib.run(p, torch.randn(2, 1, 16), cache, page_table=cache.page_table(ids))


def test_emulator_input_errors():
    p = ib.plan([1], [10], num_qo_heads=2, num_kv_heads=1, head_dim=16, num_sms=2)
    with pytest.raises(ib.InputError, match="q: expected shape"):
        ib.emulate(p, torch.randn(2, 2, 16), torch.randn(10, 1, 16), torch.randn(10, 1, 16))
    with pytest.raises(ib.InputError, match="k/v: expected"):
        ib.emulate(p, torch.randn(1, 2, 16), torch.randn(9, 1, 16), torch.randn(9, 1, 16))
    with pytest.raises(ib.InputError, match="needs k and v"):
        ib.emulate(p, torch.randn(1, 2, 16))
