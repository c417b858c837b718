"""Cascade attention (infernb.ops.cascade, issue 15): each shared level of a fork tree computed once, each sequence's
own keys as decode / append, merged by LSE -- equal to plain attention over each whole sequence (float64
reference). CPU: the emulator; GPU: the kernels, both prefill backends."""
import numpy as np
import pytest
import torch

import infernb as ib
from infernb import InputError, reference
from infernb.ops.cascade import cascade_attention, cascade_tree

from infernb.testing import assert_close

from .test_prefill import DEV, check, gpu, reference_rounded_rope

_hopper = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9,
                             reason="needs an sm_90 (Hopper) GPU")


def fork_tree(gen, prefix, branches, tails, *, hkv=2, d=64, page_size=16, layout="NHD", device="cpu",
              dtype=torch.bfloat16, slack=4):
    """A root of `prefix` tokens forked `branches[0]` times (+tails[0] tokens each), the first child forked
    `branches[1]` times (+tails[1]), and so on; returns (cache, the leaves and inner sequences' ids)."""
    r = lambda n: torch.randn(n, hkv, d, generator=gen).to(dtype).to(device)  # noqa: E731
    total = prefix + sum(b * t for b, t in zip(branches, tails))
    c = ib.PagedKVCache(slack * (total // page_size + sum(branches) + 8), page_size, hkv, d, dtype=dtype,
                        device=device, layout=layout)
    (root,) = c.add_sequences(1)
    c.append([root], r(prefix), r(prefix), [prefix])
    ids, parent = [root], root
    for b, t in zip(branches, tails):
        kids = [c.fork(parent) for _ in range(b)]
        for s in kids:
            c.append([s], r(t), r(t), [t])
        ids += kids
        parent = kids[0]
    return c, ids


def run(gen, c, ids, qo_lens, hq, *, backend="auto", variant=None, rope=None):
    """Cascade attention of the sequences' newest tokens against the float64 reference of plain attention over each
    whole sequence (with RoPE: the rotation rounded once to the operand dtype, and the unrounded one)."""
    qo = [1] * len(ids) if qo_lens is None else qo_lens
    q = torch.randn(sum(qo), hq, c.head_dim, generator=gen).to(c.dtype).to(c.pool.device)
    out, lse = cascade_attention(q, c, ids, qo_lens, return_lse=True, backend=backend, variant=variant, rope=rope)
    t = c.page_table(ids)
    kw = {} if variant is None else variant.reference_kwargs()
    qo_ptr = np.r_[0, np.cumsum(qo)].tolist()
    ref_o, ref_s = reference.paged_attention(q, c.pool, t.indptr, t.indices, t.last_page_len, qo_ptr,
                                             layout=c.layout, causal=True, rope=rope, **kw)
    if rope is None:
        check(out, lse, ref_o, ref_s, c.dtype)
    else:
        k, v, _ = reference.gather_paged_kv(c.pool, t.indptr, t.indices, t.last_page_len, layout=c.layout)
        rnd_o, rnd_s = reference_rounded_rope(q, k, v, qo, c.lengths(ids), rope, causal=True, **kw)
        check(out, lse, rnd_o, rnd_s, c.dtype, exact_o=ref_o)
    return cascade_tree(c, ids, qo_lens)


@pytest.mark.parametrize("qo", ["decode", "append"])
def test_cpu_cascade_equals_plain_attention(gen, qo):
    c, ids = fork_tree(gen, 100, [3, 2], [40, 37])
    qo_lens = None if qo == "decode" else [1, 3, 2, 5, 17, 1]
    t = run(gen, c, ids, qo_lens, 8)
    assert len(t.levels) == 2 and t.stats()["read_ratio"] > 2


def test_cpu_cascade_layouts_pages_and_no_sharing(gen):
    c, ids = fork_tree(gen, 37, [4], [5], page_size=5, layout="HND")
    run(gen, c, ids, [2, 1, 3, 1, 5], 4)
    # page size 1: the root's last token is its own query's position, so it shares 19 pages; its forks share the
    # 20th among themselves (a second level)
    c, ids = fork_tree(gen, 20, [2], [3], page_size=1)
    t = run(gen, c, ids, None, 2)
    assert [(lv.rows, lv.first_page, len(lv.pages)) for lv in t.levels] == [((0, 1, 2), 0, 19), ((1, 2), 19, 1)]
    # nothing shared (a prefix shorter than a page): the cascade is plain decode
    c, ids = fork_tree(gen, 10, [3], [4])
    t = run(gen, c, ids, None, 4)
    assert t.levels == ()


def test_cpu_cascade_mqa(gen):
    # 32 query heads on one KV head: the levels' tiles hold 32 rows a sequence; the own keys run on the prefill
    # kernel too (the decode kernel holds groups of 16)
    c, ids = fork_tree(gen, 80, [3], [20], hkv=1, d=64)
    run(gen, c, ids, None, 32)


def test_cpu_runner_reuse_and_a_changed_cache(gen):
    c, ids = fork_tree(gen, 64, [3], [8])
    q = torch.randn(4, 4, 64, generator=gen).bfloat16()
    r = ib.ops.CascadeRunner(c, ids)
    o1, s1 = r(q)
    o2, s2 = r(q)
    assert torch.equal(o1, o2) and torch.equal(s1, s2)
    assert torch.equal(o1, cascade_attention(q, c, ids))
    # a fork leaves the bound sequences as they were; an append to one of them is refused
    c.fork(ids[1])
    assert torch.equal(r(q)[0], o1)
    kv = torch.randn(1, 2, 64, generator=gen).bfloat16()
    c.append([ids[2]], kv, kv, [1])
    with pytest.raises(InputError, match="changed length"):
        r(q)


def test_cpu_cascade_refusals(gen):
    c, ids = fork_tree(gen, 64, [2], [8])
    q = torch.randn(3, 4, 64, generator=gen).bfloat16()
    with pytest.raises(InputError, match="qo_lens"):
        cascade_attention(torch.randn(3, 4, 64).bfloat16(), c, ids, [1, 1, 100])
    with pytest.raises(InputError, match="tree"):
        cascade_attention(q, c, ids, tree=cascade_tree(c, ids[:2]))
    with pytest.raises(InputError, match="heads"):
        cascade_attention(torch.randn(3, 3, 64).bfloat16(), c, ids)


@pytest.mark.parametrize("qo", ["decode", "append"])
def test_cpu_cascade_rope_and_softcap(gen, qo):
    c, ids = fork_tree(gen, 100, [3, 2], [40, 37])
    qo_lens = None if qo == "decode" else [1, 3, 2, 5, 17, 1]
    run(gen, c, ids, qo_lens, 8, rope=ib.RoPE(theta=100.0))
    run(gen, c, ids, qo_lens, 8, variant=ib.variants.softcap(5.0))


def test_cascade_refuses_positional_and_sigmoid_variants(gen):
    from infernb.ops.cascade import cascade_unsupported

    c, ids = fork_tree(gen, 100, [3], [40])
    q = torch.randn(4, 8, 64, generator=gen).bfloat16()
    assert cascade_unsupported(None) is None and cascade_unsupported(ib.variants.softcap(30.0)) is None
    for v, why in ((ib.variants.alibi(8), "positions"), (ib.variants.sliding_window(64), "positions"),
                   (ib.variants.sigmoid_attention(), "softmax")):
        assert why in cascade_unsupported(v)
        with pytest.raises(InputError, match=f"cannot run variant .*{why}"):
            cascade_attention(q, c, ids, variant=v)


def test_cpu_decode_cascade_auto_true_false(gen):
    c, ids = fork_tree(gen, 300, [5], [37])
    q = torch.randn(len(ids), 8, 64, generator=gen).bfloat16()
    t = c.page_table(ids)
    ref_o, ref_s = reference.paged_attention(q, c.pool, t.indptr, t.indices, t.last_page_len, causal=True)
    for mode in ("auto", True, False):
        out, lse = ib.decode(q, c, ids, cascade=mode, return_lse=True)
        check(out, lse, ref_o, ref_s, c.dtype)
    with pytest.raises(InputError, match="cascade: expected"):
        ib.decode(q, c, ids, cascade="yes")
    with pytest.raises(InputError, match="cannot run variant"):
        ib.decode(q, c, ids, cascade=True, variant=ib.variants.alibi(8))
    ib.decode(q, c, ids, variant=ib.variants.alibi(8))          # auto: plain decode runs it


def test_cascade_choice_says_which_and_why(gen):
    # a long shared prefix read by many sequences pays; a short one by few does not; no sharing, no cascade
    big, ids = fork_tree(gen, 32768, [63], [512], hkv=8, d=128, slack=1)
    ch = ib.cascade_choice(big, ids, num_qo_heads=32)
    assert ch.use and ch.reason.startswith("cascade:") and ch.cascade_us < ch.plain_us and len(ch.tree.levels) == 2
    small, ids = fork_tree(gen, 64, [1], [16])
    ch = ib.cascade_choice(small, ids, num_qo_heads=8)
    assert not ch.use and ch.reason.startswith("plain:") and ch.cascade_us > ch.plain_us
    c = ib.PagedKVCache(64, 16, 2, 64)
    ids = c.add_sequences(3)
    c.append(ids, torch.randn(60, 2, 64), torch.randn(60, 2, 64), [20, 20, 20])
    assert "share no full page" in ib.cascade_choice(c, ids, num_qo_heads=8).reason
    assert "softmax" in ib.cascade_choice(big, [0, 1], num_qo_heads=32, variant=ib.variants.sigmoid_attention()).reason


def test_cpu_decode_runner_binds_the_choice_once(gen):
    c, ids = fork_tree(gen, 300, [5], [37])
    q = torch.randn(len(ids), 8, 64, generator=gen).bfloat16()
    t = c.page_table(ids)
    ref_o, ref_s = reference.paged_attention(q, c.pool, t.indptr, t.indices, t.last_page_len, causal=True)
    for mode, kind in ((True, "CascadeRunner"), (False, "DecodeRunner")):
        step = ib.decode_runner(c, ids, num_qo_heads=8, cascade=mode)
        assert type(step.runner).__name__ == kind and kind in repr(step)
        check(*step(q), ref_o, ref_s, c.dtype)
        plans = step.runner.plans(8) if mode else None
        if plans:
            assert plans["levels"].batch_size == len(step.runner.tree.levels) >= 1
            assert plans["own"].batch_size == len(ids)
    # MQA (a group of 32 > the decode kernel's 16) takes the prefill kernel's append
    step = ib.decode_runner(c, ids, num_qo_heads=64, cascade=False)
    assert type(step.runner).__name__ == "PrefillRunner"
    # a changed sequence: the bound step refuses
    c.append([ids[0]], torch.randn(1, 2, 64).bfloat16(), torch.randn(1, 2, 64).bfloat16())
    for mode in (True, False):
        with pytest.raises(InputError, match="changed length"):
            step = ib.decode_runner(c, ids, num_qo_heads=8, cascade=mode)
            c.append([ids[1]], torch.randn(1, 2, 64).bfloat16(), torch.randn(1, 2, 64).bfloat16())
            step(q)


def test_cpu_decode_auto_takes_the_cascade_when_the_estimate_says_so(gen, monkeypatch):
    from infernb.ops import cascade as casc

    c, ids = fork_tree(gen, 300, [5, 2], [37, 20])
    c2 = ib.PagedKVCache(64, 16, 2, 64)
    lone = c2.add_sequences(2)
    c2.append(lone, torch.randn(40, 2, 64).bfloat16(), torch.randn(40, 2, 64).bfloat16(), [20, 20])
    q = torch.randn(len(ids), 8, 64, generator=gen).bfloat16()
    t = c.page_table(ids)
    ref_o, ref_s = reference.paged_attention(q, c.pool, t.indptr, t.indices, t.last_page_len, causal=True)
    monkeypatch.setitem(casc.CASCADE_MODEL, "margin", 1e9)          # every estimate "pays"
    step = ib.decode_runner(c, iter(ids), num_qo_heads=8)           # (any iterable of ids)
    assert type(step.runner).__name__ == "CascadeRunner" and step.choice.use
    check(*step(q), ref_o, ref_s, c.dtype)
    check(*ib.decode(q, c, ids, return_lse=True), ref_o, ref_s, c.dtype)
    assert ib.cascade_choice(c, iter(ids), num_qo_heads=8).use        # a generator of ids is read once, whole
    # nothing shared, a positional variant, a window promise: plain decode whatever the estimate
    assert type(ib.decode_runner(c2, lone, num_qo_heads=8).runner).__name__ == "DecodeRunner"
    for v in (ib.variants.alibi(8), ib.Variant("win", window_left=16)):
        assert type(ib.decode_runner(c, ids, num_qo_heads=8, variant=v).runner).__name__ == "DecodeRunner"
    with pytest.raises(InputError, match="made for num_qo_heads=8"):
        step(torch.randn(len(ids), 16, 64).bfloat16())


def test_cpu_decode_runner_rope_num_sms_and_plans(gen):
    c, ids = fork_tree(gen, 300, [5, 2], [37, 20])
    q = torch.randn(len(ids), 8, 64, generator=gen).bfloat16()
    rope = ib.RoPE(theta=500.0)
    for mode in (True, False):
        step = ib.decode_runner(c, ids, num_qo_heads=8, rope=rope, cascade=mode, num_sms=3)
        o, s = step(q)
        o2, s2 = ib.decode(q, c, ids, rope=rope, cascade=not mode, return_lse=True)
        assert_close(o.float(), o2.float(), torch.bfloat16)
    r = ib.decode_runner(c, ids, num_qo_heads=8, cascade=True, num_sms=3).runner
    plans = r.plans(8)
    assert plans["own"].num_ctas <= 3 * 4 and plans["levels"].num_ctas <= 3 * 4     # (a few CTAs per SM)
    assert plans["levels"].tile_q == 64                                             # <= 256 rows a KV head
    wide = ib.ops.CascadeRunner(c, ids, level_tile_q=128, level_min_keys=0).plans(8)["levels"]
    assert wide.tile_q == 128 and wide.num_ctas >= plans["levels"].num_ctas
    # MQA: the plain path runs the prefill kernel's append (a non-contiguous q is fine)
    qm = torch.randn(64, len(ids), 64, generator=gen).bfloat16().transpose(0, 1)
    om = ib.decode(qm, c, ids, cascade=False)
    t = c.page_table(ids)
    ref, _ = reference.paged_attention(qm, c.pool, t.indptr, t.indices, t.last_page_len, causal=True)
    assert_close(om.float(), ref.float(), torch.bfloat16, rowwise=True)


def test_variant_positional_reads_the_traced_indices():
    assert not ib.Variant("head_scale", score_mod=lambda s, b, h, q, k: s * (1.0 + 0.1 * h)).positional
    assert ib.Variant("q_bias", score_mod=lambda s, b, h, q, k: s + 0.001 * q).positional
    assert ib.Variant("doc", mask_mod=lambda b, h, q, k: b == 0).positional
    assert ib.Variant("raw", cuda_score_mod="return score;", score_mod=lambda s, b, h, q, k: s).positional


def test_rope_positions_are_checked():
    from infernb.ops.prefill import PrefillRunner, plan_batch

    p = plan_batch([2, 3], [10, 20], num_qo_heads=4, num_kv_heads=2, head_dim=64, dtype=torch.bfloat16)
    ok = (np.array([8, 9, 17, 18, 19]), np.array([100, 0]))
    PrefillRunner(p, rope=ib.RoPE(), device="cpu", rope_positions=ok)
    for bad, what in ((ok, "without rope"), ((ok[0][:2], ok[1]), "q_pos"), ((ok[0], -ok[1] - 1), "0 .. 2"),
                      ((ok[0].astype(float), ok[1]), "integer")):
        with pytest.raises(InputError, match=f"rope_positions.*{what}" if what != "without rope" else what):
            PrefillRunner(p, rope=None if what == "without rope" else ib.RoPE(), device="cpu", rope_positions=bad)
    with pytest.raises(InputError, match="rope_path='tile'"):
        PrefillRunner(p, rope=ib.RoPE(), device="cpu", rope_positions=ok, rope_path="tile")


def test_hopper_paged_default_is_the_asynchronous_arrivals():
    from infernb.ops.prefill_sm90 import PAGED_ASYNC, config_tag, default_traits, sm90_traits

    for d in (64, 128, 256):
        assert config_tag(default_traits(d, "NHD"), "NHD") == "" == config_tag(sm90_traits(d))
        assert default_traits(d, "HND").sched & PAGED_ASYNC and not default_traits(d).sched & PAGED_ASYNC
        assert config_tag(sm90_traits(d), "NHD") == f"s{sm90_traits(d).stages}x3"


# ---------------------------------------------------------------------------------------------- GPU
@gpu
@pytest.mark.parametrize("backend", ["mma", pytest.param("sm90", marks=_hopper)])
@pytest.mark.parametrize("case", ["decode_64x_4096", "append_tree", "deep_tree_hnd", "page1"])
def test_gpu_cascade_equals_plain_attention(gen, backend, case):
    if case == "decode_64x_4096":
        c, ids = fork_tree(gen, 4096, [63], [100], hkv=8, d=128, device=DEV)
        t = run(gen, c, ids, None, 32, backend=backend)
        # the root's last page holds its own query's key: it shares 255 pages with its 63 forks, which share the
        # 256th among themselves
        assert [(len(lv.rows), len(lv.pages)) for lv in t.levels] == [(64, 255), (63, 1)]
    elif case == "append_tree":
        c, ids = fork_tree(gen, 3000, [5, 3], [700, 300], hkv=8, d=128, device=DEV)
        run(gen, c, ids, [1, 64, 3, 17, 1, 2, 128, 5, 1], 32, backend=backend)
    elif case == "deep_tree_hnd":
        c, ids = fork_tree(gen, 1000, [3, 3, 3], [200, 150, 100], hkv=2, d=128, layout="HND", device=DEV,
                           dtype=torch.float16)
        run(gen, c, ids, None, 16, backend=backend)
    else:
        c, ids = fork_tree(gen, 300, [7], [20], hkv=4, d=64, page_size=1, device=DEV)
        run(gen, c, ids, [1, 2, 3, 4, 5, 6, 7, 8], 16, backend=backend)


@gpu
@pytest.mark.parametrize("backend", ["mma", pytest.param("sm90", marks=_hopper)])
@pytest.mark.parametrize("qo", ["decode", "append"])
def test_gpu_cascade_rope_and_softcap(gen, backend, qo):
    c, ids = fork_tree(gen, 2000, [6, 3], [300, 130], hkv=8, d=128, device=DEV)
    qo_lens = None if qo == "decode" else [1, 7, 64, 3, 1, 2, 100, 5, 1, 9]
    run(gen, c, ids, qo_lens, 32, backend=backend, rope=ib.RoPE(theta=10000.0))
    run(gen, c, ids, qo_lens, 32, backend=backend, variant=ib.variants.softcap(30.0))


@gpu
def test_gpu_decode_cascade_auto_equals_plain(gen):
    c, ids = fork_tree(gen, 8192, [15], [256], hkv=8, d=128, device=DEV)
    assert ib.cascade_choice(c, ids, num_qo_heads=32).use
    q = torch.randn(len(ids), 32, 128, generator=gen).bfloat16().to(DEV)
    t = c.page_table(ids)
    ref_o, ref_s = reference.paged_attention(q, c.pool, t.indptr, t.indices, t.last_page_len, causal=True)
    for mode in ("auto", False):
        out, lse = ib.decode(q, c, ids, cascade=mode, return_lse=True)
        check(out, lse, ref_o, ref_s, c.dtype)
