"""Block-sparse attention (ib.block_sparse_attention): a BlockSparse mask run by the prefill kernel. CPU: the mask's
variant masks exactly the mask's elements, the front door equals the float64 reference (emulator), bad masks are
named. GPU: the kernel against the reference over block shapes, sizes, head counts and densities, on both
backends (the mma.sync kernel, and the Hopper kernel on an sm_90 GPU)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import infernb as ib
from infernb import InputError, reference
from infernb.ops.block_sparse import check_mask, mask_variant

from .test_prefill import DEV, check, gpu, records_attention

_hopper = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9,
                             reason="needs an sm_90 (Hopper) GPU")
#: the GPU tests run on both kernels: "sm90" on a Hopper GPU only
BACKENDS = pytest.mark.parametrize("backend", ["mma", pytest.param("sm90", marks=_hopper)])


def random_mask(gen, M, N, R, C, density, inner=True):
    """Blocks listed with probability ``density``; inside half of them (``inner``) a random element mask."""
    nbr, nbc = -(-M // R), -(-N // C)
    blk = torch.rand(nbr, nbc, generator=gen) < density
    whole = torch.rand(nbr, nbc, generator=gen) < (0.5 if inner else 1.0)
    up = lambda x: x.repeat_interleave(R, 0).repeat_interleave(C, 1)[:M, :N]  # noqa: E731
    dense = up(blk) & (up(whole) | (torch.rand(M, N, generator=gen) < 0.6))
    return dense, ib.BlockSparse.from_dense(dense, (R, C))


def run(gen, M, N, hq, hkv, d, R, C, density, *, causal=False, inner=True, variant=None, dtype=torch.bfloat16,
        device=DEV, paged=None, page_size=16, backend="auto"):
    """``paged``: None (ragged k, v) or a cache layout ("NHD" / "HND"): the keys then sit in a paged cache of
    ``page_size``, behind another sequence (the table's pages are not the pool's first ones)."""
    dense, bs = random_mask(gen, M, N, R, C, density, inner)
    q = torch.randn(M, hq, d, generator=gen).to(dtype).to(device)
    k = torch.randn(N, hkv, d, generator=gen).to(dtype).to(device)
    v = torch.randn(N, hkv, d, generator=gen).to(dtype).to(device)
    if paged is None:
        out, lse = ib.block_sparse_attention(q, k, v, bs, causal=causal, variant=variant, return_lse=True,
                                             backend=backend)
    else:
        cache = ib.PagedKVCache(-(-N // page_size) + 8, page_size, hkv, d, dtype=dtype, device=device, layout=paged)
        other, sid = cache.add_sequences(2)
        cache.append([other], k[:3 * page_size // 2], v[:3 * page_size // 2], [3 * page_size // 2])
        cache.append([sid], k, v, [N])
        out, lse = ib.block_sparse_attention(q, mask=bs, cache=cache, seq_id=sid, causal=causal, variant=variant,
                                             return_lse=True, backend=backend)
    off = N - M
    dd = dense.to(device)
    kw = {} if variant is None else variant.reference_kwargs()
    extra = kw.pop("mask_mod", None)

    def mask_mod(b, h, qi, ki):
        m = dd[qi - off, ki]
        return m if extra is None else m & extra(b, h, qi, ki)
    ref_o, ref_s = reference.attention(q, k, v, [0, M], [0, N], causal=causal, mask_mod=mask_mod, **kw)
    check(out, lse, ref_o, ref_s, dtype)
    return bs


def test_cpu_mask_variant_is_the_mask(gen):
    for (M, N, R, C) in [(100, 300, 16, 64), (37, 37, 1, 5), (64, 200, 7, 1), (20, 90, 3, 3)]:
        dense, bs = random_mask(gen, M, N, R, C, 0.4)
        _, m = mask_variant(bs).bound_mods()
        q_idx = torch.arange(M)[:, None] + (N - M)
        got = torch.as_tensor(m(torch.tensor(0), torch.tensor(0), q_idx, torch.arange(N)[None, :])).expand(M, N)
        assert torch.equal(got, dense), (M, N, R, C)


def test_cpu_masks_of_similar_sizes_share_a_kernel(gen):
    a = mask_variant(random_mask(gen, 100, 300, 16, 64, 0.4)[1])
    b = mask_variant(random_mask(gen, 120, 290, 16, 64, 0.5)[1])
    assert a.code_hash == b.code_hash                     # (tables padded to powers of two, the offset at run time)


@pytest.mark.parametrize("R,C", [(16, 64), (1, 16), (5, 1), (4, 4), (64, 64)])
@pytest.mark.parametrize("causal", [False, True])
def test_cpu_block_sparse_attention_matches_the_reference(gen, R, C, causal):
    run(gen, 70, 130, 8, 2, 64, R, C, 0.5, causal=causal, device="cpu")


def test_cpu_block_sparse_with_a_variant(gen):
    run(gen, 64, 128, 8, 2, 64, 16, 16, 0.6, variant=ib.variants.softcap(5.0), device="cpu")
    run(gen, 64, 128, 8, 2, 64, 16, 16, 0.6, variant=ib.variants.sliding_window(40), device="cpu")


def variable_case(gen, row_sizes, col_sizes, density, block=None):
    """A variable-block mask (FlashInfer's VariableBlockSparse case) and its dense element mask."""
    bm = torch.rand(len(row_sizes), len(col_sizes), generator=gen) < density
    dense = bm.repeat_interleave(torch.tensor(row_sizes), 0).repeat_interleave(torch.tensor(col_sizes), 1)
    return dense, ib.BlockSparse.from_variable_blocks(bm, row_sizes, col_sizes, block)


def run_variable(gen, row_sizes, col_sizes, density, hq, hkv, d, *, device=DEV, block=None, backend="auto"):
    dense, bs = variable_case(gen, row_sizes, col_sizes, density, block)
    assert torch.equal(bs.to_dense(), dense)                  # the uniform grid represents the blocks exactly
    M, N = dense.shape
    q = torch.randn(M, hq, d, generator=gen).to(torch.bfloat16).to(device)
    k = torch.randn(N, hkv, d, generator=gen).to(torch.bfloat16).to(device)
    v = torch.randn(N, hkv, d, generator=gen).to(torch.bfloat16).to(device)
    out, lse = ib.block_sparse_attention(q, k, v, bs, return_lse=True, backend=backend)
    dd = dense.to(device)
    ref_o, ref_s = reference.attention(q, k, v, [0, M], [0, N], mask_mod=lambda b, h, qi, ki: dd[qi - (N - M), ki])
    check(out, lse, ref_o, ref_s, torch.bfloat16)
    return bs


def test_cpu_variable_block_sizes(gen):
    bs = run_variable(gen, [5, 17, 40, 2], [30, 7, 64, 13, 9], 0.5, 8, 2, 64, device="cpu")
    assert bs.block == (16, 64)                               # gcds 1: the default grid, edges partial
    bs = run_variable(gen, [64, 128, 32], [64, 192, 128], 0.6, 4, 4, 64, device="cpu")
    assert bs.block == (32, 64) and bs.stats()["partial_blocks"] == 0   # aligned sizes: the gcd grid, no partials
    with pytest.raises(InputError, match="block_mask"):
        ib.BlockSparse.from_variable_blocks(torch.ones(2, 2), [4, 4], [8, 8])
    with pytest.raises(InputError, match="positive"):
        ib.BlockSparse.from_variable_blocks(torch.ones(2, 2, dtype=torch.bool), [4, 0], [8, 8])


@pytest.mark.parametrize("layout,page", [("NHD", 16), ("HND", 5)])
def test_cpu_block_sparse_over_a_paged_cache(gen, layout, page):
    run(gen, 70, 130, 8, 2, 64, 16, 16, 0.5, causal=True, device="cpu", paged=layout, page_size=page)


def test_cpu_paged_front_door_checks(gen):
    cache = ib.PagedKVCache(8, 16, 2, 64, dtype=torch.bfloat16)
    (sid,) = cache.add_sequences(1)
    kv = torch.randn(40, 2, 64).to(torch.bfloat16)
    cache.append([sid], kv, kv, [40])
    bs = ib.BlockSparse.from_dense(torch.ones(8, 40, dtype=torch.bool), (4, 8))
    q = torch.randn(8, 4, 64).to(torch.bfloat16)
    with pytest.raises(InputError, match="either k and v, or cache"):
        ib.block_sparse_attention(q, kv, kv, bs, cache=cache, seq_id=sid)
    with pytest.raises(InputError, match="q: expected"):
        ib.block_sparse_attention(q[:, :3], mask=bs, cache=cache, seq_id=sid)
    with pytest.raises(InputError, match="shape"):
        ib.block_sparse_attention(q, mask=ib.BlockSparse.from_dense(torch.ones(8, 41, dtype=torch.bool), (4, 8)),
                                  cache=cache, seq_id=sid)
    with pytest.raises(InputError):
        ib.block_sparse_attention(q, mask=bs, cache=cache, seq_id=sid + 7)


def test_cpu_bad_masks_are_named(gen):
    dense, bs = random_mask(gen, 64, 128, 16, 16, 0.5)
    q, k = torch.randn(64, 4, 64).bfloat16(), torch.randn(128, 2, 64).bfloat16()
    with pytest.raises(InputError, match="shape"):
        ib.block_sparse_attention(q, k, k, ib.BlockSparse.from_dense(dense[:, :100], (16, 16)))
    with pytest.raises(InputError, match="from_dense"):
        ib.block_sparse_attention(q, k, k, dense)
    with pytest.raises(InputError, match="mask == 0"):
        ib.block_sparse_attention(q, k, k, torch.zeros(64, 128))
    bad = ib.BlockSparse(bs.shape, bs.block, bs.indptr, bs.indices.flip(0), bs.is_full, bs.partial_masks)
    with pytest.raises(InputError, match="increase"):
        check_mask(bad, 64, 128)
    oob = ib.BlockSparse(bs.shape, bs.block, bs.indptr, bs.indices + 8, bs.is_full, bs.partial_masks)
    with pytest.raises(InputError, match="in \\[0, 8\\)"):
        check_mask(oob, 64, 128)
    with pytest.raises(InputError, match="causal"):
        ib.block_sparse_attention(torch.randn(130, 4, 64).bfloat16(), k, k,
                                  ib.BlockSparse.from_dense(torch.ones(130, 128, dtype=torch.bool), (16, 16)),
                                  causal=True)


@pytest.mark.parametrize("tile_q", [64, 128])
def test_cpu_records_of_masks_with_empty_rows(gen, tile_q):
    """The kernel's records of a block-masked plan whose last tiles list no block (once an IndexError in
    plan_records, seen on the GPU only: the CPU front door runs the emulator), computed from the records alone."""
    # blocks of 32 query tokens: a tile (16 or 32 tokens at group 4) lies in one block row, so its runs are exactly
    # its rows' keys and the records (which apply no element mask) compute the mask
    M, N, R, C = 200, 160, 32, 32
    blk = torch.rand(-(-M // R), -(-N // C), generator=gen) < 0.5
    blk[-3:] = False                                        # rows 128.. see no key (whole tiles without segments)
    dense = blk.repeat_interleave(R, 0).repeat_interleave(C, 1)[:M, :N]
    bs = ib.BlockSparse.from_dense(dense, (R, C))
    p = ib.plan([M], [N], num_qo_heads=8, num_kv_heads=2, head_dim=64, tile_q=tile_q, num_sms=3, block_masks=[bs],
                merge_gain=0.0)
    assert (np.diff(p.seg_indptr) == 0).any()
    q, k, v = (torch.randn(n, h, 64, generator=gen) for n, h in ((M, 8), (N, 2), (N, 2)))
    out, lse = records_attention(p, q, k, v)
    ref_o, ref_s = reference.attention(q, k, v, [0, M], [0, N], mask_mod=lambda b, h, qi, ki: dense[qi - (N - M), ki])
    assert torch.equal(torch.isfinite(lse), torch.isfinite(ref_s))
    fin = torch.isfinite(ref_s)
    assert torch.allclose(out[fin], ref_o[fin].double(), atol=1e-6)
    assert torch.equal(out[~fin], torch.zeros_like(out[~fin]))


# ---------------------------------------------------------------------------------------------- GPU
GRID = [(R, C, M, N) for (R, C), (M, N) in itertools.product(
    [(1, 1), (1, 16), (4, 4), (4, 64), (16, 1), (16, 16), (16, 64), (64, 4), (64, 64), (5, 7)],
    [(64, 64), (128, 256), (256, 128)])]


@gpu
@BACKENDS
@pytest.mark.parametrize("R,C,M,N", GRID, ids=[f"R{R}-C{C}-M{M}-N{N}" for R, C, M, N in GRID])
def test_gpu_block_shapes_and_sizes(gen, R, C, M, N, backend):
    density = float(np.random.default_rng(R * 131 + C * 7 + M + N).uniform(0.05, 0.9))
    run(gen, M, N, 16, 4, 128, R, C, density, inner=(R * C) % 2 == 0, backend=backend)


@gpu
@BACKENDS
@pytest.mark.parametrize("heads", [(1, 1), (4, 4), (16, 4), (16, 1)])
@pytest.mark.parametrize("d", [64, 128, 256])
def test_gpu_heads_and_head_dims(gen, heads, d, backend):
    run(gen, 200, 333, heads[0], heads[1], d, 16, 32, 0.4, backend=backend)


@gpu
@BACKENDS
def test_gpu_variable_block_sizes(gen, backend):
    run_variable(gen, [5, 17, 40, 2, 300, 96], [30, 7, 64, 13, 9, 500, 77], 0.5, 16, 4, 128, backend=backend)
    run_variable(gen, [128] * 8 + [256] * 4, [64] * 16 + [512] * 2, 0.4, 8, 2, 128, backend=backend)
    run_variable(gen, [64, 192, 32, 160], [96, 32, 416], 0.7, 8, 8, 64, block=(32, 32), backend=backend)


def _softcap(backend):
    """Soft-cap 10: the accurate tanhf on the mma.sync kernel; the approximate one on the Hopper kernel, which refuses
    the accurate one next to a mask's per-key table reads (they spill: test_prefill_sm90 checks the refusal)."""
    return ib.variants.softcap(10.0, approx=backend == "sm90")


PAGED = [("NHD", 16, 16, 64), ("HND", 16, 16, 64), ("NHD", 1, 64, 64), ("HND", 5, 4, 4), ("NHD", 64, 5, 7)]


@gpu
@BACKENDS
@pytest.mark.parametrize("layout,page,R,C", PAGED, ids=[f"{lt}-p{p}-R{R}-C{C}" for lt, p, R, C in PAGED])
def test_gpu_paged_cache(gen, layout, page, R, C, backend):
    run(gen, 300, 700, 16, 4, 128, R, C, 0.4, causal=True, paged=layout, page_size=page, backend=backend)
    run(gen, 128, 128, 8, 8, 64, R, C, 0.6, paged=layout, page_size=page, variant=_softcap(backend), backend=backend)


@gpu
@BACKENDS
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_long_sequence_and_variants(gen, causal, backend):
    run(gen, 8192, 8192, 8, 2, 128, 64, 64, 0.05, causal=causal, backend=backend)
    run(gen, 512, 1024, 8, 2, 128, 64, 64, 0.3, causal=causal, variant=_softcap(backend), backend=backend)
    run(gen, 512, 1024, 8, 2, 128, 16, 64, 0.5, causal=causal, variant=ib.variants.sliding_window(100),
        backend=backend)
