"""BlockSparse: dense <-> BSR, block-by-block mask_mod evaluation, page tables as BSR."""
import pytest
import torch

from infernb import InputError, reference
from infernb.layout import BlockSparse, PagedKVCache
from infernb.layout import block_sparse as bsmod


def causal_window(w):
    return lambda b, h, q, k: (k <= q) & (k > q - w)


@pytest.mark.parametrize("shape", [(64, 64), (70, 93), (1, 40), (33, 128)])
@pytest.mark.parametrize("block", [(16, 16), (1, 8), (64, 16), (7, 5)])
def test_mask_mod_and_dense_agree(shape, block):
    M, N = shape
    mm = causal_window(23)
    a = BlockSparse.from_mask_mod(mm, M, N, block)
    q = torch.arange(M)[:, None] + (N - M)
    dense = mm(0, 0, q, torch.arange(N)[None, :])
    b = BlockSparse.from_dense(dense, block)
    assert torch.equal(a.to_dense(), dense) and torch.equal(b.to_dense(), dense)
    assert torch.equal(a.indptr, b.indptr) and torch.equal(a.indices, b.indices) and torch.equal(a.is_full, b.is_full)
    # full blocks really are full and listed blocks are non-empty
    R, C = block
    for i in range(a.num_block_rows):
        for j in range(int(a.indptr[i]), int(a.indptr[i + 1])):
            c = int(a.indices[j])
            sub = dense[i * R:(i + 1) * R, c * C:(c + 1) * C]
            assert sub.any()
            assert bool(sub.all()) == bool(a.is_full[j])
    # indices increase within a row
    for i in range(a.num_block_rows):
        row = a.indices[a.indptr[i]:a.indptr[i + 1]]
        assert (row[1:] > row[:-1]).all()


def test_random_dense_roundtrip(gen):
    m = torch.rand(50, 77, generator=gen) > 0.7
    bs = BlockSparse.from_dense(m, (8, 16))
    assert torch.equal(bs.to_dense(), m)
    s = bs.stats()
    assert s["density"] == int(m.sum()) / m.numel() and abs(s["sparsity"] + s["density"] - 1) < 1e-12


def test_long_sequence_is_chunked(monkeypatch):
    """from_mask_mod evaluates a bounded number of elements at a time."""
    monkeypatch.setattr(bsmod, "CHUNK_ELEMENTS", 4096)
    seen = []

    def mm(b, h, q, k):
        seen.append(q.shape[0] * k.shape[1])
        return k <= q

    bs = BlockSparse.from_mask_mod(mm, 512, 512, (16, 16))
    assert max(seen) <= 4096 and sum(seen) == 512 * 512
    assert torch.equal(bs.to_dense(), torch.ones(512, 512).tril().bool())
    s = bs.stats()
    assert s["full_blocks"] == 31 * 32 // 2 and s["partial_blocks"] == 32


def test_mask_mod_blocks_match_reference_attention(gen):
    """The BSR built from a mask_mod gives the same attention as the mask_mod itself."""
    q = torch.randn(40, 2, 16, generator=gen, dtype=torch.float64)
    k = torch.randn(64, 2, 16, generator=gen, dtype=torch.float64)
    v = torch.randn(64, 2, 16, generator=gen, dtype=torch.float64)
    mm = causal_window(17)
    bs = BlockSparse.from_mask_mod(mm, 40, 64, (8, 8))
    a, _ = reference.attention(q, k, v, mask_mod=mm)
    b, _ = reference.attention(q, k, v, custom_mask=[bs.to_dense()])
    assert torch.equal(a, b)


def test_from_page_table(gen):
    c = PagedKVCache(20, 4, 1, 2)
    ids = c.add_sequences(3)
    c.append(ids, torch.randn(21, 1, 2), torch.randn(21, 1, 2), [8, 3, 10])
    c.free([ids[1]])
    (d,) = c.add_sequences(1)
    c.append([d], torch.randn(6, 1, 2), torch.randn(6, 1, 2), [6])      # reuses the freed page: not in order
    t = c.page_table([ids[0], ids[2], d])
    bs = BlockSparse.from_page_table(t)
    assert bs.shape == (3, 80) and bs.block == (1, 4)
    dense = bs.to_dense()
    for row, sid in enumerate([ids[0], ids[2], d]):
        cols = torch.nonzero(dense[row]).flatten().tolist()
        expect = sorted(p * 4 + s for j, p in enumerate(c.pages(sid)) for s in range(4)
                        if j * 4 + s < c.lengths([sid])[0])
        assert cols == expect
    s = bs.stats()
    assert s["nnz_blocks"] == t.num_used_pages and s["partial_blocks"] == 2   # 10 and 6 tokens end mid-page


def test_block_grid_and_errors():
    bs = BlockSparse.from_dense(torch.eye(8, dtype=torch.bool), (4, 4))
    assert bs.block_grid().tolist() == [[1, 0], [0, 1]]
    assert "2/4 blocks" in str(bs)
    with pytest.raises(InputError, match="block"):
        BlockSparse.from_dense(torch.eye(8, dtype=torch.bool), (0, 4))
    with pytest.raises(InputError, match="mask: expected a 2-D"):
        BlockSparse.from_dense(torch.ones(2, 2, 2, dtype=torch.bool), (1, 1))
    with pytest.raises(InputError, match="PageTable"):
        BlockSparse.from_page_table("nope")
