"""Paged KV access in the reference: gathering from NHD/HND pools equals the ragged attention."""
import pytest
import torch

from infernb import InputError
from infernb.reference import attention, gather_paged_kv, kv_lengths, paged_attention
from infernb.testing import assert_close


def make_pool(gen, kv_lens, page_size, hkv, d, layout, extra_pages=5):
    """Scatter random ragged K/V into a shuffled page pool; return pool, table and the ragged truth."""
    pages_per = [(n + page_size - 1) // page_size for n in kv_lens]
    num_pages = sum(pages_per) + extra_pages
    perm = torch.randperm(num_pages, generator=gen)
    k = torch.randn(sum(kv_lens), hkv, d, generator=gen, dtype=torch.float64)
    v = torch.randn(sum(kv_lens), hkv, d, generator=gen, dtype=torch.float64)
    pool = torch.randn(num_pages, 2, page_size, hkv, d, generator=gen, dtype=torch.float64)  # garbage elsewhere
    indptr, indices, last = [0], [], []
    t = 0
    for b, n in enumerate(kv_lens):
        ids = perm[indptr[-1]:indptr[-1] + pages_per[b]].tolist()
        for p_i, page in enumerate(ids):
            chunk = slice(t + p_i * page_size, min(t + (p_i + 1) * page_size, t + n))
            m = chunk.stop - chunk.start
            pool[page, 0, :m] = k[chunk]
            pool[page, 1, :m] = v[chunk]
        indices += ids
        indptr.append(indptr[-1] + len(ids))
        last.append(0 if n == 0 else n - (len(ids) - 1) * page_size)
        t += n
    if layout == "HND":
        pool = pool.transpose(2, 3).contiguous()
    kv_indptr = [0]
    for n in kv_lens:
        kv_indptr.append(kv_indptr[-1] + n)
    return pool, torch.tensor(indptr, dtype=torch.int32), torch.tensor(indices, dtype=torch.int32), \
        torch.tensor(last, dtype=torch.int32), k, v, kv_indptr


@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("page_size", [1, 4, 16])
def test_gather_roundtrip(gen, layout, page_size):
    kv_lens = [1, 15, 16, 17, 0, 33]
    pool, indptr, indices, last, k, v, kv_indptr = make_pool(gen, kv_lens, page_size, 2, 8, layout)
    gk, gv, gptr = gather_paged_kv(pool, indptr, indices, last, layout=layout)
    assert gptr == kv_indptr
    assert torch.equal(gk, k) and torch.equal(gv, v)
    assert kv_lengths(indptr, last, page_size) == kv_lens


@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_paged_attention_equals_ragged(gen, layout):
    kv_lens = [5, 17, 40]
    pool, indptr, indices, last, k, v, kv_indptr = make_pool(gen, kv_lens, 8, 2, 16, layout)
    q = torch.randn(3, 8, 16, generator=gen, dtype=torch.float64)
    out, lse = paged_attention(q, pool, indptr, indices, last, layout=layout, logits_soft_cap=5.0)
    ref, ref_lse = attention(q, k, v, [0, 1, 2, 3], kv_indptr, logits_soft_cap=5.0)
    assert_close(out, ref, tol=0)
    assert_close(lse, ref_lse, tol=0)
    # a (k_pages, v_pages) pair gives the same
    pair = (pool[:, 0], pool[:, 1])
    out2, _ = paged_attention(q, pair, indptr, indices, last, layout=layout, logits_soft_cap=5.0)
    assert torch.equal(out, out2)


def test_paged_append_prefill(gen):
    kv_lens, qo_lens = [12, 7], [4, 7]
    pool, indptr, indices, last, k, v, kv_indptr = make_pool(gen, kv_lens, 4, 1, 8, "NHD")
    q = torch.randn(sum(qo_lens), 2, 8, generator=gen, dtype=torch.float64)
    out, _ = paged_attention(q, pool, indptr, indices, last, [0, 4, 11], causal=True)
    ref, _ = attention(q, k, v, [0, 4, 11], kv_indptr, causal=True)
    assert_close(out, ref, tol=0)


def test_paged_errors(gen):
    pool, indptr, indices, last, *_ = make_pool(gen, [5, 9], 4, 2, 8, "NHD")
    with pytest.raises(InputError, match=r"kv_last_page_len\[1\] = 5 out of range 1..page_size \(4\)"):
        gather_paged_kv(pool, indptr, indices, torch.tensor([1, 5]))
    bad = indices.clone()
    bad[2] = 999
    with pytest.raises(InputError, match="kv_page_indices: page 999 out of range"):
        gather_paged_kv(pool, indptr, bad, last)
    with pytest.raises(InputError, match="kv_page_indptr: must be non-decreasing"):
        gather_paged_kv(pool, torch.tensor([0, 3, 2]), indices[:2], last)
    with pytest.raises(InputError, match="kv_cache: expected"):
        gather_paged_kv(pool[:, :1], indptr, indices, last)
    with pytest.raises(InputError, match="layout"):
        gather_paged_kv(pool, indptr, indices, last, layout="HDN")
    with pytest.raises(InputError, match="kv_last_page_len: expected 2 entries"):
        gather_paged_kv(pool, indptr, indices, last[:1])
