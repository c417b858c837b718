"""The Hopper prefill kernel (issue 16: kernels/include/infernb/prefill_sm90.cuh, infernb.ops.prefill_sm90).

CPU: every specialization compiles for sm_90a in <= 3 s without spills, its SASS (the whole cubin) runs both GEMMs on
HGMMA (P V with a transposed, MN-major V) and loads K/V by TMA; the backend's choice and its refusals; its plans
(128-row tiles, one CTA per SM, nothing split). GPU (sm_90): against the float64 reference over the prefill grid's
head-dim-128 part (batch, group, causal, qo / kv lengths, fp16 / bf16), windows, edge rows, a running max that moves,
many items per CTA; outputs poisoned with NaN first."""
import dataclasses
import itertools
import re

import numpy as np
import pytest
import torch

import infernb as ib
from infernb import InputError, reference
from infernb.jit import build, toolchain
from infernb.ops.prefill import PrefillRunner, plan_batch
from infernb.ops.prefill_sm90 import SM90_TRAITS, resolve_backend, sm90_spec, specializations, unsupported

from .decode_cases import make_cache
from .test_prefill import KV, QO, check, ragged, reference_rounded_rope, run_paged

gpu = pytest.mark.gpu
hopper = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9,
                            reason="needs an sm_90 (Hopper) GPU")
DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("spec", specializations(), ids=lambda s: s.name)
def test_compiles_fast_without_spills(spec):
    k = build(spec, "sm_90a", force=True)
    # issue 16: a specialization compiles with NVRTC in <= 3 s on the CPU machine -- the plain ones (no variant
    # hooks: '_none_' in the name); a variant's traced hooks add their own code (an accurate tanhf: ~3 s on CI's
    # loaded 2 cores), bounded here at twice that
    plain = "_none_" in spec.name
    assert k.report.compile_seconds <= (3.0 if plain else 6.0), k.report
    # (units with the RoPE pass hold its kernel too)
    assert [r.name for r in k.report.kernels] == (["prefill", "rope_pass"] if "_ropepass" in spec.name else ["prefill"])
    for r in k.report.kernels:
        assert not r.spills and r.stack_frame == 0, r
    assert spec.targets("sm_90a") and not spec.targets("sm_80")


@pytest.mark.skipif(toolchain.nvdisasm_path() is None, reason="nvdisasm (pip install nvidia-cuda-nvdisasm)")
def test_sass_runs_both_gemms_on_hgmma():
    text = toolchain.sass(build(sm90_spec(torch.bfloat16, 128, True), "sm_90a").cubin)
    hg = re.findall(r"HGMMA\.64x128x16\.F32\.BF16[^;]*;", text)
    # S = Q K^T: 8 k-steps over the head dim (both operands from shared memory); O += P V: 8 k-steps over the block's
    # keys, P from registers, V transposed (MN-major). The overlapped schedule has each GEMM twice: S for the first
    # block and in the loop, P V in the loop and for the last block.
    assert len(hg) == 32, hg
    assert sum("tnspB" in h for h in hg) == 16 and sum(re.search(r"R\d+, R\d+, gdesc", h) is not None for h in hg) == 16
    ops = re.findall(r"/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", text)
    assert ops.count("UTMALDG") == 4                                     # K and V, two 64-column slabs each
    assert "LDL" not in ops and "STL" not in ops and ops.count("USETMAXREG") == 2
    # the wgmmas of each GEMM are issued back to back (one scoreboard wait per group), not serialized by the compiler
    assert len(re.findall(r"HGMMA[^;]*gsb0", text)) == 4


@pytest.mark.skipif(toolchain.nvdisasm_path() is None, reason="nvdisasm (pip install nvidia-cuda-nvdisasm)")
@pytest.mark.parametrize("head_dim", [64, 256])
def test_sass_other_head_dims(head_dim):
    # head dim 64: S on n128 wgmmas (4 k-steps over d), P V on n64 (8 k-steps over 128 keys), one 64-column slab of
    # K and V by TMA; head dim 256: 64-key blocks, S on n64 (16 k-steps), P V as two n128 halves of O (4 k-steps each)
    text = toolchain.sass(build(sm90_spec(torch.bfloat16, head_dim, True), "sm_90a").cubin)
    shapes = re.findall(r"HGMMA\.(64x\d+x16)\.F32\.BF16[^;]*;", text)
    # each GEMM appears twice (the overlapped schedule's first block / last block and its loop)
    want = {64: {"64x128x16": 2 * 4, "64x64x16": 2 * 8}, 256: {"64x64x16": 2 * 16, "64x128x16": 2 * 4 * 2}}[head_dim]
    assert {sh: shapes.count(sh) for sh in set(shapes)} == want
    ops = re.findall(r"/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", text)
    assert ops.count("UTMALDG") == 2 * head_dim // 64                   # K and V, a box per 64-column slab
    assert "LDL" not in ops and "STL" not in ops and ops.count("USETMAXREG") == 2
    assert len(re.findall(r"HGMMA[^;]*gsb0", text)) == 4


@pytest.mark.skipif(toolchain.nvdisasm_path() is None, reason="nvdisasm (pip install nvidia-cuda-nvdisasm)")
def test_sass_head_dim_256_with_80_key_blocks():
    # the alternative tile at head dim 256 (FA3's): 80-key blocks, 2 stages (225.6 KiB of shared memory): S on n80
    # wgmmas (16 k-steps), P V as two n128 halves over 5 k-steps of 16 keys
    from infernb.ops.prefill_sm90 import sm90_traits

    cfg = dataclasses.replace(sm90_traits(256), block_n=80)
    assert cfg.smem_bytes <= 227 * 1024
    for kv in ("ragged", "NHD"):
        k = build(sm90_spec(torch.bfloat16, 256, True, cfg, kv=kv), "sm_90a")
        (r,) = k.report.kernels
        assert not r.spills and r.stack_frame == 0, r
        shapes = re.findall(r"HGMMA\.(64x\d+x16)\.F32\.BF16[^;]*;", toolchain.sass(k.cubin))
        assert {sh: shapes.count(sh) for sh in set(shapes)} == {"64x80x16": 2 * 16, "64x128x16": 2 * 5 * 2}


@pytest.mark.skipif(toolchain.nvdisasm_path() is None, reason="nvdisasm (pip install nvidia-cuda-nvdisasm)")
@pytest.mark.parametrize("kv", ["NHD", "HND"])
def test_sass_paged_producer_copies_with_cp_async(kv):
    # paged K/V: no TMA box, the producer's 128 threads copy 16-byte chunks (LDGSTS, two a row: K and V), wait for
    # them, fence them to the async proxy (wgmma reads through it) and arrive on the stage's barrier
    text = toolchain.sass(build(sm90_spec(torch.bfloat16, 128, True, kv=kv), "sm_90a").cubin)
    ops = re.findall(r"/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", text)
    assert "UTMALDG.2D" not in ops and ops.count("LDGSTS.E.BYPASS.128") >= 2 + 8     # K and V; Q's 8
    assert "FENCE.VIEW.ASYNC.S" in ops and len([o for o in ops if o.startswith("HGMMA")]) == 32
    assert "LDL" not in ops and "STL" not in ops


def test_register_handover_fits_the_launch_allocation():
    # setmaxnreg moves registers inside the CTA's launch allocation (168 a thread at 384 threads): a producer +
    # consumer budget above it is never granted and the kernel hangs (it did once: benchmarks/NOTES.md); the
    # header's static_assert keeps the two in line, and the SASS shows the budgets it sets
    text = toolchain.sass(build(sm90_spec(torch.bfloat16, 128, True), "sm_90a").cubin) \
        if toolchain.nvdisasm_path() else ""
    (r,) = build(sm90_spec(torch.bfloat16, 128, True), "sm_90a").report.kernels
    assert r.registers * 384 <= 65536
    if text:
        pat = r"USETMAXREG\.(?:TRY_ALLOC|DEALLOC)\.CTAPOOL[^,;]*?,?\s*0x([0-9a-f]+)"
        budgets = [int(x, 16) for x in re.findall(pat, text)]
        assert sorted(budgets) == [24, 240], budgets
        assert 128 * 24 + 256 * 240 <= r.registers * 384


def test_backend_choice_and_refusals():
    kw = dict(head_dim=128, dtype=torch.bfloat16)
    assert unsupported(**kw) is None
    assert "head dims" in unsupported(head_dim=96, dtype=torch.bfloat16)
    assert unsupported(head_dim=64, dtype=torch.bfloat16) is None and unsupported(head_dim=256, dtype=torch.float16) is None
    assert unsupported(**kw, variant=ib.variants.softcap(30.0)) is None
    assert "sigmoid" in unsupported(**kw, variant=ib.variants.sigmoid_attention())
    assert unsupported(**kw, paged=True) is None
    assert "CUDA" in unsupported(**kw, device=torch.device("cpu"))
    assert resolve_backend("auto", **kw) == "mma" and resolve_backend("mma", **kw) == "mma"
    assert resolve_backend("sm90", **kw, paged=True) == "sm90"
    assert resolve_backend("sm90", **kw) == "sm90"
    with pytest.raises(InputError, match="backend"):
        resolve_backend("cuda", **kw)
    with pytest.raises(InputError, match="sm90.*head dims"):
        resolve_backend("sm90", head_dim=96, dtype=torch.bfloat16)
    # block-sparse: a mask's table reads with an accurate tanhf spill on the Hopper kernel: refused there, auto falls
    # back; RoPE rotates by the pass there, not in the tile
    g = torch.Generator().manual_seed(0)
    bs = ib.BlockSparse.from_dense(torch.rand(64, 64, generator=g) < 0.5, (16, 16))
    q, k, v = (torch.randn(64, 2, 128, generator=g).to(torch.bfloat16) for _ in range(3))
    with pytest.raises(InputError, match="sm90.*mma.sync kernel runs it"):
        ib.block_sparse_attention(q, k, v, bs, variant=ib.variants.softcap(10.0), backend="sm90")
    assert ib.block_sparse_attention(q, k, v, bs, variant=ib.variants.softcap(10.0, approx=True),
                                     backend="sm90").shape == q.shape
    assert unsupported(**kw, rope=ib.RoPE()) is None and "tile" in unsupported(**kw, rope=ib.RoPE(), rope_path="tile")
    # a plan made for the mma.sync kernel is refused by the Hopper runner, with the fix in the message
    p = plan_batch([300], [300], num_qo_heads=8, num_kv_heads=2, head_dim=128, dtype=torch.bfloat16, tile_q=64)
    with pytest.raises(InputError, match="backend='sm90'"):
        PrefillRunner(p, device="cpu", backend="sm90")


def test_sm90_plans_and_cpu_path():
    p = plan_batch([16384] + [512] * 63, [16384] + [512] * 63, num_qo_heads=32, num_kv_heads=8, head_dim=128,
                   dtype=torch.bfloat16, causal=True, backend="sm90", num_sms=132)
    assert p.tile_q == SM90_TRAITS.tile_q and p.num_ctas == 132 and len(p.merge_unit) == 0
    with pytest.raises(InputError, match="128 rows"):
        plan_batch([64], [64], num_qo_heads=8, num_kv_heads=2, head_dim=128, dtype=torch.bfloat16, tile_q=64,
                   backend="sm90")
    # the CPU runs the emulator whatever the backend, the Hopper one's constraints checked all the same
    g = torch.Generator().manual_seed(0)
    q, k, v, qo, kv = ragged(g, [37, 5], [90, 5], 8, 2, 128, device="cpu")
    out = ib.prefill(q, k, v, qo, kv, causal=True, backend="sm90")
    ref, _ = reference.attention(q, k, v, qo, kv, causal=True)
    check(out, torch.zeros(out.shape[:2]), ref, torch.zeros(out.shape[:2]), torch.bfloat16)
    with pytest.raises(InputError, match="sm90"):
        ib.prefill(q, k, v, qo, kv, causal=True, backend="sm90", variant=ib.variants.sigmoid_attention())


# ---------------------------------------------------------------------------------------------- GPU
def run_sm90(gen, qo_lens, kv_lens, hq, hkv, *, dtype=torch.bfloat16, causal=False, window_left=-1, num_sms=None,
             sm_scale=None, q_scale=1.0, q=None, k=None, config=None, variant=None, block_sparse=None, head_dim=128):
    """Plan for the Hopper kernel, poison, run, compare with the float64 reference (rows that see no key: 0, -inf).
    ``q_scale`` widens the logits; ``block_sparse``: plan with the variant's block structure (default: when it has a
    mask_mod, as the front doors do)."""
    qq, kk, v, qo_ptr, kv_ptr = ragged(gen, qo_lens, kv_lens, hq, hkv, head_dim, dtype)
    q = (qq.float() * q_scale).to(dtype) if q is None else q
    k = kk if k is None else k
    p = plan_batch(qo_lens, kv_lens, num_qo_heads=hq, num_kv_heads=hkv, head_dim=head_dim, dtype=dtype,
                   causal=causal, window_left=window_left, num_sms=num_sms, backend="sm90", variant=variant,
                   block_sparse=block_sparse)
    runner = PrefillRunner(p, device=q.device, backend="sm90", sm_scale=sm_scale, config=config, variant=variant)
    assert runner.backend == "sm90"
    out = torch.full_like(q, float("nan"))
    lse = torch.full(q.shape[:2], float("nan"), dtype=torch.float32, device=q.device)
    o, s = runner(q, k, v, out=out, lse=lse)
    assert o is out and s is lse
    kw = {} if variant is None else variant.reference_kwargs()
    ref_o, ref_s = reference.attention(q, k, v, qo_ptr, kv_ptr, causal=causal, window_left=window_left,
                                       sm_scale=sm_scale, **kw)
    check(o, s, ref_o, ref_s, dtype)
    return p


GRID = list(itertools.product([1, 12, 17], [1, 4, 8, 32], [False, True]))


@gpu
@hopper
@pytest.mark.parametrize("batch,group,causal", GRID, ids=[f"b{b}-g{g}-{'causal' if c else 'full'}"
                                                          for b, g, c in GRID])
def test_gpu_ragged_grid(gen, batch, group, causal):
    rng = np.random.default_rng(batch * 1000 + group * 10 + causal)
    kv = rng.choice(KV, batch).tolist()
    qo = [int(min(x, y)) if causal else int(y) for x, y in zip(kv, rng.choice(QO, batch))]
    dtype = torch.bfloat16 if (batch + group) % 2 else torch.float16
    run_sm90(gen, qo, kv, 2 * group if group < 32 else 32, 2 if group < 32 else 1, dtype=dtype, causal=causal)


@gpu
@hopper
@pytest.mark.parametrize("case", ["batch128", "kv16384", "prompt8192_few_ctas", "window", "edge_rows", "scale",
                                  "rising_max"])
def test_gpu_cases(gen, case):
    if case == "batch128":
        rng = np.random.default_rng(128)
        kv = rng.choice(KV, 128).tolist()
        run_sm90(gen, [min(17, x) for x in kv], kv, 32, 8, causal=True)
    elif case == "kv16384":
        run_sm90(gen, [577, 127], [16384, 16384], 32, 8, causal=True)
    elif case == "prompt8192_few_ctas":           # many items per CTA: the stages' phases carry across items
        run_sm90(gen, [2048], [2048], 16, 4, causal=True, num_sms=3)
    elif case == "window":
        run_sm90(gen, [577, 127, 1], [2048, 512, 54], 16, 4, causal=True, window_left=100)
        run_sm90(gen, [300], [700], 8, 8, window_left=200)
    elif case == "edge_rows":                     # empty requests, no keys, one key; a window hiding every key
        run_sm90(gen, [0, 17, 0, 1], [54, 0, 0, 1], 16, 4)
        run_sm90(gen, [37], [37], 8, 2, window_left=0)
        run_sm90(gen, [5, 3], [0, 0], 8, 2)                          # no key in the whole batch
    elif case == "scale":
        run_sm90(gen, [200, 33], [200, 500], 8, 2, causal=True, sm_scale=0.3, dtype=torch.float16)
    else:                                          # logits growing along every row: the max moves block after block
        qo, kv = [200, 64], [3000, 700]
        _, k, _, _, _ = ragged(gen, qo, kv, 16, 4, 128)
        pos = torch.cat([torch.arange(n, device=DEV, dtype=torch.float32) for n in kv])
        run_sm90(gen, qo, kv, 16, 4, causal=True, k=(k.float() * (1 + pos / 64 * 1.5)[:, None, None]).to(k.dtype))


@pytest.mark.parametrize("variant", [v for v in ib.variants.examples()], ids=lambda v: v.name)
def test_every_example_variant_compiles_without_spills_or_is_refused(variant):
    why = unsupported(head_dim=128, dtype=torch.bfloat16, variant=variant)
    if why is not None:
        assert not variant.softmax or (variant.generated.key_gathers and variant.generated.lib_calls), why
        return
    from infernb.ops.prefill_sm90 import variant_traits
    k = build(sm90_spec(torch.bfloat16, 128, True, variant_traits(variant), variant=variant), "sm_90a")
    (r,) = k.report.kernels
    assert not r.spills and r.stack_frame == 0, (variant.name, r)


def _sm90_examples():
    if not torch.cuda.is_available():
        return []
    return [v for v in ib.variants.examples("cuda")
            if unsupported(head_dim=128, dtype=torch.bfloat16, variant=v) is None]


@gpu
@hopper
@pytest.mark.parametrize("variant", _sm90_examples(), ids=lambda v: v.name)
def test_gpu_every_builtin_variant(gen, variant):
    # examples() capture 8-head slopes and 64 document ids: 8 query heads, keys <= 64; with and without the
    # variant's block structure (mask_mod on every pair, or skipped on its full runs)
    run_sm90(gen, [17, 64, 1], [40, 64, 54], 8, 2, causal=True, variant=variant)
    if variant.mask_mod is not None:
        run_sm90(gen, [17, 64, 1], [40, 64, 54], 8, 2, causal=True, variant=variant, block_sparse=False)


@gpu
@hopper
@pytest.mark.parametrize("make", [lambda: ib.variants.softcap(5.0, approx=True), lambda: ib.variants.softcap(5.0),
                                  lambda: ib.variants.alibi(ib.variants.alibi_slopes(8).to(DEV)),
                                  lambda: ib.Variant("relpos", score_mod=lambda s, b, h, q, k: s - 0.01 * abs(q - k)),
                                  lambda: ib.variants.sliding_window(300),
                                  lambda: ib.variants.document(torch.arange(3, device=DEV).repeat_interleave(700))],
                         ids=["softcap_approx", "softcap", "alibi", "relpos", "window300", "documents"])
def test_gpu_hooks_on_long_rows(gen, make):
    # long rows: most blocks full (hooks without the per-element bounds), the diagonal and the runs' ends partial;
    # q scaled up so the soft-cap (cap 5) saturates and the biases matter
    variant = make()
    run_sm90(gen, [577, 300], [2100, 300], 8, 2, causal=True, variant=variant, q_scale=3.0)


@gpu
@hopper
@pytest.mark.parametrize("stages,sched", [(3, 0), (3, 1), (3, 2), (2, 3), (2, 0)])
def test_gpu_other_schedules(gen, stages, sched):
    # the benchmark's alternatives to the default schedule (3: overlap + pingpong, 3 stages): the same results
    import dataclasses
    cfg = dataclasses.replace(SM90_TRAITS, stages=stages, sched=sched)
    run_sm90(gen, [577, 127, 1], [2048, 512, 54], 16, 4, causal=True, config=cfg)
    run_sm90(gen, [2048], [2048], 16, 4, causal=True, num_sms=3, config=cfg)
    run_sm90(gen, [0, 17, 300], [54, 0, 700], 8, 2, window_left=200, config=cfg, dtype=torch.float16)


def run_paged_sm90(gen, qo_lens, kv_lens, hq, hkv, page_size, layout, *, dtype=torch.bfloat16, causal=True,
                   variant=None, head_dim=128, config=None):
    """ib.append on the Hopper kernel (its producer copying the pages with cp.async) against the float64 reference
    on the paged cache; the output poisoned first."""
    cache, ids, _ = make_cache(gen, kv_lens, hq, hkv, head_dim, page_size, layout=layout, dtype=dtype, device=DEV)
    q = torch.randn(sum(qo_lens), hq, head_dim, generator=gen).to(dtype).to(DEV)
    t = cache.page_table(ids)
    p = plan_batch(qo_lens, kv_lens, num_qo_heads=hq, num_kv_heads=hkv, head_dim=head_dim, dtype=dtype,
                   page_size=page_size, causal=causal, variant=variant, backend="sm90")
    r = PrefillRunner(p, cache, t, variant=variant, backend="sm90", config=config)
    assert r.backend == "sm90"
    out = torch.full_like(q, float("nan"))
    lse = torch.full(q.shape[:2], float("nan"), dtype=torch.float32, device=q.device)
    o, s = r(q, out=out, lse=lse)
    kw = {} if variant is None else variant.reference_kwargs()
    ref_o, ref_s = reference.paged_attention(q, cache.pool, t.indptr, t.indices, t.last_page_len,
                                             np.r_[0, np.cumsum(qo_lens)].tolist(), layout=layout, causal=causal,
                                             **kw)
    check(o, s, ref_o, ref_s, dtype)
    if config is None:                  # the front door, asked for the Hopper kernel, plans and runs the same
        o2 = ib.append(q, cache, ids, qo_lens, causal=causal, variant=variant, backend="sm90")
        assert torch.equal(o2, o)


PAGED = [(1, "NHD"), (5, "HND"), (16, "NHD"), (64, "HND"), (16, "HND"), (5, "NHD")]


@gpu
@hopper
@pytest.mark.parametrize("page,layout", PAGED, ids=[f"p{p}-{l}" for p, l in PAGED])
@pytest.mark.parametrize("causal", [True, False])
def test_gpu_paged_append(gen, page, layout, causal):
    rng = np.random.default_rng(page + causal)
    kv = rng.choice(KV, 12).tolist()
    qo = [int(min(x, y)) for x, y in zip(kv, rng.choice(QO, 12))]
    run_paged_sm90(gen, qo, kv, 16, 4, page, layout, causal=causal,
                   dtype=torch.bfloat16 if page != 5 else torch.float16)


@gpu
@hopper
def test_gpu_paged_long_and_variants(gen):
    run_paged_sm90(gen, [577, 127], [16384, 16384], 32, 8, 16, "NHD")
    run_paged_sm90(gen, [512] * 4, [2560] * 4, 32, 8, 16, "NHD")
    run_paged_sm90(gen, [17, 30], [60, 30], 8, 2, 16, "HND", variant=ib.variants.softcap(5.0, approx=True))
    run_paged_sm90(gen, [17, 30], [60, 30], 8, 2, 16, "NHD",
                   variant=ib.variants.alibi(ib.variants.alibi_slopes(8).to(DEV)))


@gpu
@hopper
def test_gpu_front_door_and_runner_reuse(gen):
    q, k, v, qo, kv = ragged(gen, [513, 64], [1000, 64], 32, 8, 128)
    a = ib.prefill(q, k, v, qo, kv, causal=True, backend="sm90")
    b = ib.prefill(q, k, v, qo, kv, causal=True, backend="mma")
    ref, _ = reference.attention(q, k, v, qo, kv, causal=True)
    check(a, torch.zeros(a.shape[:2]), ref, torch.zeros(a.shape[:2]), torch.bfloat16)
    assert (a.float() - b.float()).abs().max() < 0.05
    p = plan_batch([513, 64], [1000, 64], num_qo_heads=32, num_kv_heads=8, head_dim=128, dtype=torch.bfloat16,
                   causal=True, backend="sm90")
    r = PrefillRunner(p, backend="sm90")
    o1, _ = r(q, k, v)
    o2, _ = r(q, k.clone(), v.clone())                 # new tensors: new TMA descriptors, same result
    assert torch.equal(o1, o2) and torch.equal(o1, a)


HEAD_DIM_CASES = ["grid", "few_ctas", "window_edges", "fp16_scale", "paged", "variants"]


@gpu
@hopper
@pytest.mark.parametrize("head_dim", [64, 256])
@pytest.mark.parametrize("case", HEAD_DIM_CASES)
def test_gpu_other_head_dims(gen, head_dim, case):
    # head dims 64 (4 stages) and 256 (64-key blocks, O as two n128 halves): the cases that exercise what differs
    # from 128 -- block counts and run ends, the stages' phases across items, masks at the block's edges, the paged
    # producer's row geometry (CH chunks a row), the hooks
    d = dict(head_dim=head_dim)
    if case == "grid":
        for b, g, c in [(12, 4, True), (17, 8, False), (1, 1, True)]:
            rng = np.random.default_rng(b * 100 + g + c)
            kv = rng.choice(KV, b).tolist()
            qo = [int(min(x, y)) if c else int(y) for x, y in zip(kv, rng.choice(QO, b))]
            run_sm90(gen, qo, kv, 2 * g, 2, causal=c, **d)
    elif case == "few_ctas":
        run_sm90(gen, [2048], [2048], 16, 4, causal=True, num_sms=3, **d)
        run_sm90(gen, [577, 127], [4096, 4096], 32, 8, causal=True, **d)
    elif case == "window_edges":
        run_sm90(gen, [577, 127, 1], [2048, 512, 54], 16, 4, causal=True, window_left=100, **d)
        run_sm90(gen, [0, 17, 0, 1], [54, 0, 0, 1], 16, 4, **d)
        run_sm90(gen, [5, 3], [0, 0], 8, 2, **d)
    elif case == "fp16_scale":
        run_sm90(gen, [200, 33], [200, 500], 8, 2, causal=True, sm_scale=0.3, dtype=torch.float16, **d)
    elif case == "paged":
        run_paged_sm90(gen, [300, 17, 64], [1000, 17, 200], 16, 4, 16, "NHD", **d)
        run_paged_sm90(gen, [300, 17, 64], [1000, 17, 200], 16, 4, 5, "HND", dtype=torch.float16, **d)
    else:
        run_sm90(gen, [577, 300], [2100, 300], 8, 2, causal=True, variant=ib.variants.softcap(5.0), q_scale=3.0, **d)
        run_sm90(gen, [577, 300], [2100, 300], 8, 2, causal=True,
                 variant=ib.variants.alibi(ib.variants.alibi_slopes(8).to(DEV)), **d)
        run_sm90(gen, [577, 300], [2100, 300], 8, 2, causal=True,
                 variant=ib.variants.document(torch.arange(3, device=DEV).repeat_interleave(700)), **d)


ROPES = [ib.RoPE(theta=1e4), ib.RoPE(theta=5e5, interleave=True), ib.RoPE(theta=1e4, rotary_dim=64, scale=2.0)]


@gpu
@hopper
@pytest.mark.parametrize("rope", ROPES, ids=["llama", "gptj", "partial_scaled"])
def test_gpu_rope_by_the_pass(gen, rope):
    # RoPE on the Hopper kernel: q and the keys rotated once per call by the pass (paged: values gathered too), then
    # the kernel on the ragged buffers; against the float64 reference of the rounded rotated operands (and the
    # unrounded one, looser: exact_o)
    qo, kv = [577, 127, 1], [2048, 512, 54]
    q, k, v, qo_ptr, kv_ptr = ragged(gen, qo, kv, 16, 4, 128)
    out = torch.full_like(q, float("nan"))
    lse = torch.full(q.shape[:2], float("nan"), dtype=torch.float32, device=q.device)
    p = plan_batch(qo, kv, num_qo_heads=16, num_kv_heads=4, head_dim=128, dtype=q.dtype, causal=True, rope=rope,
                   backend="sm90")
    r = PrefillRunner(p, rope=rope, backend="sm90")
    assert r.backend == "sm90" and r.rope_path == "pass"
    r(q, k, v, out=out, lse=lse)
    ref_o, _ = reference.attention(q, k, v, qo_ptr, kv_ptr, causal=True, rope=rope)
    rnd_o, rnd_s = reference_rounded_rope(q, k, v, qo, kv, rope, causal=True)
    check(out, lse, rnd_o, rnd_s, torch.bfloat16, exact_o=ref_o)
    assert torch.equal(ib.prefill(q, k, v, qo_ptr, kv_ptr, causal=True, rope=rope, backend="sm90"), out)
    for layout, page in (("NHD", 16), ("HND", 5)):
        run_paged(gen, [300, 17, 64], [1000, 17, 200], 16, 4, 128, page, layout, rope=rope, backend="sm90")
    run_paged(gen, [64, 5], [300, 5], 8, 2, 64, 16, "NHD", rope=rope if rope.rotary_dim is None else None,
              backend="sm90")


@gpu
@hopper
def test_gpu_trace_records_the_warpgroups(gen):
    # the trace build (ib.profile.sm90_trace) records, per traced CTA, each block the producer issued and each block
    # the consumers computed: the same blocks, in time order
    q, k, v, _, _ = ragged(gen, [1000], [1000], 16, 4, 128)
    p = plan_batch([1000], [1000], num_qo_heads=16, num_kv_heads=4, head_dim=128, dtype=torch.bfloat16, causal=True,
                   backend="sm90")
    ph = ib.profile.sm90_trace_phases(ib.profile.sm90_trace(p, q, k, v, ctas=2))
    assert len(ph) == 2
    for c in ph:
        issued = c["roles"]["producer"]["issuing the block's loads"]
        for role in ("consumer 0", "consumer 1"):
            soft = c["roles"][role]["softmax"]
            assert len(soft) == len(issued) > 0
            assert all(a <= b for a, b in soft) and all(x[0] <= y[0] for x, y in zip(soft, soft[1:]))
            assert len(c["roles"][role]["epilogue"]) == c["items"]


@pytest.mark.skipif(toolchain.nvdisasm_path() is None, reason="nvdisasm (pip install nvidia-cuda-nvdisasm)")
def test_sass_paged_async_arrivals():
    # sched bit PAGED_ASYNC: the producer arrives through cp.async.mbarrier.arrive.noinc (ARRIVES.LDGSTSBAR), waits
    # for its copies only once, before it exits; the consumers fence the stage to the async proxy after their waits
    from infernb.ops.prefill_sm90 import PAGED_ASYNC

    cfg = dataclasses.replace(SM90_TRAITS, sched=3 | PAGED_ASYNC)
    text = toolchain.sass(build(sm90_spec(torch.bfloat16, 128, True, cfg, kv="NHD"), "sm_90a").cubin)
    ops = re.findall(r"/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", text)
    assert ops.count("ARRIVES.LDGSTSBAR.64.ARVCNT") == 1 and ops.count("DEPBAR.LE") == 2   # (the other: Q's copies)
    assert ops.count("FENCE.VIEW.ASYNC.S") >= 4 and "LDL" not in ops and "STL" not in ops
    # the paged default (default_traits); the synchronous alternative (sched 3) has no asynchronous arrival
    assert sm90_spec(torch.bfloat16, 128, True, kv="NHD").name == sm90_spec(torch.bfloat16, 128, True, cfg,
                                                                              kv="NHD").name
    sync = toolchain.sass(build(sm90_spec(torch.bfloat16, 128, True, dataclasses.replace(SM90_TRAITS, sched=3),
                                          kv="NHD"), "sm_90a").cubin)
    assert "ARRIVES" not in sync


@gpu
@hopper
@pytest.mark.parametrize("page,layout", [(1, "NHD"), (16, "HND"), (5, "NHD"), (64, "HND")])
def test_gpu_paged_sync_arrivals(gen, page, layout):
    # the paged default arrives asynchronously (default_traits, the paged grid above); the synchronous alternative
    # (each producer thread waits for its copies, then arrives) stays correct
    from infernb.ops.prefill_sm90 import sm90_traits

    rng = np.random.default_rng(page)
    kv = rng.choice(KV, 12).tolist()
    qo = [int(min(x, y)) for x, y in zip(kv, rng.choice(QO, 12))]
    cfg = dataclasses.replace(SM90_TRAITS, sched=3)
    run_paged_sm90(gen, qo, kv, 16, 4, page, layout, config=cfg)
    run_paged_sm90(gen, [577, 127], [4096, 4096], 32, 8, page, layout, config=cfg, causal=False)
    for d in (64, 256):
        run_paged_sm90(gen, [300, 17], [1000, 17], 16, 4, page, layout, head_dim=d,
                       config=dataclasses.replace(sm90_traits(d), sched=3))


@gpu
@hopper
def test_gpu_head_dim_256_with_80_key_blocks(gen):
    from infernb.ops.prefill_sm90 import sm90_traits

    cfg = dataclasses.replace(sm90_traits(256), block_n=80)
    run_sm90(gen, [577, 127, 1], [2048, 512, 54], 16, 4, causal=True, config=cfg, head_dim=256)
    run_sm90(gen, [2048], [2048], 16, 4, causal=True, num_sms=3, config=cfg, head_dim=256)
    run_sm90(gen, [0, 17, 300], [54, 0, 700], 8, 2, window_left=200, config=cfg, dtype=torch.float16, head_dim=256)
    run_paged_sm90(gen, [300, 17, 64], [1000, 17, 200], 16, 4, 5, "HND", head_dim=256, config=cfg)
