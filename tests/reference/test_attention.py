"""infernb.reference.attention against a naive scalar-loop oracle and against torch SDPA."""
import math

import pytest
import torch
import torch.nn.functional as F

from infernb import InputError
from infernb.reference import RoPE, apply_rope, attention
from infernb.testing import assert_close
from tests.naive import naive_attention, naive_rope

TIGHT = 1e-12


def ragged(gen, qo_lens, kv_lens, hq, hkv, d, dv=None):
    q = torch.randn(sum(qo_lens), hq, d, generator=gen, dtype=torch.float64)
    k = torch.randn(sum(kv_lens), hkv, d, generator=gen, dtype=torch.float64)
    v = torch.randn(sum(kv_lens), hkv, dv or d, generator=gen, dtype=torch.float64)
    qo = [0]
    kv = [0]
    for a, b in zip(qo_lens, kv_lens):
        qo.append(qo[-1] + a)
        kv.append(kv[-1] + b)
    return q, k, v, qo, kv


# (qo_lens, kv_lens): decode, prefill, append, mixed; includes a zero-length request.
BATCHES = [([1, 1, 1], [5, 1, 9]), ([6, 3], [6, 3]), ([3, 4, 0], [7, 4, 2]), ([1, 5, 2], [11, 5, 8])]


@pytest.mark.parametrize("lens", BATCHES)
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (6, 1)])
@pytest.mark.parametrize("causal", [False, True])
def test_matches_naive_gqa_causal(gen, lens, heads, causal):
    q, k, v, qo, kv = ragged(gen, *lens, *heads, 8)
    out, lse = attention(q, k, v, qo, kv, causal=causal)
    ref_out, ref_lse = naive_attention(q, k, v, qo, kv, causal=causal)
    assert_close(out, ref_out, tol=TIGHT)
    assert_close(lse, ref_lse, tol=TIGHT)


@pytest.mark.parametrize("option", ["window", "softcap", "alibi", "scale", "score_mod", "mask", "all", "dv"])
def test_features_match_naive(gen, option):
    qo_lens, kv_lens = [1, 4, 3], [9, 12, 3]
    hq, hkv, d = 4, 2, 8
    q, k, v, qo, kv = ragged(gen, qo_lens, kv_lens, hq, hkv, d, dv=12 if option == "dv" else None)
    slopes = torch.rand(hq, generator=gen, dtype=torch.float64)
    kw, nkw = {}, {}
    if option in ("window", "all"):
        kw["window_left"] = nkw["window_left"] = 3
        kw["causal"] = nkw["causal"] = True
    if option in ("softcap", "all"):
        q = q * 4  # make the cap bite
        kw["logits_soft_cap"] = nkw["soft_cap"] = 2.5
    if option in ("alibi", "all"):
        kw["alibi_slopes"] = nkw["alibi"] = slopes
    if option == "scale":
        kw["sm_scale"] = nkw["sm_scale"] = 0.37
    if option in ("score_mod", "all"):
        kw["score_mod"] = lambda s, b, h, qi, ki: s + 0.1 * h - 0.05 * (qi - ki) + b
        nkw["score_mod"] = lambda s, b, h, qi, ki: s + 0.1 * h - 0.05 * (qi - ki) + b
    if option in ("mask", "all"):
        masks = [torch.rand(a, c, generator=gen) > 0.3 for a, c in zip(qo_lens, kv_lens)]
        kw["custom_mask"] = torch.cat([m.flatten() for m in masks])  # FlashInfer's flat layout
        nkw["keep"] = lambda b, h, i, j: bool(masks[b][i, j])
    out, lse = attention(q, k, v, qo, kv, **kw)
    ref_out, ref_lse = naive_attention(q, k, v, qo, kv, **nkw)
    assert_close(out, ref_out, tol=TIGHT)
    assert_close(lse, ref_lse, tol=TIGHT)


def test_custom_mask_list_equals_flat(gen):
    q, k, v, qo, kv = ragged(gen, [2, 3], [4, 5], 2, 2, 8)
    masks = [torch.rand(2, 4, generator=gen) > 0.5, torch.rand(3, 5, generator=gen) > 0.5]
    a = attention(q, k, v, qo, kv, custom_mask=masks)
    b = attention(q, k, v, qo, kv, custom_mask=torch.cat([m.flatten() for m in masks]))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_mask_mod_equals_builtin_causal_and_window(gen):
    q, k, v, qo, kv = ragged(gen, [1, 6, 3], [10, 6, 9], 4, 2, 16)
    a = attention(q, k, v, qo, kv, causal=True, window_left=4)
    b = attention(q, k, v, qo, kv, mask_mod=lambda b, h, qi, ki: (ki <= qi) & (ki >= qi - 4))
    assert_close(b[0], a[0], tol=0)
    assert_close(b[1], a[1], tol=0)


@pytest.mark.parametrize("interleave", [False, True])
def test_rope_matches_naive(gen, interleave):
    q, k, v, qo, kv = ragged(gen, [1, 3], [6, 5], 2, 1, 8)
    rope = RoPE(theta=500.0, scale=2.0, interleave=interleave)
    out, lse = attention(q, k, v, qo, kv, causal=True, rope=rope)
    ref_out, ref_lse = naive_attention(q, k, v, qo, kv, causal=True,
                                       rope=naive_rope(500.0, 2.0, interleave))
    assert_close(out, ref_out, tol=TIGHT)
    assert_close(lse, ref_lse, tol=TIGHT)


def test_rope_offsets_match_naive(gen):
    """FlashInfer's q_rope_offset / k_rope_offset: explicit query positions and per-request key offsets."""
    q, k, v, qo, kv = ragged(gen, [2, 3], [7, 5], 2, 2, 8)
    rope = RoPE(theta=100.0)
    q_pos = [40, 41, 7, 3, 9]
    k_off = [30, 2]
    out, lse = attention(q, k, v, qo, kv, rope=rope, rope_q_positions=q_pos, rope_k_offsets=k_off)
    ref_out, ref_lse = naive_attention(q, k, v, qo, kv, rope=naive_rope(100.0), q_rope_pos=q_pos, k_rope_off=k_off)
    assert_close(out, ref_out, tol=TIGHT)
    assert_close(lse, ref_lse, tol=TIGHT)
    base, _ = attention(q, k, v, qo, kv, rope=rope)
    assert (out - base).abs().max() > 1e-3          # the offsets change the relative positions, so the result


def test_partial_rotary_dim_matches_naive(gen):
    q, k, v, qo, kv = ragged(gen, [3], [6], 2, 2, 16)
    out, _ = attention(q, k, v, qo, kv, causal=True, rope=RoPE(theta=50.0, rotary_dim=8))
    ref, _ = naive_attention(q, k, v, qo, kv, causal=True, rope=naive_rope(50.0, rotary_dim=8))
    assert_close(out, ref, tol=TIGHT)


def test_rope_relative_property(gen):
    """RoPE makes q.k depend only on the position difference."""
    x = torch.randn(2, 1, 16, generator=gen, dtype=torch.float64)
    for rope in (RoPE(), RoPE(interleave=True), RoPE(theta=5e5, scale=8.0)):
        a = apply_rope(x, torch.tensor([3, 10]), rope)
        b = apply_rope(x, torch.tensor([103, 110]), rope)
        assert math.isclose(float(a[0, 0] @ a[1, 0]), float(b[0, 0] @ b[1, 0]), rel_tol=1e-9)
        assert torch.allclose(a.norm(dim=-1), x.norm(dim=-1))


def test_partial_rotary_dim_leaves_tail(gen):
    x = torch.randn(3, 2, 16, generator=gen, dtype=torch.float64)
    y = apply_rope(x, torch.tensor([1, 2, 3]), RoPE(rotary_dim=8))
    assert torch.equal(y[..., 8:], x[..., 8:])
    assert not torch.allclose(y[..., :8], x[..., :8])


def test_empty_rows_give_zero_and_minus_inf(gen):
    # window 0 with a mask that removes the diagonal: some rows see nothing
    q, k, v, qo, kv = ragged(gen, [3, 1], [3, 0], 2, 2, 8)
    mask = [torch.tensor([[False, False, False], [True, False, False], [True, True, False]]),
            torch.zeros(1, 0, dtype=torch.bool)]
    out, lse = attention(q, k, v, qo, kv, custom_mask=mask)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    assert torch.equal(out[0], torch.zeros_like(out[0])) and bool((lse[0] == -math.inf).all())
    assert torch.equal(out[3], torch.zeros_like(out[3])) and bool((lse[3] == -math.inf).all())  # kv_len 0
    assert bool(torch.isfinite(lse[1:3]).all())


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("heads", [(8, 8), (8, 2)])
def test_matches_sdpa(gen, causal, heads):
    hq, hkv = heads
    qo_lens, kv_lens = [5, 16, 1], [9, 16, 33]
    q, k, v, qo, kv = ragged(gen, qo_lens, kv_lens, hq, hkv, 32)
    out, lse = attention(q, k, v, qo, kv, causal=causal, compute_dtype=torch.float64)
    for b, (L, S) in enumerate(zip(qo_lens, kv_lens)):
        qb = q[qo[b]:qo[b + 1]].transpose(0, 1)[None]        # [1, Hq, L, D]
        kb = k[kv[b]:kv[b + 1]].transpose(0, 1)[None]
        vb = v[kv[b]:kv[b + 1]].transpose(0, 1)[None]
        mask = None
        if causal:  # bottom-right alignment (SDPA's is_causal is top-left)
            mask = torch.arange(S)[None, :] <= torch.arange(S - L, S)[:, None]
        ref = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, enable_gqa=hq != hkv)
        assert_close(out[qo[b]:qo[b + 1]], ref[0].transpose(0, 1), tol=1e-12)


def test_float32_compute_close_to_float64(gen):
    q, k, v, qo, kv = ragged(gen, [4, 1], [40, 17], 4, 2, 64)
    o64, l64 = attention(q, k, v, qo, kv, causal=True)
    o32, l32 = attention(q.float(), k.float(), v.float(), qo, kv, causal=True, compute_dtype=torch.float32)
    assert o32.dtype == torch.float32
    assert_close(o32, o64, torch.float32)
    assert_close(l32, l64, torch.float32)


def test_low_precision_inputs_are_upcast(gen):
    q, k, v, qo, kv = ragged(gen, [3], [9], 2, 1, 16)
    out, _ = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), qo, kv)
    ref, _ = attention(q.bfloat16().double(), k.bfloat16().double(), v.bfloat16().double(), qo, kv)
    assert out.dtype == torch.float64
    assert_close(out, ref, tol=TIGHT)


def test_errors_name_the_argument(gen):
    q, k, v, qo, kv = ragged(gen, [2, 3], [4, 5], 4, 2, 8)
    with pytest.raises(InputError, match="q: expected 3 dims"):
        attention(q[0], k, v, qo, kv)
    with pytest.raises(InputError, match="multiple of num_kv_heads"):
        attention(q[:, :3], k, v, qo, kv)
    with pytest.raises(InputError, match="k: head_dim"):
        attention(q, k[..., :4], v, qo, kv)
    with pytest.raises(InputError, match="qo_indptr: must be non-decreasing.*request 1"):
        attention(q, k, v, [0, 4, 2], kv)
    with pytest.raises(InputError, match=r"kv_indptr: last element 8 must equal k.shape\[0\] = 9"):
        attention(q, k, v, qo, [0, 4, 8])
    with pytest.raises(InputError, match="qo_indptr has 2 requests but kv_indptr has 1"):
        attention(q, k, v, qo, [0, 9])
    with pytest.raises(InputError, match="alibi_slopes: expected shape"):
        attention(q, k, v, qo, kv, alibi_slopes=torch.ones(3))
    with pytest.raises(InputError, match="custom_mask: expected the flat layout"):
        attention(q, k, v, qo, kv, custom_mask=torch.ones(5, dtype=torch.bool))
    with pytest.raises(InputError, match="window_left"):
        attention(q, k, v, qo, kv, window_left=-3)
    with pytest.raises(InputError, match="rope_k_offsets: expected 2"):
        attention(q, k, v, qo, kv, rope=RoPE(), rope_k_offsets=[1])
    with pytest.raises(InputError, match="rope_q_positions: expected shape"):
        attention(q, k, v, qo, kv, rope=RoPE(), rope_q_positions=[1])
    with pytest.raises(InputError, match="causal attention needs qo_len <= kv_len.*request 1"):
        attention(q, k[:6], v[:6], qo, [0, 4, 6], causal=True)
    with pytest.raises(InputError, match="custom_mask: expected torch.bool"):
        attention(q, k, v, qo, kv, custom_mask=torch.zeros(2 * 4 + 3 * 5))
    with pytest.raises(InputError, match="RoPE.theta"):
        RoPE(theta=0)
