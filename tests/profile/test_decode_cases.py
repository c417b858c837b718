"""infernb.profile.decode_cases (benchmarks/bench_decode.py) on the CPU: the float64 reference of a decode batch against
a brute-force computation, the derived fields of a row, the whole benchmark with stand-ins for the GPU timing (the
variant / tuning runners run the emulator on a tiny CPU batch) reproducing the committed JSON, and its summary."""
import math
import re

import pytest
import torch

import infernb as ib
from infernb.ops.paged_decode import DecodeRunner
from infernb.profile import random_decode_batch
from infernb.profile.decode_cases import (DECODE_VARIANTS, FINISH_FIELDS, decode_benchmark, decode_reference,
                                          decode_summary, decode_variants, finish_row)
from infernb.profile.timing import Timing, device_name
from infernb.testing import rel_error

SMALL = dict(num_qo_heads=4, num_kv_heads=2, head_dim=8, page_size=4)
RUN = dict(num_qo_heads=4, num_kv_heads=2, head_dim=64, page_size=16)     # a head dim the decode runner takes


@pytest.fixture(scope="module")
def committed():
    run = ib.profile.committed_results("decode")
    assert run is not None, "benchmarks/results/decode_*.json is committed"
    return run


def brute_decode(cache, ids, q, *, cap=0.0, slopes=None, window=-1, theta=None):
    """Decode attention written out: one query per sequence at position kv_len - 1, GQA, float64."""
    hq, d = q.shape[1], q.shape[2]
    outs = []
    for b, s in enumerate(ids):
        k, v = (x.double() for x in cache.gather(s))                  # [n, Hkv, D]
        n, p = k.shape[0], k.shape[0] - 1
        qb = q[b].double()[None]                                       # [1, Hq, D]
        if theta is not None:                                          # Llama's half rotation by position
            def rot(x, pos):
                f = theta ** (-2.0 * torch.arange(d // 2, dtype=torch.float64) / d)
                a = pos.double()[:, None, None] * f
                x1, x2 = x[..., :d // 2], x[..., d // 2:]
                return torch.cat([x1 * a.cos() - x2 * a.sin(), x2 * a.cos() + x1 * a.sin()], -1)
            qb, k = rot(qb, torch.tensor([p])), rot(k, torch.arange(n))
        g = hq // k.shape[1]
        kk, vv = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)  # [n, Hq, D]
        sc = torch.einsum("hd,nhd->hn", qb[0], kk) / math.sqrt(d)
        if slopes is not None:
            sc = sc + slopes.double()[:, None] * (torch.arange(n) - p)
        if cap:
            sc = cap * torch.tanh(sc / cap)
        if window >= 0:
            sc[:, torch.arange(n) < p - window] = -math.inf
        outs.append(torch.einsum("hn,nhd->hd", sc.softmax(-1), vv))
    return torch.stack(outs)


def test_decode_reference_is_the_brute_force_decode_with_each_variant():
    lens = [37, 5, 20]
    cache, ids, q = random_decode_batch(lens, device="cpu", seed=3, **SMALL)
    q = q * 4                                                          # logits large enough for the soft-cap to bite
    table = cache.page_table(ids)
    plain = decode_reference(cache, table, q)
    assert plain.dtype == torch.float64 and plain.shape == (3, 4, 8)
    torch.testing.assert_close(plain, brute_decode(cache, ids, q), rtol=1e-10, atol=1e-12)
    slopes = ib.variants.alibi_slopes(4)
    for kw, brute_kw in [(dict(variant=ib.variants.softcap(2.0)), dict(cap=2.0)),
                         (dict(variant=ib.variants.alibi(slopes)), dict(slopes=slopes)),
                         (dict(variant=ib.variants.sliding_window(6)), dict(window=6)),
                         (dict(rope=ib.RoPE(theta=100.0)), dict(theta=100.0))]:
        got = decode_reference(cache, table, q, **kw)
        torch.testing.assert_close(got, brute_decode(cache, ids, q, **brute_kw), rtol=1e-10, atol=1e-12)
        assert rel_error(got, plain) > 1e-2, f"{kw} changes the output of this batch"
    # the pool's layout is the cache's: an HND copy of the cache (same pages) gives the same reference
    hnd = cache.to_layout("HND")
    assert hnd.layout == "HND" and not torch.equal(hnd.pool, cache.pool)
    torch.testing.assert_close(decode_reference(hnd, table, q), plain, rtol=0, atol=0)


def test_decode_variants_are_the_benchmark_variants():
    v = decode_variants(8, "cpu")
    assert tuple(v) == DECODE_VARIANTS
    assert v["rope"] == dict(rope=ib.RoPE())
    names = [kw["variant"].name for n, kw in v.items() if n != "rope"]
    assert names == ["softcap_30", "alibi_h8", "sliding_window_1024"]
    assert v["sliding_window_1024"]["variant"].window_left == 1024
    s, _ = v["alibi"]["variant"].bound_mods()                         # ALiBi: slope[h] * (kv_idx - q_idx)
    h = torch.arange(8)[:, None, None]
    torch.testing.assert_close(s(torch.zeros(8, 1, 1), 0, h, torch.tensor(5), torch.tensor(2)).flatten(),
                               -3 * ib.variants.alibi_slopes(8))


def test_finish_row_derived_fields():
    ref = dict(read_ms=0.4, copy_ms=0.5, shape=dict(unroll=4, ctas_per_sm=8, threads=512))
    row = finish_row(dict(case="a", kv_bytes=10**9, infernb_TBps=2.0, flashinfer_ms=0.52, speedup_vs_flashinfer=1.2),
                     target=1.3, copy_tbps=2.5, ref=ref)
    assert row["target"] == 1.3 and row["copy_fraction"] == pytest.approx(0.8)
    assert (row["read_ref_ms"], row["copy_same_bytes_ms"], row["read_ref_shape"]) == (0.4, 0.5, ref["shape"])
    assert row["read_ref_TBps"] == pytest.approx(2.5) and row["copy_same_bytes_TBps"] == pytest.approx(2.0)
    assert row["target_ms"] == pytest.approx(0.4) and row["meets_target"] is False
    row = finish_row(dict(kv_bytes=10**9, infernb_TBps=2.0, flashinfer_ms=0.5, speedup_vs_flashinfer=1.3),
                     target=1.3, copy_tbps=2.5, ref=ref)
    assert row["meets_target"] is True                                # the target met exactly counts
    row = finish_row(dict(kv_bytes=10**9, infernb_TBps=2.0), target=1.0, copy_tbps=4.0, ref=ref)
    assert "target_ms" not in row and "meets_target" not in row     # without FlashInfer: no target time
    assert set(row) == {"kv_bytes", "infernb_TBps"} | set(FINISH_FIELDS) - {"target_ms", "meets_target"}


def test_finish_row_reproduces_the_committed_rows(committed):
    for cr in committed["rows"]:
        row = {k: v for k, v in cr.items() if k not in FINISH_FIELDS}
        ref = dict(read_ms=cr["read_ref_ms"], copy_ms=cr["copy_same_bytes_ms"], shape=cr["read_ref_shape"])
        fresh = finish_row(row, target=cr["target"], copy_tbps=committed["copy_TBps"], ref=ref)
        assert set(fresh) == set(cr) and fresh["meets_target"] is cr["meets_target"]
        assert fresh["read_ref_shape"] == cr["read_ref_shape"] and fresh["plan"] == cr["plan"]
        assert {k: v for k, v in fresh.items() if isinstance(v, float)} == pytest.approx(
            {k: v for k, v in cr.items() if isinstance(v, float)}, rel=1e-12)


def test_decode_benchmark_reproduces_the_committed_json_with_stand_ins(committed):
    """profile_decode, the read references and the copy ceiling replaced by stand-ins returning the committed
    numbers; the variant case's extra hook runs for real on a tiny CPU batch (its runners: the emulator), with a
    stand-in for the interleaved rounds returning the committed times: the result is the committed JSON (errors
    aside: those of the CPU batch)."""
    crows = {r["case"]: r for r in committed["rows"]}
    cases = {name: [1] for name in crows}                            # (the stand-in ignores the lengths)
    vcase = committed["variants"][0]["case"]
    tuning = [tuple(int(x) for x in m.groups()) for k in crows[vcase]
              if (m := re.fullmatch(r"tuning_s(\d+)_c(\d+)_ms", k))]
    assert tuning == [(3, 2)]
    times = {"plain": committed["variants"][0]["plain_ms"]}
    times.update({f"tuning_s{s}_c{c}": crows[vcase][f"tuning_s{s}_c{c}_ms"] for s, c in tuning})
    times.update({v["variant"]: v["ms"] for v in committed["variants"]})
    calls, rounds, refs = [], [], []

    lens = [40, 24, 7]
    cache, ids, q = random_decode_batch(lens, device="cpu", seed=1, **RUN)
    table = cache.page_table(ids)
    p = ib.plan([1] * len(lens), lens, page_table=table, **RUN)
    runner = DecodeRunner(p, cache, table)
    out = runner(q)[0]

    def time_interleaved(fns):
        rounds.append(fns)
        return {k: Timing(times[k], times[k] * 0.99, times[k] * 1.01, 5) for k in fns}

    def profile(cases_, *, runs, extra, progress, flashinfer, **shape):
        calls.append(dict(cases=cases_, runs=runs, progress=progress, flashinfer=flashinfer, shape=shape))
        rows = []
        for name in cases_:
            row = {k: v for k, v in crows[name].items() if k not in FINISH_FIELDS and not k.startswith("tuning_")}
            extra(name, dict(cache=cache, table=table, q=q, plan=p, runner=runner, out=out, rel=rel_error,
                             time=None, time_interleaved=time_interleaved), row)
            rows.append(row)
        return rows

    def read_refs(nbytes, *, runs):
        cr = committed["rows"][len(refs)]
        refs.append((nbytes, runs))
        return dict(read_ms=cr["read_ref_ms"], copy_ms=cr["copy_same_bytes_ms"], shape=cr["read_ref_shape"])

    def copy_ceiling():
        assert not calls, "the copy ceiling is measured before the cases"
        return committed["copy_TBps"]

    result = decode_benchmark(cases, targets={n: r["target"] for n, r in crows.items()}, variant_case=vcase,
                              tuning=tuning, runs=7, shape=RUN, flashinfer=False, profile=profile,
                              read_refs=read_refs, copy_ceiling=copy_ceiling)
    assert calls == [dict(cases=cases, runs=7, progress=False, flashinfer=False, shape=RUN)]
    assert refs == [(r["kv_bytes"], 7) for r in committed["rows"]]
    # one round of interleaved timing, on the variant case only: plain decode, the tuning runners, the variants
    assert len(rounds) == 1 and list(rounds[0]) == ["plain", "tuning_s3_c2", *DECODE_VARIANTS]
    fns = rounds[0]
    assert torch.equal(fns["plain"]()[0], out)
    rope = decode_reference(cache, table, q, rope=ib.RoPE())          # each timed call runs its own runner
    assert rel_error(fns["rope"]()[0], rope) < 1e-2 < rel_error(out, rope)

    assert set(result) == set(committed) and result["benchmark"] == "decode" and result["flashinfer"] is None
    assert result["device"] == device_name() and result["copy_TBps"] == committed["copy_TBps"]
    assert result["shape"] == dict(RUN, dtype="bf16") and set(result["shape"]) == set(committed["shape"])
    assert [r["case"] for r in result["rows"]] == [r["case"] for r in committed["rows"]]
    for r, cr in zip(result["rows"], committed["rows"], strict=True):
        assert set(r) == set(cr)
        errs = [k for k in r if k.startswith("tuning_") and k.endswith("_err")]
        assert errs == (["tuning_s3_c2_err"] if r["case"] == vcase else [])
        for k in errs:                                                # the CPU batch's: tuning plan vs plain
            assert 0 <= r[k] < 1e-3
        floats = [k for k in r if isinstance(cr[k], float) and k not in errs]
        assert [r[k] for k in floats] == pytest.approx([cr[k] for k in floats], rel=1e-12)
        assert {k: r[k] for k in r if k not in floats + errs} == {k: cr[k] for k in cr if k not in floats + errs}
    assert len(result["variants"]) == len(committed["variants"])
    for v, cv in zip(result["variants"], committed["variants"], strict=True):
        assert set(v) == set(cv)
        assert (v["case"], v["variant"]) == (cv["case"], cv["variant"])
        assert [v[k] for k in ("ms", "plain_ms", "slowdown")] == pytest.approx(
            [cv[k] for k in ("ms", "plain_ms", "slowdown")], rel=1e-12)
        assert 0 < v["err_vs_reference"] < 1e-2                      # bf16 output of the emulator vs float64
    assert decode_summary(result).splitlines()[:-len(DECODE_VARIANTS)] == \
        [re.sub(r"err \S+\)", f"err {result['rows'][0]['tuning_s3_c2_err']:.1e})", line)
         for line in decode_summary(committed).splitlines()[:-len(DECODE_VARIANTS)]]


def test_decode_benchmark_needs_a_target_for_every_case():
    def never(*a, **k):
        raise AssertionError("nothing is measured before the arguments are checked")

    with pytest.raises(KeyError, match="1x32768"):
        decode_benchmark({"64x4096": [1], "1x32768": [1]}, targets={"64x4096": 1.0}, profile=never,
                         read_refs=never, copy_ceiling=never)


def num(s):
    return float(s.replace("TB/s", "").rstrip("x%us"))


def test_summary_of_the_committed_run(committed):
    lines = decode_summary(committed).splitlines()
    rows, variants = committed["rows"], committed["variants"]
    tuning = [(r, k[:-3]) for r in rows for k in r if k.startswith("tuning_") and k.endswith("_ms")]
    assert len(lines) == 2 + len(rows) + len(tuning) + len(variants)
    assert lines[0] == f"copy ceiling {committed['copy_TBps']:.2f} TB/s"
    assert lines[1].split() == ["case", "infernb", "flashinfer", "sdpa", "speedup", "target", "of", "copy", "read",
                                "ref", "copy", "target"]
    case_lines = [line for line in lines[2:] if not line.startswith("  ")]
    assert [line.split()[0] for line in case_lines] == [r["case"] for r in rows]
    for line, r in zip(case_lines, rows, strict=True):
        f = line.split()[1:]
        paths = [k for k in ("infernb", "flashinfer", "sdpa") if f"{k}_ms" in r]
        vals = iter(f)
        for k in ("infernb", "flashinfer", "sdpa"):                   # time (us) and TB/s, or "-"
            if k in paths:
                assert num(next(vals)) == pytest.approx(r[f"{k}_ms"] * 1e3, abs=0.051)
                assert num(next(vals)) == pytest.approx(r[f"{k}_TBps"], abs=0.0051)
            else:
                assert next(vals) == "-"
        rest = [num(x) for x in vals]
        assert rest == pytest.approx([r["speedup_vs_flashinfer"], r["target"], 100 * r["copy_fraction"],
                                      r["read_ref_ms"] * 1e3, r["copy_same_bytes_ms"] * 1e3, r["target_ms"] * 1e3],
                                     abs=0.51)
        assert line.count("TB/s") == len(paths) and ("sdpa_ms" in r) == (line.count("-") == 0)
    tuning_lines = [line for line in lines[2:] if line.startswith("  ") and line.split()[1] not in DECODE_VARIANTS]
    assert len(tuning_lines) == len(tuning)
    for line, (r, k) in zip(tuning_lines, tuning, strict=True):
        assert line.split()[:2] == [r["case"], k[len("tuning_"):]]
        assert f"x{r[k + '_vs_plain']:.3f} of plain" in line and f"(err {r[k + '_err']:.1e})" in line
    for line, v in zip(lines[-len(variants):], variants, strict=True):
        w = line.split()
        assert w[:2] == [v["case"], v["variant"]] and num(w[2]) == pytest.approx(v["ms"] * 1e3, abs=0.051)
        assert w[3] == f"x{v['slowdown']:.3f}" and w[-1] == f"{v['err_vs_reference']:.1e})"
