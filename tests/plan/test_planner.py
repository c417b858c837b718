"""The planner: validation, determinism, balance, structure of the partition."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import infernb as ib
from infernb import InputError
from infernb.layout import PagedKVCache
from infernb.plan import presets

KW = dict(num_qo_heads=32, num_kv_heads=8, head_dim=128, num_sms=132, ctas_per_sm=1)


def test_input_errors():
    with pytest.raises(InputError, match="kv_lens: lengths must be >= 0, but request 1 has -3"):
        ib.plan([1, 1], [5, -3], **KW)
    with pytest.raises(InputError, match="qo_lens has 2 requests but kv_lens has 1"):
        ib.plan([1, 1], [5], **KW)
    with pytest.raises(InputError, match="request 0 has qo_len 9 > kv_len 5"):
        ib.plan([9], [5], causal=True, **KW)
    with pytest.raises(InputError, match="multiple of num_kv_heads"):
        ib.plan([1], [5], num_qo_heads=6, num_kv_heads=4, head_dim=64)
    with pytest.raises(InputError, match="qo_lens: expected a 1-D sequence of integers"):
        ib.plan([1.5], [5], **KW)
    with pytest.raises(InputError, match="strategy"):
        ib.plan([1], [5], strategy="greedy", **KW)
    with pytest.raises(InputError, match="num_sms: expected a positive integer, got 0"):
        ib.plan([1], [5], num_qo_heads=4, num_kv_heads=1, head_dim=64, num_sms=0)
    with pytest.raises(InputError, match="tile_q: expected a positive integer"):
        ib.plan([1], [5], tile_q=2.5, **KW)
    cache = PagedKVCache(16, 4, 8, 16)
    ids = cache.add_sequences(2)
    cache.append(ids, torch.randn(9, 8, 16), torch.randn(9, 8, 16), [5, 4])
    t = cache.page_table(ids)
    ib.plan([1, 1], [5, 4], page_table=t, page_size=4, **KW)
    with pytest.raises(InputError, match="page_table does not match kv_lens: request 1 has 4 tokens in the table"):
        ib.plan([1, 1], [5, 7], page_table=t, page_size=4, **KW)
    with pytest.raises(InputError, match="page_table.page_size = 4 but page_size = 16"):
        ib.plan([1, 1], [5, 4], page_table=t, **KW)


def test_deterministic():
    qo, kv = presets.batch("zipf", 100, seed=3)
    a, b = ib.plan(qo, kv, **KW), ib.plan(list(qo), list(kv), **KW)
    assert a.equals(b) and a is not b
    assert not a.equals(ib.plan(qo, kv, strategy="naive", **KW))


def test_skewed_batch_is_split_and_balanced():
    qo, kv = presets.batch("one long + many short", 64)
    bal, naive = ib.plan(qo, kv, **KW), ib.plan(qo, kv, strategy="naive", **KW)
    sb, sn = bal.stats(), naive.stats()
    assert sn["split_units"] == 0 and sn["imbalance"] > 10
    assert sb["imbalance"] < 1.02 and sb["split_units"] >= 8            # every head of the long request is cut
    assert sb["predicted_us"] < sn["predicted_us"] / 8
    long_units = [u for u in bal.merge_unit if bal.unit_of(u)[0] == 0]
    assert len(long_units) == 8
    assert sb["kv_bytes"] == sn["kv_bytes"] == 2 * sum(kv) * 8 * 128 * 2    # every key read exactly once
    assert bal.kernel == "decode_bf16_hd128_page16_group4_tile4"


def test_imbalance_counts_idle_ctas():
    p = ib.plan([1], [65536], strategy="naive", **KW)
    assert p.stats()["busy_ctas"] == 8 and abs(p.stats()["imbalance"] - 132 / 8) < 1e-9
    assert ib.plan([1], [65536], **KW).stats()["imbalance"] < 1.01


def test_tiny_batches_are_never_worse_than_naive():
    kw = dict(num_qo_heads=1, num_kv_heads=1, head_dim=64, num_sms=132)
    assert ib.plan([1] * 64, [10] * 64, **kw).cta_load.max() <= ib.plan([1] * 64, [10] * 64, strategy="naive",
                                                                        **kw).cta_load.max()


def test_plans_are_read_only_and_merge_bytes_count_tile_rows():
    p = ib.plan([128], [20000], num_qo_heads=8, num_kv_heads=1, head_dim=64, num_sms=132, causal=True, tile_q=128)
    with pytest.raises(ValueError):
        p.item_kv_end[0] = 0
    split_rows = int(p.tile_rows[p.item_unit[p.item_slot >= 0] // p.num_kv_heads].sum())
    assert p.stats()["merge_bytes"] == split_rows * (64 * 4 + 4) * 2 and split_rows > 128


def test_small_rows_are_not_split_when_it_does_not_pay():
    # 512 equal units over 128 CTAs: 4 each, perfect without splitting
    p = ib.plan([1] * 64, [1000] * 64, num_qo_heads=8, num_kv_heads=8, head_dim=64, num_sms=128, ctas_per_sm=1)
    assert p.stats()["split_units"] == 0 and p.stats()["imbalance"] == 1.0


def test_tiles_causal_window_and_gqa_rows():
    p = ib.plan([100, 1], [300, 50], num_qo_heads=8, num_kv_heads=2, head_dim=64, num_sms=4, causal=True,
                window_left=31, tile_q=32)
    # request 0: 100 tokens x 4 group heads = 400 rows -> 13 tiles of 32 rows (8 tokens each)
    assert list(p.tile_request) == [0] * 13 + [1]
    assert p.tile_rows[0] == 32 and p.tile_rows[12] == 400 - 12 * 32
    # tile 0 holds tokens 0..7 at positions 200..207: keys [200 - 31, 208)
    assert (p.seg_start[0], p.seg_end[0]) == (169, 208)
    assert p.kernel == "prefill_bf16_hd64_page16_group4_tile32_causal_window31"


def test_block_masks_shorten_rows():
    mm = lambda b, h, q, k: (k <= q) & ((k // 16) % 2 == 0)   # noqa: E731  every other key block
    masks = [ib.BlockSparse.from_mask_mod(mm, 64, 64, (16, 16))]
    p = ib.plan([64], [64], num_qo_heads=2, num_kv_heads=1, head_dim=32, num_sms=4, block_masks=masks, tile_q=32)
    full = ib.plan([64], [64], num_qo_heads=2, num_kv_heads=1, head_dim=32, num_sms=4, causal=True, tile_q=32)
    assert p.tile_kv_len.sum() < full.tile_kv_len.sum()
    assert (p.seg_end - p.seg_start).max() == 16                        # blocks 0, 2 are separate segments


def test_stats_and_str():
    p = ib.plan([1, 1], [100, 30000], **KW)
    s = p.stats()
    assert s["items"] == p.num_items and s["units"] == 16 and s["busy_ctas"] <= 132
    assert "imbalance" in str(p) and "<table>" in p._repr_html_()
    assert p.predicted_us() > 0


IMB_BATCH = st.tuples(
    st.sampled_from(["uniform", "skewed", "long-tail", "mixed"]), st.integers(1, 70), st.integers(0, 10_000),
    st.sampled_from([1, 2, 4, 8, 16, 32, 64]), st.sampled_from([4, 16, 33, 108, 132]), st.sampled_from([1, 2, 4, 8]),
    st.sampled_from([1, 2, 4, 8]), st.booleans())


def draw_batch(kind, B, seed, causal):
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        kv = np.full(B, int(rng.integers(1, 5000)))
    elif kind == "skewed":
        kv = np.r_[rng.integers(1000, 70000), rng.integers(1, 600, B - 1)]
    elif kind == "long-tail":
        kv = np.minimum(np.minimum(rng.zipf(1.3, B), 70000) * int(rng.integers(1, 200)), 70000)
    else:
        kv = rng.integers(0, 9000, B)
    qo = np.where(rng.random(B) < 0.3, np.minimum(kv, rng.integers(1, 300, B)), np.minimum(kv, 1))
    return qo, kv


@settings(max_examples=300, deadline=None, derandomize=True)
@given(IMB_BATCH)
def test_balance_on_random_batches(args):
    """imbalance = largest CTA load / mean load over ALL CTAs (idle ones count).

    - With at least 2 KV pages per CTA and pages of >= 8 keys, imbalance <= 1.10 (issue 5's criterion).
    - For smaller pages the criterion can be unattainable by any plan: keys are whole, so with 317 keys on 132
      CTAs some CTA reads 3 keys against a mean of 2.4 (1.25). There the largest load must stay within two
      (fixed cost + one key) of the ideal W / n, and the balanced plan is never worse than the naive one.
    """
    kind, B, seed, page, sms, hkv, group, causal = args
    qo, kv = draw_batch(kind, B, seed, causal)
    kw = dict(num_qo_heads=hkv * group, num_kv_heads=hkv, head_dim=64, page_size=page, num_sms=sms, causal=causal)
    p = ib.plan(qo, kv, **kw)
    naive = ib.plan(qo, kv, strategy="naive", **kw)
    assert p.cta_load.max() <= naive.cta_load.max() * (1 + 1e-9)
    pages = int(np.sum(-(-kv // page)))
    if pages >= 2 * sms and page >= 8:
        assert p.stats()["imbalance"] <= 1.10, (p, kind, B, page, sms)
    if pages >= 2 * sms:
        ideal = p.cta_load.sum() / p.num_ctas
        assert p.cta_load.max() <= ideal + 2 * (p.fixed_cost + p.tile_weight.max(initial=1.0)) or \
            p.stats()["imbalance"] <= 1.10


def test_token_positions_follow_the_append_convention():
    from infernb.plan import token_positions

    qo, kv = [3, 0, 5, 1], [7, 4, 5, 9]
    q_req, q_pos, k_req, k_pos = token_positions(qo, kv)
    assert list(zip(q_req, q_pos)) == [(b, kv[b] - qo[b] + i) for b in range(4) for i in range(qo[b])]
    assert list(zip(k_req, k_pos)) == [(b, j) for b in range(4) for j in range(kv[b])]


def test_tile_keys_are_the_tiles_segments():
    masks = [ib.BlockSparse.from_dense(torch.rand(64, 96, generator=torch.Generator().manual_seed(3)) < 0.4, (8, 16))]
    p = ib.plan([64], [96], num_qo_heads=4, num_kv_heads=2, head_dim=32, tile_q=32, num_sms=4, block_masks=masks)
    for t in range(p.num_tiles):
        keys = p.tile_keys(t)
        assert len(keys) == p.tile_kv_len[t] and (np.diff(keys) > 0).all()
        a, z = p.seg_indptr[t], p.seg_indptr[t + 1]
        assert set(keys.tolist()) == {x for s, e in zip(p.seg_start[a:z], p.seg_end[a:z]) for x in range(s, e)}
