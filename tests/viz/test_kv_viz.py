"""viz figures show what the data says; the KVLayoutExplorer updates its figures in place."""
import pytest
import torch

import infernb as ib
from infernb.layout import BlockSparse, PagedKVCache


@pytest.fixture
def cache():
    c = PagedKVCache(32, 4, 1, 4, dtype=torch.float32)
    ids = c.add_sequences(3)
    c.append(ids, torch.randn(21, 1, 4), torch.randn(21, 1, 4), [9, 4, 8])
    c.fork(ids[0])
    c.free([ids[1]])
    return c


def test_page_pool_figure(cache):
    fig = ib.viz.page_pool(cache)
    names = [t.name for t in fig.data]
    assert "free" in names and "shared (fork)" in names
    free = next(t for t in fig.data if t.name == "free")
    assert len(free.x) == cache.num_free_pages
    shared = next(t for t in fig.data if t.name == "shared (fork)")
    assert len(shared.x) == cache.stats()["pages_shared"] == 2
    seq_traces = [t for t in fig.data if t.name and t.name.startswith("seq ")]
    assert sum(len(t.x) for t in seq_traces) == cache.stats()["pages_used"]
    table = next(t for t in fig.data if t.type == "table")
    assert "pages\u00a0used" in table.cells.values[0]          # (non-breaking: the table never wraps a label)
    assert all("page" in h for t in seq_traces for h in t.hovertext)


def test_sequence_pages_figure(cache):
    sid = cache.seq_ids[-1]
    fig = ib.viz.sequence_pages(cache, sid)
    pool_trace = next(t for t in fig.data if t.name == "pool position")
    assert list(pool_trace.x) == cache.pages(sid)
    with pytest.raises(KeyError, match="not live"):
        ib.viz.sequence_pages(cache, 999)


def test_block_sparse_figure():
    bs = BlockSparse.from_mask_mod(lambda b, h, q, k: k <= q, 64, 64, (16, 8))
    fig = ib.viz.block_sparse(bs)
    z = fig.data[0].z
    assert len(z) == 4 and len(z[0]) == 8
    assert z[0][7] == 0 and z[3][0] == 2 and z[0][0] == 1
    assert "queries [" in fig.data[0].hovertemplate


def test_explorer_updates_in_place():
    e = ib.widgets.KVLayoutExplorer(lengths=(10, 3, 20), page_size=4, num_pages=16)
    pool_fig, chain_fig = e.pool_fig, e.chain_fig
    assert e.cache.lengths() == [10, 3, 20]
    e.seq.value = 0
    e.fork_button.click()
    assert len(e.cache.seq_ids) == 4 and e.seq.value == 3
    shared = next(t for t in e.pool_fig.data if t.name == "shared (fork)")
    assert len(shared.x) == 2
    e.tokens.value = 6
    e.append_button.click()
    assert e.cache.lengths([3]) == [16]
    e.free_button.click()
    assert 3 not in e.cache.seq_ids
    e.seq.value = 2
    e.tokens.value = 1000
    e.append_button.click()                                   # out of pages: reported, nothing changes
    assert "nothing was changed" in e.status.value and e.cache.lengths([2]) == [20]
    e.page_size.value = 8
    e.lengths.value = "1, 2, 3, 100"
    e.reset_button.click()
    assert e.cache.page_size == 8 and e.cache.lengths() == [1, 2, 3, 100]
    assert e.pool_fig is pool_fig and e.chain_fig is chain_fig            # same widgets: updated in place
    seq_traces = [t for t in e.pool_fig.data if t.name and t.name.startswith("seq ")]
    assert sum(len(t.x) for t in seq_traces) == e.cache.stats()["pages_used"]
    e.lengths.value = "1, x"
    e.reset_button.click()
    assert "could not build" in e.status.value
