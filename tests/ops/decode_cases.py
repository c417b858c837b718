"""Building decode problems for the tests and the benchmark: a paged cache with scattered pages, queries, a plan,
and the reference answer."""
from __future__ import annotations

import torch

import infernb as ib
from infernb import reference


def make_cache(gen, lens, num_qo_heads, num_kv_heads, head_dim, page_size, *, layout="NHD", dtype=torch.bfloat16,
               device="cpu", spare_pages=3):
    """A cache holding ``len(lens)`` sequences of random K/V (pages interleaved between sequences, the pool
    poisoned with NaN where nothing was written) and ``q [len(lens), num_qo_heads, head_dim]``."""
    pages = sum(-(-n // page_size) for n in lens) + spare_pages
    cache = ib.PagedKVCache(num_pages=max(pages, 1), page_size=page_size, num_kv_heads=num_kv_heads,
                            head_dim=head_dim, dtype=dtype, device=device, layout=layout)
    cache.pool.fill_(float("nan"))
    ids = cache.add_sequences(len(lens))
    first = [n // 2 for n in lens]                 # two rounds of appends: pages of different sequences interleave
    for part in (first, [n - f for n, f in zip(lens, first)]):
        total = sum(part)
        k = torch.randn(total, num_kv_heads, head_dim, generator=gen).to(dtype)
        v = torch.randn(total, num_kv_heads, head_dim, generator=gen).to(dtype)
        cache.append(ids, k.to(device), v.to(device), lengths=part)
    q = torch.randn(len(lens), num_qo_heads, head_dim, generator=gen).to(dtype).to(device)
    return cache, ids, q


def reference_decode(q, cache, ids, variant=None, rope=None, sm_scale=None, window_left=-1):
    """float64 reference of decode attention (on q's device, where the variant's captured tensors live)."""
    t = cache.page_table(ids)
    kw = {} if variant is None else variant.reference_kwargs()
    return reference.paged_attention(q, cache.pool, t.indptr, t.indices, t.last_page_len,
                                     layout=cache.layout, rope=rope, sm_scale=sm_scale, window_left=window_left, **kw)


def random_lens(gen, n, hi):
    return [int(x) for x in torch.randint(1, hi + 1, (n,), generator=gen)]
