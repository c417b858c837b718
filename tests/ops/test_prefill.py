"""infernb.prefill / append / PrefillRunner: plan -> records, input checks and the CPU path everywhere; the CUDA
kernel against the float64 reference over a grid at least as wide as FlashInfer's batch-prefill tests on a GPU
(outputs poisoned with NaN first)."""
import itertools

import numpy as np
import pytest
import torch

import infernb as ib
from infernb import InputError, reference
from infernb.reference import apply_rope
from infernb.ops.prefill import (PREFILL_ITEM, PrefillRunner, TRAITS, default_tile_q, plan_batch, plan_records,
                                 prefill_spec)
from infernb.jit import build
from infernb.testing import assert_close

from .decode_cases import make_cache

gpu = pytest.mark.gpu
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def ragged(gen, qo_lens, kv_lens, hq, hkv, d, dtype=torch.bfloat16, device=DEV):
    q = torch.randn(sum(qo_lens), hq, d, generator=gen).to(dtype).to(device)
    k = torch.randn(sum(kv_lens), hkv, d, generator=gen).to(dtype).to(device)
    v = torch.randn(sum(kv_lens), hkv, d, generator=gen).to(dtype).to(device)
    return q, k, v, np.r_[0, np.cumsum(qo_lens)], np.r_[0, np.cumsum(kv_lens)]


def check(out, lse, ref_o, ref_s, dtype, exact_o=None):
    """Output within the dtype's tolerance, row by row; LSE -inf exactly where the reference's is, close elsewhere.
    ``exact_o``: with fused RoPE, ``ref_o`` is the reference on q / k rotated and rounded to the operand dtype (what
    the kernel is specified to compute: rotate in fp32, round once when the tile is formed) and ``exact_o`` the
    reference on unrounded rotations, which the whole output must also be within the tolerance of."""
    assert out.dtype == dtype and lse.dtype == torch.float32
    ref_o, ref_s, out, lse = ref_o.cpu(), ref_s.cpu(), out.float().cpu(), lse.cpu()
    assert not torch.isnan(out).any() and not torch.isnan(lse).any(), "NaN in the output (an unwritten row?)"
    assert_close(out, ref_o, dtype, name="out", rowwise=True)
    if exact_o is not None:
        assert_close(out, exact_o.cpu(), dtype, name="out against the unrounded rotation")
    fin = torch.isfinite(ref_s)
    assert torch.equal(torch.isfinite(lse), fin), "LSE: rows that see no key must be -inf exactly where the reference's are"
    assert torch.equal(out[~fin], torch.zeros_like(out[~fin])), "rows that see no key must be 0"
    if fin.any():
        assert_close(lse[fin], ref_s[fin], dtype, name="lse")


def reference_rounded_rope(q, k, v, qo_lens, kv_lens, rope, **kw):
    """float64 attention of q / k rotated at their positions in float64 and rounded to their dtype (the fused-RoPE
    kernels' operands), then no RoPE: the oracle of a tensor-core kernel that rotates before forming its tiles."""
    qr, kr = torch.empty_like(q), torch.empty_like(k)
    qo_ptr, kv_ptr = np.r_[0, np.cumsum(qo_lens)], np.r_[0, np.cumsum(kv_lens)]
    for b, (L, S) in enumerate(zip(qo_lens, kv_lens)):
        pos_q = torch.arange(S - L, S, device=q.device)
        qr[qo_ptr[b]:qo_ptr[b + 1]] = apply_rope(q[qo_ptr[b]:qo_ptr[b + 1]], pos_q, rope,
                                                 compute_dtype=torch.float64).to(q.dtype)
        kr[kv_ptr[b]:kv_ptr[b + 1]] = apply_rope(k[kv_ptr[b]:kv_ptr[b + 1]], torch.arange(S, device=q.device), rope,
                                                 compute_dtype=torch.float64).to(k.dtype)
    return reference.attention(qr, kr, v, qo_ptr, kv_ptr, **kw)


def run_ragged(gen, qo_lens, kv_lens, hq, hkv, d, *, dtype=torch.bfloat16, causal=False, window_left=-1,
               variant=None, rope=None, num_sms=None, tile_q=None, strategy="balanced", merge_gain=0.05,
               q_scale=1.0, rope_path="auto", block_sparse=False):
    """Plan, poison, run through the runner, compare with the float64 reference; return the plan. ``q_scale``
    widens the logits (q times it); ``block_sparse``: plan with the variant's block structure."""
    q, k, v, qo_ptr, kv_ptr = ragged(gen, qo_lens, kv_lens, hq, hkv, d, dtype)
    if q_scale != 1.0:
        q = (q.float() * q_scale).to(dtype)
    rows_avg = float(np.mean(qo_lens)) * hq // hkv
    p = ib.plan(qo_lens, kv_lens, num_qo_heads=hq, num_kv_heads=hkv, head_dim=d, causal=causal,
                window_left=window_left, tile_q=tile_q or default_tile_q(rows_avg, d), num_sms=num_sms,
                strategy=strategy, merge_gain=merge_gain, ctas_per_sm=2, dtype=ib.jit.types.DTYPE_NAMES[dtype],
                block_masks=variant if block_sparse else None)
    runner = PrefillRunner(p, variant=variant, rope=rope, device=q.device, rope_path=rope_path)
    if rope is not None and rope_path != "auto":
        assert runner.rope_path == rope_path
    out = torch.full_like(q, float("nan"))
    lse = torch.full(q.shape[:2], float("nan"), dtype=torch.float32, device=q.device)
    o, s = runner(q, k, v, out=out, lse=lse)
    assert o is out and s is lse
    kw = {} if variant is None else variant.reference_kwargs()
    ref_o, ref_s = reference.attention(q, k, v, qo_ptr, kv_ptr, causal=causal, window_left=window_left, rope=rope, **kw)
    if rope is None:
        check(o, s, ref_o, ref_s, dtype)
    else:
        rnd_o, rnd_s = reference_rounded_rope(q, k, v, qo_lens, kv_lens, rope, causal=causal, window_left=window_left,
                                              **kw)
        check(o, s, rnd_o, rnd_s, dtype, exact_o=ref_o)
    return p


def run_paged(gen, qo_lens, kv_lens, hq, hkv, d, page_size, layout, *, dtype=torch.bfloat16, causal=True,
              rope=None, variant=None, num_sms=None, rope_path="auto", backend="auto"):
    cache, ids, _ = make_cache(gen, kv_lens, hq, hkv, d, page_size, layout=layout, dtype=dtype, device=DEV)
    q = torch.randn(sum(qo_lens), hq, d, generator=gen).to(dtype).to(DEV)
    out, lse = ib.append(q, cache, ids, qo_lens, causal=causal, rope=rope, variant=variant, return_lse=True,
                         num_sms=num_sms, rope_path=rope_path, backend=backend)
    t = cache.page_table(ids)
    kw = {} if variant is None else variant.reference_kwargs()
    ref_o, ref_s = reference.paged_attention(q, cache.pool, t.indptr, t.indices, t.last_page_len,
                                             np.r_[0, np.cumsum(qo_lens)].tolist(), layout=layout, causal=causal,
                                             rope=rope, **kw)
    if rope is None:
        check(out, lse, ref_o, ref_s, dtype)
    else:
        k, v, _ = reference.gather_paged_kv(cache.pool, t.indptr, t.indices, t.last_page_len, layout=layout)
        rnd_o, rnd_s = reference_rounded_rope(q, k, v, qo_lens, kv_lens, rope, causal=causal, **kw)
        check(out, lse, rnd_o, rnd_s, dtype, exact_o=ref_o)


# ---------------------------------------------------------------------------------------------- CPU
def test_rope_path_auto_rotates_once_when_keys_are_read_by_several_tiles():
    from infernb.ops.prefill import rope_tiles_per_request
    long = ib.plan([8192], [8192], num_qo_heads=32, num_kv_heads=8, head_dim=128, causal=True, tile_q=128)
    assert rope_tiles_per_request(long) == 8192 * 4 / 128
    short = ib.plan([1, 17, 0], [900, 40, 5], num_qo_heads=32, num_kv_heads=8, head_dim=128, causal=True, tile_q=128)
    assert rope_tiles_per_request(short) == 1.0
    spec = prefill_spec(torch.bfloat16, 128, 128, "ragged", True, rope_pass=ib.RoPE())
    assert [n for n, _ in spec.kernels] == ["prefill", "rope_pass"] and "_ropepass_" in spec.name
    assert "infernb::rope_pass_kernel<__nv_bfloat16, 1, 128>" in spec.kernels[1][1]
    with pytest.raises(ib.InputError, match="exclude"):
        prefill_spec(torch.bfloat16, 128, 128, "ragged", True, rope=ib.RoPE(), rope_pass=ib.RoPE())
    with pytest.raises(ib.InputError, match="rope_path"):
        PrefillRunner(long, rope=ib.RoPE(), device="cpu", rope_path="fused")


def records_attention(p, q, k, v):
    """The attention the kernel's records describe, computed from them alone (float64): every item's rows over
    its runs' keys, split items merged by LSE. Proves on the CPU that the records cover the plan exactly."""
    kv_ptr = np.r_[0, np.cumsum(p.kv_lens)]
    items, cta_ptr, runs, _ = plan_records(p, kv_ptr)
    assert cta_ptr[0] == 0 and cta_ptr[-1] == len(items) and (np.diff(cta_ptr) >= 0).all()
    g, hq = p.group, p.num_qo_heads
    out = torch.full((q.shape[0], hq, q.shape[2]), float("nan"), dtype=torch.float64)
    lse = torch.full((q.shape[0], hq), float("nan"), dtype=torch.float64)
    parts = {}
    for it in items:
        R = it["row0"] + np.arange(it["rows"])
        tok, head = it["q_start"] + R // g, it["kv_head"] * g + R % g
        pos = np.concatenate([np.arange(r["pos_start"], r["pos_end"]) for r in runs[it["run_begin"]:it["run_end"]]]
                             + [np.zeros(0, np.int64)])
        qpos = it["kv_len"] - it["qo_len"] + R // g
        kk = k[it["kv_start"] + pos, it["kv_head"]].double()
        vv = v[it["kv_start"] + pos, it["kv_head"]].double()
        s = (q[tok, head].double() @ kk.T) * p.head_dim ** -0.5
        vis = torch.ones_like(s, dtype=torch.bool)
        if p.causal:
            vis &= torch.as_tensor(pos[None, :] <= qpos[:, None])
        if p.window_left >= 0:
            vis &= torch.as_tensor(pos[None, :] >= qpos[:, None] - p.window_left)
        s = s.masked_fill(~vis, float("-inf"))
        l = torch.logsumexp(s, 1)
        o = torch.where(torch.isfinite(l)[:, None], torch.softmax(s, 1).nan_to_num(0.0) @ vv, 0.0)
        if it["slot"] < 0:
            out[tok, head], lse[tok, head] = o, l
        else:
            parts.setdefault((tuple(tok), tuple(head)), []).append((o, l))
    for (tok, head), ps in parts.items():
        mo, ml = reference.merge_states(torch.stack([x[0] for x in ps], 1)[:, :, None],
                                        torch.stack([x[1] for x in ps], 1)[:, :, None])
        out[list(tok), list(head)], lse[list(tok), list(head)] = mo[:, 0], ml[:, 0]
    return out, lse


@pytest.mark.parametrize("causal,window", [(False, -1), (True, -1), (True, 20), (False, 7)])
@pytest.mark.parametrize("group,tile", [(1, 64), (4, 64), (8, 128), (3, 64)])
def test_cpu_records_cover_the_plan(gen, causal, window, group, tile):
    qo, kv = [1, 17, 37, 0, 64], [54, 97, 40, 5, 64]
    q, k, v, qo_ptr, kv_ptr = ragged(gen, qo, kv, 2 * group, 2, 64, torch.float32, "cpu")
    p = ib.plan(qo, kv, num_qo_heads=2 * group, num_kv_heads=2, head_dim=64, causal=causal, window_left=window,
                tile_q=tile, num_sms=5, ctas_per_sm=1, merge_gain=0.0)
    assert len(p.merge_unit) > 0                        # split units (and their merge) covered
    out, lse = records_attention(p, q, k, v)
    ref_o, ref_s = reference.attention(q, k, v, qo_ptr, kv_ptr, causal=causal, window_left=window)
    assert torch.equal(torch.isfinite(lse), torch.isfinite(ref_s))
    assert_close(out, ref_o, torch.float32, name="out")


def test_cpu_record_fields_are_named_once():
    assert PREFILL_ITEM.itemsize == 64 and all(PREFILL_ITEM.fields[n][0] == np.int32 for n in PREFILL_ITEM.names)
    src = (ib.jit.spec.INCLUDE_DIR / "infernb" / "prefill.cuh").read_text()
    for n in PREFILL_ITEM.names:
        assert f"X({n})" in src


@pytest.mark.parametrize("causal", [False, True])
def test_cpu_prefill_and_append_match_reference(gen, causal):
    qo, kv = [3, 17, 1], [30, 17, 9]
    q, k, v, qo_ptr, kv_ptr = ragged(gen, qo, kv, 8, 2, 64, torch.bfloat16, "cpu")
    out, lse = ib.prefill(q, k, v, qo_ptr, kv_ptr, causal=causal, return_lse=True, num_sms=3)
    ref_o, ref_s = reference.attention(q, k, v, qo_ptr, kv_ptr, causal=causal)
    check(out, lse, ref_o, ref_s, torch.bfloat16)
    cache, ids, _ = make_cache(gen, kv, 8, 2, 64, 16, dtype=torch.bfloat16)
    q = torch.randn(sum(qo), 8, 64, generator=gen).to(torch.bfloat16)
    out = ib.append(q, cache, ids, qo, causal=causal, rope=ib.RoPE(theta=100.0))
    t = cache.page_table(ids)
    ref_o, _ = reference.paged_attention(q, cache.pool, t.indptr, t.indices, t.last_page_len, qo_ptr.tolist(),
                                         causal=causal, rope=ib.RoPE(theta=100.0))
    assert_close(out.float(), ref_o, torch.bfloat16, rowwise=True)


def test_cpu_bad_inputs_are_named(gen):
    q, k, v, qo_ptr, kv_ptr = ragged(gen, [4, 4], [8, 8], 4, 2, 64, torch.bfloat16, "cpu")
    with pytest.raises(InputError, match="qo_indptr"):
        ib.prefill(q, k, v, [0, 5, 7], kv_ptr)
    with pytest.raises(InputError, match="kv_indptr"):
        ib.prefill(q, k, v, qo_ptr, [0, 9, 8])
    with pytest.raises(InputError, match="multiple"):
        ib.prefill(q[:, :3], k, v, qo_ptr, kv_ptr)
    with pytest.raises(InputError, match="float16 or bfloat16"):
        ib.prefill(q.float(), k.float(), v.float(), qo_ptr, kv_ptr)
    with pytest.raises(InputError, match="k and v"):
        ib.prefill(q, k, v[:, :1], qo_ptr, kv_ptr)
    with pytest.raises(InputError, match="causal append needs qo_len <= kv_len"):
        ib.prefill(q, k[:6], v[:6], qo_ptr, [0, 3, 6], causal=True)
    with pytest.raises(InputError, match="no tile of 128 rows for head_dim 256"):
        ib.ops.prefill_ops.traits(256, 128)
    cache, ids, _ = make_cache(gen, [8, 8], 4, 2, 64, 4)
    with pytest.raises(InputError, match="exceeds sequence"):
        ib.append(torch.cat([q, q, q[:2]]), cache, ids, [9, 9])
    cache.free(ids[1])
    with pytest.raises(InputError):
        ib.append(q, cache, ids, [4, 4])
    p = ib.plan([4, 4], [8, 8], num_qo_heads=4, num_kv_heads=2, head_dim=64, tile_q=64)
    r = PrefillRunner(p, device="cpu")
    with pytest.raises(InputError, match="q: expected shape"):
        r(q[:7], k, v)
    with pytest.raises(InputError, match="k: expected shape"):
        r(q, k[:7], v)
    with pytest.raises(InputError, match="ragged k and v"):
        r(q)
    # a paged runner: the cache it reads at call time must be the runner's kind (dtype, shape, layout, device)
    cache, ids, _ = make_cache(gen, [8, 8], 4, 2, 64, 2, layout="NHD")
    other, _, _ = make_cache(gen, [8, 8], 4, 2, 64, 2, layout="HND")        # same pool shape (page 2 = 2 heads)
    t = cache.page_table(ids)
    p = ib.plan([4, 4], [8, 8], num_qo_heads=4, num_kv_heads=2, head_dim=64, page_size=2, tile_q=64, page_table=t)
    r = PrefillRunner(p, cache, t)
    assert torch.equal(r(q)[0], r(q, cache=cache.pool)[0])                 # the bare pool tensor works too
    with pytest.raises(InputError, match="layout HND"):
        r(q, cache=other)
    with pytest.raises(InputError, match="page pool of shape"):
        r(q, cache=cache.pool[:-1])
    with pytest.raises(InputError, match="not k / v"):
        r(q, k, v)
    with pytest.raises(InputError, match="q: expected dtype"):
        r(q.half())


def test_cpu_run_backends(gen):
    q, k, v, qo_ptr, kv_ptr = ragged(gen, [5, 9], [9, 9], 4, 2, 64, torch.bfloat16, "cpu")
    p = ib.plan([5, 9], [9, 9], num_qo_heads=4, num_kv_heads=2, head_dim=64, causal=True, tile_q=64)
    o1, _ = ib.run(p, q, k=k, v=v)
    o2, _ = ib.run(p, q, k=k, v=v, backend="emulator")
    assert torch.equal(o1, o2)
    with pytest.raises(InputError, match="needs CUDA tensors"):
        ib.run(p, q, k=k, v=v, backend="kernel")
    with pytest.raises(InputError, match="backend"):
        ib.run(p, q, k=k, v=v, backend="gpu")


# ---------------------------------------------------------------------------------------------- GPU
# The grid of FlashInfer's batch-prefill tests (batch {1, 12, 17, 128}; kv_len {54, 97, 512, 2048, 16384};
# qo_len {1, 17, 37, 127, 577}; page {1, 5, 16, 64}; group {1, 4, 8, 32}; head dim {64, 128, 256}; causal; NHD/HND;
# RoPE; fp16 / bf16): every value of every axis appears, in combinations drawn once with a fixed seed.
KV = [54, 97, 512, 2048]
QO = [1, 17, 37, 127, 577]
GRID = list(itertools.product([1, 12, 17], [1, 4, 8, 32], [64, 128, 256], [False, True]))


@gpu
@pytest.mark.parametrize("batch,group,d,causal", GRID, ids=[f"b{b}-g{g}-d{d}-{'causal' if c else 'full'}"
                                                             for b, g, d, c in GRID])
def test_gpu_ragged_grid(gen, batch, group, d, causal):
    rng = np.random.default_rng(batch * 1000 + group * 10 + d + causal)
    kv = rng.choice(KV, batch).tolist()
    qo = [int(min(x, y)) if causal else int(y) for x, y in zip(kv, rng.choice(QO, batch))]
    dtype = torch.bfloat16 if (batch + group) % 2 else torch.float16
    run_ragged(gen, qo, kv, 2 * group if group < 32 else 32, 2 if group < 32 else 1, d, dtype=dtype, causal=causal)


PAGED = [(1, "NHD", 64), (5, "HND", 128), (16, "NHD", 128), (64, "HND", 256), (16, "HND", 64), (5, "NHD", 256)]


@gpu
@pytest.mark.parametrize("page,layout,d", PAGED, ids=[f"p{p}-{l}-d{d}" for p, l, d in PAGED])
@pytest.mark.parametrize("rope", [None, ib.RoPE(theta=1e4), ib.RoPE(theta=5e5, interleave=True)],
                         ids=["norope", "rope", "rope_interleave"])
@pytest.mark.parametrize("causal", [True, False])
def test_gpu_paged_append(gen, page, layout, d, rope, causal):
    rng = np.random.default_rng(page + d)
    kv = rng.choice(KV, 12).tolist()
    qo = [int(min(x, y)) for x, y in zip(kv, rng.choice(QO, 12))]
    run_paged(gen, qo, kv, 16, 4, d, page, layout, causal=causal, rope=rope,
              dtype=torch.bfloat16 if page != 5 else torch.float16)


ROPES = {"rope": ib.RoPE(theta=1e4), "interleave": ib.RoPE(theta=5e5, interleave=True),
         "partial": ib.RoPE(rotary_dim=64, theta=1e4, scale=2.0)}


@gpu
@pytest.mark.parametrize("path", ["tile", "pass"])
@pytest.mark.parametrize("rope", list(ROPES), ids=list(ROPES))
def test_gpu_rope_paths_agree_with_the_reference(gen, path, rope):
    # the in-tile rotation and the rotation pass, each forced, on ragged and paged keys (both layouts), with
    # queries at append positions (kv_len > qo_len) and rows split over CTAs
    r = ROPES[rope]
    run_ragged(gen, [300, 77, 1], [1000, 77, 40], 8, 2, 128, causal=True, rope=r, rope_path=path, num_sms=4)
    run_ragged(gen, [129], [129], 16, 2, 64, rope=r, rope_path=path, dtype=torch.float16)
    for layout, page, d in (("NHD", 16, 128), ("HND", 5, 256)):
        run_paged(gen, [200, 33, 64], [700, 90, 64], 8, 2, d, page, layout, rope=r, rope_path=path)


@gpu
@pytest.mark.parametrize("case", ["batch128", "kv16384", "group32_mqa", "rope_partial", "tile128_d128"])
def test_gpu_large_cases(gen, case):
    if case == "batch128":
        rng = np.random.default_rng(128)
        kv = rng.choice(KV, 128).tolist()
        run_ragged(gen, [min(17, x) for x in kv], kv, 32, 8, 128, causal=True)
    elif case == "kv16384":
        run_paged(gen, [577, 127], [16384, 16384], 32, 8, 128, 16, "NHD")
    elif case == "tile128_d128":
        run_ragged(gen, [577, 127], [2048, 512], 32, 8, 128, causal=True, tile_q=128)
        run_ragged(gen, [300], [300], 16, 4, 128, tile_q=128, num_sms=2, merge_gain=0.0)
    elif case == "group32_mqa":
        run_ragged(gen, [127, 37], [2048, 97], 32, 1, 128, causal=True)
    else:
        run_paged(gen, [37, 17], [512, 97], 8, 2, 128, 16, "NHD", rope=ib.RoPE(rotary_dim=64))


@gpu
@pytest.mark.parametrize("tile_q", [64, 128])
@pytest.mark.parametrize("shape", ["rising", "spike", "falling"])
def test_gpu_running_max_moves_exactly(gen, shape, tile_q):
    """The softmax keeps a reference max and rescales O only when a chunk's max exceeds it by more than 2^8
    (softmax_state.cuh); the result must not depend on it. Logits that rise along every row (each chunk moves the
    max by more than the slack), one key per row far above the others late in the row, and logits that fall (the
    first chunk's max is kept throughout), against the float64 reference."""
    qo, kv, hq, hkv, d = [200, 64], [3000, 700], 16, 4, 128
    q, k, v, qo_ptr, kv_ptr = ragged(gen, qo, kv, hq, hkv, d, torch.bfloat16)
    pos = torch.cat([torch.arange(n, device=DEV, dtype=torch.float32) for n in kv])
    if shape == "rising":      # |logit| grows ~ 12 nats every 64 keys
        k = (k.float() * (1 + pos / 64 * 1.5)[:, None, None]).to(k.dtype)
    elif shape == "falling":
        k = (k.float() * (1 + (pos.max() - pos) / 64 * 1.5)[:, None, None]).to(k.dtype)
    else:                      # every query near u (per KV head) and the last cached key 3 u: ~ +34 nats there
        for b in range(len(kv)):
            u = torch.randn(hkv, d, generator=gen)
            noise = 0.3 * torch.randn(qo[b], hq, d, generator=gen)
            q[qo_ptr[b]:qo_ptr[b + 1]] = (u.repeat_interleave(hq // hkv, 0)[None] + noise).to(q.dtype).to(DEV)
            k[int(kv_ptr[b]) + kv[b] - qo[b] - 1] = (3 * u).to(k.dtype).to(DEV)
    p = ib.plan(qo, kv, num_qo_heads=hq, num_kv_heads=hkv, head_dim=d, causal=True, tile_q=tile_q, ctas_per_sm=2)
    out = torch.full_like(q, float("nan"))
    lse = torch.full(q.shape[:2], float("nan"), dtype=torch.float32, device=q.device)
    o, s = PrefillRunner(p, device=q.device)(q, k, v, out=out, lse=lse)
    ref_o, ref_s = reference.attention(q, k, v, qo_ptr, kv_ptr, causal=True)
    check(o, s, ref_o, ref_s, torch.bfloat16)


@pytest.mark.parametrize("d,tile", [(64, 64), (64, 128), (128, 64), (128, 128), (256, 64)])
def test_batched_split_merge_builds_without_spills(d, tile):
    # -DINFERNB_PREFILL_MERGE_BATCHED (the split merge with 4 rows x 4 states in flight per thread): every tile
    # compiles without spills for both architectures
    for kv in ("ragged", "NHD"):
        for arch in ("sm_90a", "sm_80"):
            k = build(prefill_spec(torch.bfloat16, d, tile, kv, True), arch,
                      extra_options=("-DINFERNB_PREFILL_MERGE_BATCHED",))
            (r,) = k.report.kernels
            assert not r.spills and r.stack_frame == 0, (d, tile, kv, arch, r)


@gpu
@pytest.mark.parametrize("num_sms", [3, 40, 132])
@pytest.mark.parametrize("merge", ["serial", "batched"])
def test_gpu_split_units_merge_in_the_launch_both_merges(gen, num_sms, merge):
    # the batched merge (a build option until its benchmark decides): many slots, units of rows not a multiple of 16,
    # head dims 64 / 128 / 256, run twice (the merge counters must be left at zero)
    opts = ("-DINFERNB_PREFILL_MERGE_BATCHED",) if merge == "batched" else ()
    for qo, kv, d in (([64, 37], [4096, 512], 128), ([130, 3], [8192, 100], 64), ([70], [3000], 256)):
        q, k, v, qo_ptr, kv_ptr = ragged(gen, qo, kv, 16, 4, d, torch.bfloat16)
        p = ib.plan(qo, kv, num_qo_heads=16, num_kv_heads=4, head_dim=d, causal=True, num_sms=num_sms,
                    merge_gain=0.0, ctas_per_sm=2, tile_q=default_tile_q(float(np.mean(qo)) * 4, d), dtype="bf16")
        r = PrefillRunner(p, device=q.device, extra_options=opts)
        for _ in range(2):
            out = torch.full_like(q, float("nan"))
            lse = torch.full(q.shape[:2], float("nan"), dtype=torch.float32, device=q.device)
            o, s = r(q, k, v, out=out, lse=lse)
            ref_o, ref_s = reference.attention(q, k, v, qo_ptr, kv_ptr, causal=True)
            check(o, s, ref_o, ref_s, torch.bfloat16)
        assert len(p.merge_unit) > 0 or num_sms == 3


@gpu
@pytest.mark.parametrize("num_sms", [3, 40, 132])
def test_gpu_split_units_merge_in_the_launch(gen, num_sms):
    # more CTAs than units: long rows are cut into several items, merged by the CTA that finishes a unit last; run
    # twice (the merge counters must be left at zero)
    for _ in range(2):
        p = run_ragged(gen, [64, 37], [4096, 512], 16, 4, 128, causal=True, num_sms=num_sms, merge_gain=0.0)
        assert len(p.merge_unit) > 0


@gpu
def test_gpu_window_and_edge_rows(gen):
    run_ragged(gen, [577, 127, 1], [2048, 512, 54], 16, 4, 128, causal=True, window_left=100)
    run_ragged(gen, [0, 17, 0, 1], [54, 0, 0, 1], 16, 4, 64)                 # empty requests, no keys, one key
    # a window narrower than the query offset hides every key of the early rows (no causal): rows with no key
    run_ragged(gen, [37], [37], 8, 2, 64, window_left=0)
    hide = ib.Variant("hide_early", mask_mod=lambda b, h, q_idx, kv_idx: q_idx >= 20)
    run_ragged(gen, [37, 5], [37, 40], 8, 2, 64, variant=hide)                # fully masked rows: 0 and -inf


@gpu
@pytest.mark.parametrize("variant", ib.variants.examples("cuda") if torch.cuda.is_available() else [],
                         ids=lambda v: v.name)
def test_gpu_every_builtin_variant(gen, variant):
    # examples() capture 8-head slopes and 64 document ids: 8 query heads, keys <= 64
    merge = 0.05 if variant.softmax else float("inf")
    run_ragged(gen, [17, 64, 1], [40, 64, 54], 8, 2, 128, causal=True, variant=variant, merge_gain=merge)
    run_paged(gen, [17, 30], [60, 30], 8, 2, 128, 16, "NHD", variant=variant, num_sms=None) if variant.softmax \
        else None


@gpu
@pytest.mark.parametrize("make", [lambda: ib.variants.softcap(5.0, approx=True), lambda: ib.variants.softcap(5.0),
                                  lambda: ib.variants.alibi(ib.variants.alibi_slopes(8).to(DEV))],
                         ids=["softcap_approx", "softcap", "alibi"])
def test_gpu_score_mod_on_full_and_partial_steps(gen, make):
    variant = make()
    # long rows: most steps are full (hooks without the per-element masks), the diagonal and the runs' ends are not;
    # q scaled up so the soft-cap (cap 5) saturates and ALiBi's bias matters
    for causal in (True, False):
        run_ragged(gen, [300, 77], [1000, 77], 8, 2, 128, causal=causal, variant=variant, q_scale=4.0)
    run_paged(gen, [200, 33], [700, 90], 8, 2, 128, 16, "NHD", variant=variant, num_sms=None)


def _mask_variants(device):
    """mask_mod variants whose block structure has empty, partial and full blocks: a hole one key block behind the
    diagonal, a head-dependent mask (its structure is the union / intersection over heads), documents, a window, a
    prefix and attention sinks with a window."""
    hole = ib.Variant("hole", mask_mod=lambda b, h, q, k: (q >= k) & ((q // 128) != (k // 128) + 1))
    heads = ib.Variant("stripes_by_head", mask_mod=lambda b, h, q, k: (q >= k) & ((k // 64) % 4 != h % 4))
    doc_ids = torch.repeat_interleave(torch.arange(4), torch.tensor([200, 330, 70, 400])).to(device)
    return [hole, heads, ib.variants.document(doc_ids), ib.variants.sliding_window(150), ib.variants.prefix_lm(90),
            ib.variants.attention_sink(100, sink=70)]


def test_cpu_variant_block_structure(gen):
    """Variant.block_masks: listed blocks hold a visible pair for some head, full blocks are visible for every head;
    the plan's full segments are all visible for their tile's rows, and its runs carry the flag."""
    qo, kv, hq = [300, 70], [1000, 500], 8
    for v in _mask_variants("cpu"):
        bms = v.block_masks(qo, kv, num_qo_heads=hq)
        _, m = v.bound_mods()
        for b, bm in enumerate(bms):
            M, N = qo[b], kv[b]
            q_idx = torch.arange(M)[None, :, None] + N - M
            dense = torch.as_tensor(m(torch.tensor(b), torch.arange(hq)[:, None, None], q_idx,
                                      torch.arange(N)[None, None, :])).expand(hq, M, N)
            grid = bm.block_grid()                           # 0 empty, 1 partial, 2 full
            R, C = bm.block
            for i in range(grid.shape[0]):
                for j in range(grid.shape[1]):
                    blk = dense[:, i * R:(i + 1) * R, j * C:(j + 1) * C]
                    assert int(grid[i, j]) == (0 if not blk.any() else 2 if blk.all() else 1), (v.name, b, i, j)
        p = ib.plan(qo, kv, num_qo_heads=hq, num_kv_heads=2, head_dim=64, causal=True, tile_q=64, num_sms=5,
                    block_masks=v)
        assert p.block_masked and p.mask_source == "variant:" + v.fingerprint()
        assert p.seg_full.any() or v.name == "stripes_by_head", v.name      # (stripes: no block full for all heads)
        for t in range(p.num_tiles):
            b = int(p.tile_request[t])
            M, N = qo[b], kv[b]
            tok = torch.arange(int(p.tile_token_start[t]), int(p.tile_token_end[t]))
            for sg in range(int(p.seg_indptr[t]), int(p.seg_indptr[t + 1])):
                keys = torch.arange(int(p.seg_start[sg]), int(p.seg_end[sg]))
                vis = torch.as_tensor(m(torch.tensor(b), torch.arange(hq)[:, None, None],
                                        (tok + N - M)[None, :, None], keys[None, None, :])).expand(hq, len(tok),
                                                                                                   len(keys))
                assert vis.any(), "a listed segment holds a visible pair"
                if p.seg_full[sg]:
                    assert vis.all(), (v.name, t, sg)
        items, _, runs, run_full = plan_records(p, np.r_[0, np.cumsum(kv)])
        assert len(run_full) == len(runs) and run_full.any() == p.seg_full.any()
        # without the variant's structure, the same variant reads every causal key and evaluates its mask everywhere
        p0 = ib.plan(qo, kv, num_qo_heads=hq, num_kv_heads=2, head_dim=64, causal=True, tile_q=64, num_sms=5)
        assert p.tile_kv_len.sum() <= p0.tile_kv_len.sum()
    hole = _mask_variants("cpu")[0]
    p = ib.plan(qo, kv, num_qo_heads=hq, num_kv_heads=2, head_dim=64, causal=True, tile_q=64, num_sms=5,
                block_masks=hole)
    p0 = ib.plan(qo, kv, num_qo_heads=hq, num_kv_heads=2, head_dim=64, causal=True, tile_q=64, num_sms=5)
    assert p.tile_kv_len.sum() < p0.tile_kv_len.sum()   # the hole's empty blocks are not read


def test_cpu_block_structure_is_cached_by_what_the_mask_depends_on():
    ids = torch.arange(4).repeat_interleave(64)
    v = ib.variants.document(ids)
    a = v.block_masks([256], [256], num_qo_heads=4)
    assert v.block_masks([256], [256], num_qo_heads=4)[0] is a[0]            # evaluated once
    assert v.block_masks([200], [256], num_qo_heads=4)[0] is not a[0]        # another shape
    ids[:64] = 1                                                           # the captured tensor changed in place
    c = v.block_masks([256], [256], num_qo_heads=4)
    assert c[0] is not a[0] and not torch.equal(c[0].is_full, a[0].is_full)
    # contents decide, not addresses or torch's version counter: memory written behind torch's back (or a freed
    # tensor's memory reused by another variant's) must not find the old structure, nor pass a runner's check
    arr = np.zeros(256, np.int64)
    u = ib.variants.document(torch.from_numpy(arr))
    a, fp = u.block_masks([256], [256], num_qo_heads=4), u.fingerprint()
    arr[:64] = 1
    assert u.fingerprint() != fp
    assert not torch.equal(u.block_masks([256], [256], num_qo_heads=4)[0].is_full, a[0].is_full)
    w = ib.variants.sliding_window(10)
    assert ib.variants.sliding_window(10).block_masks([64], [64], num_qo_heads=4)[0] is \
        w.block_masks([64], [64], num_qo_heads=4)[0]                        # same code and parameters: shared
    assert ib.variants.sliding_window(20).block_masks([64], [64], num_qo_heads=4)[0] is not \
        w.block_masks([64], [64], num_qo_heads=4)[0]


def test_cpu_block_sparse_front_doors_match_the_reference(gen):
    qo, kv = [300, 70], [1000, 500]
    q, k, v, qo_ptr, kv_ptr = ragged(gen, qo, kv, 8, 2, 64, torch.bfloat16, "cpu")
    for var in _mask_variants("cpu"):
        ref_o, ref_s = reference.attention(q, k, v, qo_ptr, kv_ptr, causal=True, **var.reference_kwargs())
        out, lse = ib.prefill(q, k, v, qo_ptr, kv_ptr, causal=True, variant=var, return_lse=True, num_sms=4)
        check(out, lse, ref_o, ref_s, torch.bfloat16)


def test_cpu_block_masked_plans_need_their_variant(gen):
    hole, heads = _mask_variants("cpu")[:2]
    kw = dict(num_qo_heads=8, num_kv_heads=2, head_dim=64, causal=True, num_sms=4)
    p = ib.plan([300], [300], block_masks=hole, **kw)
    with pytest.raises(ib.InputError, match="not this variant's"):
        PrefillRunner(p, variant=heads, device="cpu")
    custom = ib.plan([300], [300], block_masks=hole.block_masks([300], [300], num_qo_heads=8), **kw)
    assert custom.mask_source == "custom"
    with pytest.raises(ib.InputError, match="not this variant's"):
        PrefillRunner(custom, variant=hole, device="cpu")
    PrefillRunner(p, variant=hole, device="cpu")                  # its own variant: accepted
    with pytest.raises(ib.InputError, match="block_sparse=True needs"):
        plan_batch([3], [3], num_qo_heads=8, num_kv_heads=2, head_dim=64, dtype=torch.bfloat16,
                   block_sparse=True)


@gpu
@pytest.mark.parametrize("tile_q", [64, 128])
@pytest.mark.parametrize("causal", [True, False])
def test_gpu_variant_block_structure(gen, tile_q, causal):
    """Plans of the variants' block structure (empty blocks not read, full runs skip mask_mod) against the float64
    reference, ragged with split units and paged through the front door."""
    for var in _mask_variants(DEV):
        run_ragged(gen, [300, 70], [1000, 500], 8, 2, 128, causal=causal, variant=var, tile_q=tile_q, num_sms=7,
                   block_sparse=True)
        if causal:
            run_paged(gen, [300, 70], [1000, 500], 8, 2, 128, 16, "NHD", variant=var)


@gpu
def test_gpu_runner_reuse_and_custom_scale(gen):
    q, k, v, qo_ptr, kv_ptr = ragged(gen, [300, 40], [600, 40], 16, 4, 128)
    p = ib.plan([300, 40], [600, 40], num_qo_heads=16, num_kv_heads=4, head_dim=128, causal=True, tile_q=64,
                num_sms=4, ctas_per_sm=2, merge_gain=0.0)
    r = PrefillRunner(p, sm_scale=0.3)
    ref_o, ref_s = reference.attention(q, k, v, qo_ptr, kv_ptr, causal=True, sm_scale=0.3)
    for _ in range(3):
        o, s = r(q, k, v)
        check(o, s, ref_o, ref_s, torch.bfloat16)
    o2, _ = ib.run(p, q, k=k, v=v, sm_scale=0.3)
    assert torch.equal(o2, o)
    with pytest.raises(InputError, match="reference-only"):
        ib.run(p, q, k=k, v=v, logits_soft_cap=3.0)


def test_traits_fit_the_shared_memory_of_hopper_and_ampere():
    for (d, tq), t in TRAITS.items():
        assert t.tile_q == tq == 64 * t.m_tiles
        assert t.ctas_per_sm * t.smem_bytes(rope=1) <= 227 * 1024
        assert t.smem_bytes(rope=1) <= 163 * 1024             # one CTA on an A100


def test_cpu_run_keeps_the_input_dtype(gen):
    """The emulator behind ib.run on CPU tensors answers like a kernel: bf16 in, bf16 out computed in fp32 (real
    rounding, within the bf16 tolerance, not 1e-16); float64 in, float64 out."""
    q, k, v, qo_ptr, kv_ptr = ragged(gen, [5, 9], [9, 30], 4, 2, 64, torch.bfloat16, "cpu")
    p = ib.plan([5, 9], [9, 30], num_qo_heads=4, num_kv_heads=2, head_dim=64, causal=True, tile_q=64)
    out, lse = ib.run(p, q, k=k, v=v)
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    ref, _ = reference.attention(q, k, v, qo_ptr, kv_ptr, causal=True)
    err = ib.testing.rel_error(out, ref)
    assert 1e-5 < err < ib.testing.tolerance(torch.bfloat16)
    out64, lse64 = ib.run(p, q.double(), k=k.double(), v=v.double())
    assert out64.dtype == lse64.dtype == torch.float64 and ib.testing.rel_error(out64, ref) < 1e-12
    o, _ = ib.run(p, q, k=k, v=v, compute_dtype=torch.float64)              # an explicit precision is kept
    assert o.dtype == torch.float64


@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_rope_pass_offsets_address_every_key_of_the_pool(gen, layout):
    # the rotation pass reads token j's head h at pool + rows[j] + h * head_stride (K) and v_off further (V), at
    # position pos_k[j]: checked against the cache's own gather, on the CPU
    kv_lens, qo_lens = [37, 5, 70], [9, 5, 1]
    cache, ids, _ = make_cache(gen, kv_lens, 8, 2, 64, 16, layout=layout, dtype=torch.bfloat16, device="cpu")
    table = cache.page_table(ids)
    p = ib.plan(qo_lens, kv_lens, num_qo_heads=8, num_kv_heads=2, head_dim=64, page_size=16, page_table=table,
                tile_q=64, causal=True)
    r = PrefillRunner(p, cache, table, rope=ib.RoPE())
    kv_start = r._init_rope_pass(p, table)
    assert kv_start.tolist() == np.r_[0, np.cumsum(kv_lens)].tolist()
    flat = cache.pool.reshape(-1)
    for b, sid in enumerate(ids):
        k, v = cache.gather(sid)                                           # [kv_len, heads, d]
        for j in range(kv_lens[b]):
            t = kv_start[b] + j
            assert int(r._pos_k[t]) == j
            for h in range(2):
                o = int(r._rows[t]) + h * r._head_stride
                assert torch.equal(flat[o:o + 64], k[j, h]) and torch.equal(flat[o + r._v_off:o + r._v_off + 64], v[j, h])
    assert r._pos_q.tolist() == [28 + i for i in range(9)] + [0, 1, 2, 3, 4] + [69]
