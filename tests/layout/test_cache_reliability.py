"""PagedKVCache under hostile use: a failed call changes nothing, bad ids and counts are named, values are stored
detached; and a property test drives random add / append / fork / free with injected failures against a plain
Python model of the cache."""
import numpy as np
import pytest
import torch

import infernb as ib
from infernb import InputError, OutOfPagesError


def state(cache):
    """Everything observable about a cache: bookkeeping, lengths, pages and the data of every live sequence."""
    seqs = {i: (cache.lengths([i])[0], cache.pages(i), *[t.clone() for t in cache.gather(i)]) for i in cache.seq_ids}
    return (cache.num_free_pages, cache.seq_ids, seqs, cache._refcount.copy())


def same(a, b):
    if a[0] != b[0] or a[1] != b[1] or a[2].keys() != b[2].keys() or not np.array_equal(a[3], b[3]):
        return False
    return all(x[0] == y[0] and x[1] == y[1] and torch.equal(x[2], y[2]) and torch.equal(x[3], y[3])
               for x, y in zip(a[2].values(), b[2].values()))


def small_cache(pages=12, page=4):
    c = ib.PagedKVCache(pages, page, 2, 8, dtype=torch.float32)
    ids = c.add_sequences(3)
    c.append(ids, torch.randn(9, 2, 8), torch.randn(9, 2, 8), lengths=[5, 0, 4])
    return c, ids


@pytest.mark.parametrize("bad", ["meta", "sparse"])
def test_append_of_unreadable_tensors_changes_nothing(bad):
    c, ids = small_cache()
    before = state(c)
    k = torch.empty(3, 2, 8, device="meta") if bad == "meta" else torch.randn(3, 2, 8).to_sparse()
    with pytest.raises(InputError, match="k"):
        c.append(ids[:1], k, torch.randn(3, 2, 8), lengths=[3])
    assert same(state(c), before)


def test_a_write_that_fails_midway_leaves_the_cache_as_it_was(monkeypatch):
    c, ids = small_cache()
    before = state(c)
    pool = c.pool

    class Boom(torch.Tensor):
        pass

    def broken_setitem(*a, **kw):
        raise RuntimeError("device lost")
    c.pool = pool.as_subclass(Boom)
    monkeypatch.setattr(Boom, "__setitem__", broken_setitem)
    with pytest.raises(RuntimeError, match="device lost"):
        c.append(ids, torch.randn(7, 2, 8), torch.randn(7, 2, 8), lengths=[3, 4, 0])
    c.pool = pool
    assert same(state(c), before)


@pytest.mark.parametrize("call", [
    lambda c, ids: c.append(ids[:2], torch.randn(3, 2, 8), torch.randn(3, 2, 8), lengths=[2.7, 0.4]),
    lambda c, ids: c.append(ids[:2], torch.randn(1, 2, 8), torch.randn(1, 2, 8), lengths=[True, False]),
    lambda c, ids: c.append(ids[:1], torch.randn(2, 2, 8), torch.randn(2, 2, 8), lengths=2),
    lambda c, ids: c.add_sequences(True),
    lambda c, ids: c.add_sequences(2.0),
    lambda c, ids: c.append([True], torch.randn(1, 2, 8), torch.randn(1, 2, 8)),
    lambda c, ids: c.append(0, torch.randn(1, 2, 8), torch.randn(1, 2, 8)),
    lambda c, ids: c.free(1.0),
    lambda c, ids: c.free([[0]]),
    lambda c, ids: c.fork([0]),
    lambda c, ids: c.lengths([True]),
    lambda c, ids: c.pages(np.float64(0)),
    lambda c, ids: c.page_table([0, [1]]),
    lambda c, ids: ib.PagedKVCache(4.0, 4, 1, 8),
    lambda c, ids: ib.PagedKVCache(4, True, 1, 8),
], ids=["fractional lengths", "bool lengths", "scalar lengths", "bool count", "float count", "bool id", "scalar ids",
        "float id", "nested ids", "fork list", "lengths bool id", "pages float id", "page_table nested",
        "float pages", "bool page size"])
def test_bad_ids_and_counts_are_named_and_change_nothing(call):
    c, ids = small_cache()
    before = state(c)
    with pytest.raises(InputError):
        call(c, ids)
    assert same(state(c), before)


def test_appended_values_are_stored_detached():
    c, ids = small_cache()
    k = torch.randn(2, 2, 8, requires_grad=True)
    c.append(ids[:1], k * 2, torch.randn(2, 2, 8, requires_grad=True), lengths=[2])
    assert not c.pool.requires_grad and c.pool.grad_fn is None
    assert torch.equal(c.gather(ids[0])[0][-2:], (k * 2).detach())


@pytest.mark.parametrize("seed", range(6))
def test_random_operations_match_a_python_model(seed):
    """Random add / append / fork / free, some of them failing on purpose (out of pages, unreadable tensors, bad
    ids, a write that raises): after every step the cache equals a model that keeps each sequence's tokens in a list
    and predicts running out of pages from ceil(len / page_size) per sequence; the free-page count must equal the
    pool minus the distinct pages the live sequences hold."""
    rng = np.random.default_rng(seed)
    P, pages = 4, 24
    c = ib.PagedKVCache(pages, P, 1, 4, dtype=torch.float32)
    model: dict[int, list] = {}                # seq id -> [K rows, V rows] as lists of tensors
    # free pages: the cache's count, which every step checks against the distinct pages its sequences hold

    for step in range(60):
        op = rng.choice(["add", "append", "append", "fork", "free", "bad"])
        before = state(c)
        live = c.seq_ids
        if op == "add":
            (i,) = c.add_sequences(1)
            model[i] = [[], []]
        elif op == "append" and live:
            chosen = list(rng.choice(live, size=min(len(live), int(rng.integers(1, 4))), replace=False))
            lens = [int(x) for x in rng.integers(0, 7, len(chosen))]
            k, v = torch.randn(sum(lens), 1, 4), torch.randn(sum(lens), 1, 4)
            need = sum(-(-(len(model[i][0]) + n) // P) - -(-len(model[i][0]) // P) for i, n in zip(chosen, lens))
            if need > c.num_free_pages:
                with pytest.raises(OutOfPagesError):
                    c.append([int(i) for i in chosen], k, v, lengths=lens)
                assert same(state(c), before)
                continue
            c.append([int(i) for i in chosen], k, v, lengths=lens)
            o = 0
            for i, n in zip(chosen, lens):
                model[int(i)][0] += list(k[o:o + n])
                model[int(i)][1] += list(v[o:o + n])
                o += n
        elif op == "fork" and live:
            parent = int(rng.choice(live))
            L = len(model[parent][0])
            if L % P and c.num_free_pages == 0:
                with pytest.raises(OutOfPagesError):
                    c.fork(parent)
                assert same(state(c), before)
                continue
            child = c.fork(parent)
            model[child] = [list(model[parent][0]), list(model[parent][1])]
        elif op == "free" and live:
            i = int(rng.choice(live))
            c.free(i)
            del model[i]
        elif op == "bad":
            kind = rng.integers(0, 3)
            with pytest.raises(InputError):
                if kind == 0:
                    c.append(live[:1] or [0], torch.empty(2, 1, 4, device="meta"), torch.randn(2, 1, 4), [2])
                elif kind == 1:
                    c.append([0.5], torch.randn(1, 1, 4), torch.randn(1, 1, 4))
                else:
                    c.free([max(model, default=0) + 100])
            assert same(state(c), before)
        # the cache equals the model
        assert sorted(c.seq_ids) == sorted(model)
        for i, (ks, vs) in model.items():
            gk, gv = c.gather(i)
            assert gk.shape[0] == len(ks)
            if ks:
                assert torch.equal(gk, torch.stack(ks)) and torch.equal(gv, torch.stack(vs))
        used = set(p for i in c.seq_ids for p in c.pages(i))
        assert c.num_free_pages == pages - len(used)
