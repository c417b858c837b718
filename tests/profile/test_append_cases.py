"""infernb.profile.append_cases (benchmarks/bench_append.py) on the CPU: the case, its correctness check, the
precomputed destinations and the index_put path, and the whole benchmark with a stand-in timer (the GPU timing itself
runs on a GPU machine), in the JSON schema of the committed run."""
import pytest
import torch

import infernb as ib
from infernb.profile.append_cases import (add_rates, append_benchmark, append_case, append_destinations,
                                          append_summary, check_append, index_put_append)
from infernb.profile.timing import Timing

SMALL = dict(batch=8, new_tokens=3, kv_heads=2, head_dim=8, page_size=4, cached=5)


@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_append_case_check_and_destinations(layout):
    c = append_case(layout, appends=4, device="cpu", **SMALL)
    cache, ids, k, v = c["cache"], c["ids"], c["k"], c["v"]
    assert c["row"] == dict(layout=layout, batch=8, new_tokens=3, kv_heads=2, head_dim=8, page_size=4,
                            bytes=2 * 8 * 3 * 2 * 8 * 2)
    assert cache.lengths(ids) == [5] * 8 and k.shape == v.shape == (24, 2, 8) and k.dtype == torch.bfloat16
    check_append(c)
    for _ in range(3):                                  # room for `appends` appends in all
        cache.append(ids, k, v, [3] * 8)
    assert cache.lengths(ids) == [5 + 4 * 3] * 8
    table, pg, sl = append_destinations(cache, ids, 3)
    assert table.indptr.tolist() == cache.page_table(ids).indptr.tolist() and pg.shape == sl.shape == (24,)
    pool = cache.pool
    at = (lambda i: pool[pg, i, sl]) if layout == "NHD" else (lambda i: pool[pg, i, :, sl])
    assert torch.equal(at(0), k) and torch.equal(at(1), v)      # where the last append wrote
    if layout == "NHD":
        pool[pg, :, sl] = 0
    else:
        pool[pg, :, :, sl] = 0
    index_put_append(cache, pg, sl, k, v)()                     # the index_put path writes them back
    for i, s in enumerate(ids):
        gk, gv = cache.gather(s)
        assert torch.equal(gk[-3:], k[3 * i:3 * i + 3]) and torch.equal(gv[-3:], v[3 * i:3 * i + 3])


def test_check_append_catches_a_wrong_write():
    c = append_case("NHD", device="cpu", **SMALL)
    append = c["cache"].append
    c["cache"].append = lambda ids, k, v, lens: append(ids, k + 1, v, lens)
    with pytest.raises(AssertionError, match="does not read back"):
        check_append(c)


def test_append_benchmark_assembles_the_committed_schema_on_the_cpu():
    calls = []

    def timer(fn, *, warmup, runs):                     # stand-in for cuda_time: no GPU here
        calls.append((warmup, runs))
        return Timing(0.5, 0.25, 1.0, runs)

    result = append_benchmark(warmup=2, runs=3, step_runs=2, flashinfer=False, device="cpu", timer=timer, **SMALL)
    assert calls == [(2, 3)] * 6                        # infernb, torch_index_put, infernb_kernel per layout
    committed = ib.profile.committed_results("append")
    assert committed is not None, "benchmarks/results/append_*.json is committed"
    assert set(result) == set(committed) and result["benchmark"] == "paged_kv_append" and result["flashinfer"] is None
    assert [r["layout"] for r in result["rows"]] == [r["layout"] for r in committed["rows"]] == ["NHD", "HND"]
    for r, cr in zip(result["rows"], committed["rows"], strict=True):
        assert set(r) == set(cr) - {"flashinfer_ms", "flashinfer_GBps"}
        assert (r["infernb_ms"], r["infernb_p10_ms"], r["infernb_p90_ms"]) == (0.5, 0.25, 1.0)
        assert r["infernb_GBps"] == pytest.approx(r["bytes"] / 0.5e-3 / 1e9) and r["infernb_step_ms"] > 0
    text = append_summary(result).splitlines()
    assert len(text) == 3 and text[0].startswith("NHD: ") and "infernb_kernel 500.0 us" in text[0]
    assert "flashinfer" not in text[0]


def test_add_rates_and_summary_of_the_committed_run():
    row = add_rates(dict(bytes=4_000_000, infernb_ms=2.0, flashinfer_ms=4.0, infernb_p10_ms=1.0))
    assert row["infernb_GBps"] == pytest.approx(2.0) and row["flashinfer_GBps"] == pytest.approx(1.0)
    assert "infernb_p10_GBps" not in row
    committed = ib.profile.committed_results("append")
    for r in committed["rows"]:                         # the committed rates are bytes / time, as add_rates makes them
        fresh = add_rates({k: v for k, v in r.items() if not k.endswith("_GBps")})
        assert fresh == pytest.approx(r)
    text = append_summary(committed)
    assert text.count("GB/s") == sum(k.endswith("_GBps") for r in committed["rows"] for k in r)
