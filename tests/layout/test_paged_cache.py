"""PagedKVCache: every operation and error path, plus a random append/free/fork property test."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from infernb import InputError, OutOfPagesError, reference
from infernb.layout import BlockSparse, PagedKVCache, PageTable, convert_pool_layout
from infernb.testing import assert_close

H, D = 2, 8


def rand(gen, n):
    return torch.randn(n, H, D, generator=gen), torch.randn(n, H, D, generator=gen)


@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_append_gather_roundtrip(gen, layout, dtype):
    c = PagedKVCache(32, 4, H, D, dtype=dtype, layout=layout)
    shape = (32, 2, 4, H, D) if layout == "NHD" else (32, 2, H, 4, D)
    assert c.pool.shape == shape
    ids = c.add_sequences(3)
    k, v = rand(gen, 14)
    c.append(ids, k, v, lengths=[5, 0, 9])
    k2, v2 = rand(gen, 3)
    c.append(ids, k2, v2)                                    # decode: one token each
    assert c.lengths(ids) == [6, 1, 10]
    gk, gv = c.gather(ids[0])
    assert torch.equal(gk, torch.cat([k[:5], k2[:1]]).to(dtype)) and torch.equal(gv, torch.cat([v[:5], v2[:1]]).to(dtype))
    gk, _ = c.gather(ids[2])
    assert torch.equal(gk, torch.cat([k[5:], k2[2:]]).to(dtype))
    assert c.gather(ids[1])[0].shape == (1, H, D)


def test_page_table_matches_pages_and_reference(gen):
    c = PagedKVCache(40, 4, H, D, dtype=torch.float32)
    ids = c.add_sequences(4)
    k, v = rand(gen, 1 + 15 + 16 + 17)
    c.append(ids, k, v, [1, 15, 16, 17])
    t = c.page_table()
    assert t.indptr.dtype == t.indices.dtype == t.last_page_len.dtype == torch.int32
    assert t.kv_lens() == [1, 15, 16, 17] and t.last_page_len.tolist() == [1, 3, 4, 1]
    assert [t.pages_of(b) for b in range(4)] == [c.pages(i) for i in ids]
    # the reference reads the pool through the table and sees exactly what was appended
    q = torch.randn(4, 4, D, generator=gen)
    out, _ = reference.paged_attention(q, c.pool, t.indptr, t.indices, t.last_page_len, layout="NHD")
    ref, _ = reference.attention(q, k, v, [0, 1, 2, 3, 4], [0, 1, 16, 32, 49])
    assert_close(out, ref, tol=1e-12)
    sub = c.page_table([ids[2], ids[0]])
    assert sub.kv_lens() == [16, 1]
    assert t.to_dense().shape == (4, 5) and int(t.to_dense()[0, 1]) == -1


def test_fork_shares_full_pages_and_copies_partial(gen):
    c = PagedKVCache(16, 4, H, D, dtype=torch.float32)
    (a,) = c.add_sequences(1)
    k, v = rand(gen, 10)
    c.append([a], k, v, [10])                                # 2 full pages + 2 tokens
    b = c.fork(a)
    pa, pb = c.pages(a), c.pages(b)
    assert pa[:2] == pb[:2] and pa[2] != pb[2]
    assert c.stats()["pages_shared"] == 2
    assert torch.equal(c.gather(b)[0], k)
    kb, vb = rand(gen, 3)
    c.append([b], kb, vb, [3])                               # child writes into its own copy
    assert torch.equal(c.gather(a)[0], k)                    # parent unchanged
    assert torch.equal(c.gather(b)[0], torch.cat([k, kb]))
    c.free([a])
    assert c.stats()["pages_shared"] == 0 and torch.equal(c.gather(b)[0], torch.cat([k, kb]))
    # fork of a sequence ending on a page boundary shares every page and copies nothing
    (e,) = c.add_sequences(1)
    c.append([e], *rand(gen, 8), [8])
    free_before = c.num_free_pages
    f = c.fork(e)
    assert c.pages(f) == c.pages(e) and c.num_free_pages == free_before


def test_free_returns_pages_and_double_free_fails(gen):
    c = PagedKVCache(8, 4, H, D)
    ids = c.add_sequences(2)
    c.append(ids, *rand(gen, 12), [5, 7])
    assert c.num_free_pages == 4
    c.free(ids[0])
    assert c.num_free_pages == 6
    with pytest.raises(InputError, match=f"sequence {ids[0]} was already freed"):
        c.free([ids[0]])
    with pytest.raises(InputError, match="sequence 99 does not exist"):
        c.free(99)
    with pytest.raises(InputError, match="already freed"):
        c.append([ids[0]], *rand(gen, 1))
    with pytest.raises(InputError, match="already freed"):
        c.page_table([ids[0]])


def test_out_of_pages_changes_nothing(gen):
    c = PagedKVCache(4, 4, H, D, dtype=torch.float32)
    ids = c.add_sequences(2)
    c.append(ids, *rand(gen, 9), [5, 4])                     # 3 pages used, 1 free
    pool = c.pool.clone()
    snap = c.snapshot()
    with pytest.raises(OutOfPagesError, match="needs 2 new pages .* only 1 of 4 are free; nothing was changed"):
        c.append(ids, *rand(gen, 8), [4, 4])                 # appending past the pool's end
    assert torch.equal(c.pool, pool) and c.lengths(ids) == [5, 4]
    assert (c.snapshot().refcount == snap.refcount).all() and c.num_free_pages == 1
    c.append(ids, *rand(gen, 4), [4, 0])                     # fits exactly: the last free page
    assert c.num_free_pages == 0
    with pytest.raises(OutOfPagesError, match="fork"):
        c.fork(ids[0])                                       # partial last page needs a copy
    assert len(c.seq_ids) == 2


def test_append_input_errors(gen):
    c = PagedKVCache(8, 4, H, D)
    ids = c.add_sequences(2)
    with pytest.raises(InputError, match=r"k: expected shape \[3, 2, 8\]"):
        c.append(ids, *rand(gen, 2), [1, 2])
    with pytest.raises(InputError, match="lengths: expected 2 entries"):
        c.append(ids, *rand(gen, 2), [2])
    with pytest.raises(InputError, match="each sequence may appear once"):
        c.append([ids[0], ids[0]], *rand(gen, 2))
    with pytest.raises(InputError, match="non-negative"):
        c.append(ids, *rand(gen, 0), [1, -1])
    with pytest.raises(InputError, match="layout"):
        PagedKVCache(8, 4, H, D, layout="NDH")
    with pytest.raises(InputError, match="page_size"):
        PagedKVCache(8, 0, H, D)
    with pytest.raises(InputError, match="dtype"):
        PagedKVCache(8, 4, H, D, dtype=torch.int8)


def test_layout_conversion(gen):
    c = PagedKVCache(8, 4, H, D, dtype=torch.float32)
    ids = c.add_sequences(2)
    k, v = rand(gen, 11)
    c.append(ids, k, v, [6, 5])
    h = c.to_layout("HND")
    assert h.layout == "HND" and h.pool.shape == (8, 2, H, 4, D)
    assert torch.equal(h.gather(ids[1])[0], k[6:])
    back = convert_pool_layout(h.pool, "HND", "NHD")
    assert torch.equal(back, c.pool)
    h.append([ids[0]], *rand(gen, 1))                        # the copy is independent
    assert c.lengths(ids) == [6, 5] and h.lengths(ids) == [7, 5]


def test_page_table_validation_names_the_request():
    i32 = lambda x: torch.tensor(x, dtype=torch.int32)  # noqa: E731
    PageTable(i32([0, 2, 3]), i32([0, 1, 2]), i32([4, 1]), 4, num_pages=3).validate()
    with pytest.raises(InputError, match="not monotonic at request 1"):
        PageTable(i32([0, 2, 1]), i32([0, 1]), i32([4, 1]), 4).validate()
    with pytest.raises(InputError, match="request 1 has last_page_len 5, outside 1..page_size"):
        PageTable(i32([0, 2, 3]), i32([0, 1, 2]), i32([4, 5]), 4).validate()
    with pytest.raises(InputError, match="request 1 refers to page 7, outside the pool"):
        PageTable(i32([0, 2, 3]), i32([0, 1, 7]), i32([4, 1]), 4, num_pages=3).validate()
    with pytest.raises(InputError, match="request 0 has no pages but last_page_len"):
        PageTable(i32([0, 0, 1]), i32([0]), i32([2, 1]), 4).validate()
    with pytest.raises(InputError, match="last element 2 must equal len"):
        PageTable(i32([0, 1, 2]), i32([0, 1, 2]), i32([4, 1]), 4).validate()
    with pytest.raises(InputError, match="expected int32"):
        PageTable(torch.tensor([0, 1]), i32([0]), i32([1]), 4).validate()
    with pytest.raises(InputError, match="expected 2 entries"):
        PageTable(i32([0, 1, 2]), i32([0, 1]), i32([1]), 4).validate()


# ---------------------------------------------------------------- property test
OPS = st.lists(st.tuples(st.sampled_from(["append", "append", "fork", "free", "new"]),
                         st.integers(0, 1000), st.integers(0, 40)), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(ops=OPS, page_size=st.sampled_from([1, 3, 4, 16]), layout=st.sampled_from(["NHD", "HND"]))
def test_random_append_free_fork_keeps_every_sequence_intact(ops, page_size, layout):
    c = PagedKVCache(24, page_size, 1, 2, dtype=torch.float32, layout=layout)
    model: dict[int, list[float]] = {}            # what each sequence must contain (one scalar id per token)
    counter = [0.0]

    def tokens(n):
        vals = [counter[0] + i for i in range(n)]
        counter[0] += n
        t = torch.tensor(vals).reshape(n, 1, 1).expand(n, 1, 2).contiguous()
        return vals, t, -t

    for op, pick, n in ops:
        live = list(model)
        if op == "new" or not live:
            (i,) = c.add_sequences(1)
            model[i] = []
            continue
        sid = live[pick % len(live)]
        if op == "append":
            # append to up to 3 sequences at once, ragged
            group = live[pick % len(live):][:3]
            lens = [(n + j) % 9 for j in range(len(group))]
            vals, k, v = tokens(sum(lens))
            try:
                c.append(group, k, v, lens)
            except OutOfPagesError:
                continue
            o = 0
            for g, m in zip(group, lens):
                model[g] += vals[o:o + m]
                o += m
        elif op == "fork":
            try:
                child = c.fork(sid)
            except OutOfPagesError:
                continue
            model[child] = list(model[sid])
        elif op == "free":
            c.free([sid])
            del model[sid]
        # invariants after every step
        snap = c.snapshot()
        holders = {}
        for s, pages in snap.seq_pages.items():
            assert len(pages) == len(set(pages))
            for p in pages:
                holders[p] = holders.get(p, 0) + 1
        assert all(snap.refcount[p] == cnt for p, cnt in holders.items())        # refcount = holders
        assert int((snap.refcount > 0).sum()) + c.num_free_pages == c.num_pages   # nothing leaked
        for p, cnt in holders.items():
            if cnt > 1:                                                          # shared pages are full
                assert snap.fill[p] == page_size
    for s, vals in model.items():
        k, v = c.gather(s)
        assert k[:, 0, 0].tolist() == vals and (v == -k).all()
    if model:
        t = c.page_table(list(model))
        assert t.kv_lens() == [len(x) for x in model.values()]
        bs = BlockSparse.from_page_table(t)
        assert int(bs.to_dense().sum()) == sum(len(x) for x in model.values())


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("dtype,head_dim,page_size", [(torch.float16, 128, 16), (torch.bfloat16, 128, 1),
                                                      (torch.bfloat16, 64, 64), (torch.float32, 256, 7),
                                                      (torch.bfloat16, 96, 16)])   # 96: index_put fallback
def test_gpu_append_fork_gather(gen, layout, dtype, head_dim, page_size):
    c = PagedKVCache(8192 // page_size + 128, page_size, 8, head_dim, dtype=dtype, device="cuda", layout=layout)
    poison = torch.full_like(c.pool, float("nan"))
    c.pool.copy_(poison)                                           # unwritten slots stay NaN
    ids = c.add_sequences(64)
    lens = torch.randint(1, 100, (64,), generator=gen).tolist()
    k = torch.randn(sum(lens), 8, head_dim, generator=gen)
    v = torch.randn(sum(lens), 8, head_dim, generator=gen)
    c.append(ids, k.cuda(), v.cuda(), lens)
    child = c.fork(ids[5])
    k2, v2 = torch.randn(16, 8, head_dim, generator=gen), torch.randn(16, 8, head_dim, generator=gen)
    c.append([child], k2.cuda(), v2.cuda(), [16])
    t = c.page_table()
    assert t.indptr.is_cuda and t.indices.is_cuda
    starts = [0]
    for n in lens:
        starts.append(starts[-1] + n)
    for j in (0, 5, 63):
        gk, gv = c.gather(ids[j])
        assert torch.equal(gk.cpu(), k[starts[j]:starts[j + 1]].to(dtype))
        assert torch.equal(gv.cpu(), v[starts[j]:starts[j + 1]].to(dtype))
    assert torch.equal(c.gather(child)[0].cpu(), torch.cat([k[starts[5]:starts[6]], k2]).to(dtype))
    # every live sequence reads back exactly, and nothing outside the written slots was touched
    for j, sid in enumerate(ids):
        gk, gv = c.gather(sid)
        assert torch.equal(gk.cpu(), k[starts[j]:starts[j + 1]].to(dtype)), j
    written = sum(lens) + 16 + (lens[5] % page_size)               # + the child's copied partial page
    nan_slots = torch.isnan(c.pool).any(-1).sum().item() // 2       # K and V planes count once
    assert c.pool.shape[0] * page_size * 8 - nan_slots == written * 8
