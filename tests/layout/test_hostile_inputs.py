"""Issue 12, items 5-7: page tables, dense masks and plan parameters that used to pass silently."""
import math

import pytest
import torch

import infernb as ib
from infernb import InputError, PageTable

i32 = lambda x: torch.tensor(x, dtype=torch.int32)  # noqa: E731


@pytest.mark.parametrize("indices,num_pages,match", [
    ([3, 1, 3], 8, "request 0 lists page 3 more than once"),
    ([3, -1, 2], None, "outside the pool"),
    ([3, 999, 2], 8, "outside the pool"),
])
def test_page_table_rejects_repeated_and_out_of_range_pages_when_made(indices, num_pages, match):
    with pytest.raises(InputError, match=match):
        PageTable(i32([0, 3]), i32(indices), i32([2]), 4, num_pages)


def test_page_table_allows_a_page_in_two_requests_and_rejects_non_integer_sizes():
    t = PageTable(i32([0, 2, 4]), i32([5, 1, 5, 2]), i32([4, 1]), 4, 8)       # page 5 shared (a fork)
    assert t.kv_lens() == [8, 5]
    bs = ib.BlockSparse.from_page_table(t)
    assert bs.to_dense().sum().item() == 13                                   # every key of both requests
    for ps in (4.0, True, 0):
        with pytest.raises(InputError, match="page_size"):
            PageTable(i32([0, 1]), i32([1]), i32([2]), ps)
    with pytest.raises(InputError, match="num_pages"):
        PageTable(i32([0, 1]), i32([1]), i32([2]), 4, 8.5)


def test_from_dense_refuses_additive_float_masks():
    additive = torch.tensor([[0.0, float("-inf")], [0.0, 0.0]])
    with pytest.raises(InputError, match="mask == 0"):
        ib.BlockSparse.from_dense(additive, (1, 1))
    bs = ib.BlockSparse.from_dense(additive == 0, (1, 1))
    assert torch.equal(bs.to_dense(), additive == 0)


@pytest.mark.parametrize("block", [(2.5, 1), (True, 1), ("2", 1)])
def test_block_shapes_must_be_integers(block):
    with pytest.raises(InputError, match="block"):
        ib.BlockSparse.from_dense(torch.ones(4, 4, dtype=torch.bool), block)


@pytest.mark.parametrize("kw,name", [(dict(fixed_cost=math.nan), "fixed_cost"), (dict(fixed_cost=-1.0), "fixed_cost"),
                                     (dict(fixed_cost=math.inf), "fixed_cost"), (dict(rows_balance=0.0), "rows_balance"),
                                     (dict(rows_balance=math.nan), "rows_balance"),
                                     (dict(merge_gain=-0.5), "merge_gain"), (dict(window_left=2.5), "window_left"),
                                     (dict(window_left=True), "window_left"), (dict(num_sms=True), "num_sms")])
def test_plan_checks_its_numeric_parameters(kw, name):
    with pytest.raises(InputError, match=name):
        ib.plan([1, 4], [10, 20], num_qo_heads=4, num_kv_heads=2, head_dim=64, **kw)
    ib.plan([1, 4], [10, 20], num_qo_heads=4, num_kv_heads=2, head_dim=64, merge_gain=math.inf)   # allowed


def test_an_hnd_pool_read_as_nhd_says_the_layout_is_the_likely_cause():
    cache = ib.PagedKVCache(8, 16, 2, 8, dtype=torch.float32, layout="HND")
    ids = cache.add_sequences(1)
    cache.append(ids, torch.randn(20, 2, 8), torch.randn(20, 2, 8), lengths=[20])
    t = cache.page_table(ids)
    p = ib.plan([1], [20], num_qo_heads=2, num_kv_heads=2, head_dim=8)
    with pytest.raises(InputError, match="layout='HND'"):
        ib.emulate(p, torch.randn(1, 2, 8), kv_cache=cache.pool, page_table=t)     # raw pool, layout not given
    out, _ = ib.emulate(p, torch.randn(1, 2, 8), kv_cache=cache.pool, page_table=t, layout="HND")
    assert torch.isfinite(out).all()


def test_page_table_of_one_long_sequence_among_many_short_ones_is_exact():
    cache = ib.PagedKVCache(700, 1, 1, 4, dtype=torch.float32)
    ids = cache.add_sequences(50)
    lens = [600] + [1] * 49
    cache.append(ids, torch.randn(sum(lens), 1, 4), torch.randn(sum(lens), 1, 4), lengths=lens)
    t = cache.page_table(ids[::-1])
    assert t.kv_lens() == lens[::-1]
    assert [t.pages_of(i) for i in range(50)] == [cache.pages(i) for i in ids[::-1]]


def test_block_table_memory_follows_the_pages_held():
    """One 1M-token sequence among 4096 short ones: the block table holds ~their pages, not rows x max pages
    (dense, that was 4096 x 65536 x 8 bytes = 2 GiB), and the page table is built from it directly."""
    import time

    page, n_long = 16, 1 << 20
    cache = ib.PagedKVCache(n_long // page + 4096 + 8, page, 1, 8, dtype=torch.float16)
    ids = cache.add_sequences(4096)
    lens = [n_long] + [3] * 4095
    cache.append(ids, torch.randn(sum(lens), 1, 8), torch.randn(sum(lens), 1, 8), lengths=lens)
    assert cache._table.nbytes() < 8 * 4 * (n_long // page + 4096)     # a few bytes per page held
    t0 = time.perf_counter()
    t = cache.page_table(ids)
    assert time.perf_counter() - t0 < 2.0
    assert t.kv_lens() == lens and t.num_used_pages == n_long // page + 4095


@pytest.mark.parametrize("call", [lambda: ib.variants.sliding_window(2.5), lambda: ib.variants.sliding_window(True),
                                  lambda: ib.variants.prefix_lm(3.5),
                                  lambda: ib.reference.attention(torch.randn(2, 1, 4), torch.randn(2, 1, 4),
                                                                 torch.randn(2, 1, 4), window_left=2.5)],
                         ids=["sliding_window float", "sliding_window bool", "prefix_lm float", "reference window"])
def test_window_sizes_must_be_integers(call):
    with pytest.raises(InputError):
        call()
