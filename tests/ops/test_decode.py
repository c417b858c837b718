"""infernb.decode / DecodeRunner: plan -> arrays, input checks and the CPU path (emulator) everywhere; the CUDA
kernel against the float64 reference over the issue's grid on a GPU (outputs poisoned with NaN first)."""
import math

import numpy as np
import pytest
import torch

import infernb as ib
from infernb import InputError
from infernb.ops.paged_decode import DecodeRunner, plan_arrays, smem_bytes
from infernb.testing import assert_close

from .decode_cases import make_cache, random_lens, reference_decode

gpu = pytest.mark.gpu
HEADS = [(32, 32), (32, 8), (32, 4), (8, 1)]


def run_checked(q, cache, ids, *, variant=None, rope=None, num_sms=None, strategy="balanced", window_left=-1,
                merge_gain=0.05, ctas_per_sm=None):
    """Plan, poison the outputs, run, compare with the reference; return the plan."""
    lens = cache.lengths(ids)
    table = cache.page_table(ids)
    p = ib.plan([1] * len(ids), lens, num_qo_heads=q.shape[1], num_kv_heads=cache.num_kv_heads,
                head_dim=cache.head_dim, page_size=cache.page_size, dtype=ib.jit.types.DTYPE_NAMES[q.dtype],
                num_sms=num_sms, strategy=strategy, window_left=window_left, merge_gain=merge_gain,
                ctas_per_sm=ctas_per_sm)
    runner = DecodeRunner(p, cache, table, variant=variant, rope=rope)
    out = torch.full_like(q, float("nan"))
    lse = torch.full(q.shape[:2], float("nan"), dtype=torch.float32, device=q.device)
    o, s = runner(q, cache, out=out, lse=lse)
    assert o is out and s is lse
    ref_o, ref_s = reference_decode(q, cache, ids, variant=variant, rope=rope, window_left=window_left)
    assert o.dtype == q.dtype and s.dtype == torch.float32
    ref_o, ref_s = ref_o.cpu(), ref_s.cpu()
    assert_close(o.float().cpu(), ref_o, q.dtype, name="out", rowwise=True)
    fin = torch.isfinite(ref_s)
    assert torch.equal(torch.isfinite(s.cpu()), fin), "LSE: empty rows must be -inf exactly where the reference's are"
    assert_close(s.cpu()[fin], ref_s[fin], q.dtype, name="lse")
    return p


# ---------------------------------------------------------------------------------------------- CPU
def test_cpu_decode_matches_reference(gen):
    cache, ids, q = make_cache(gen, [1, 15, 16, 17, 300], 8, 2, 64, 16)
    p = run_checked(q, cache, ids, num_sms=6)
    assert len(p.merge_unit) > 0                       # the split path (and its merge) ran
    out = ib.decode(q, cache, ids)
    assert out.shape == q.shape


@pytest.mark.parametrize("variant", [ib.variants.softcap(20.0), ib.variants.sliding_window(9), None])
def test_cpu_decode_variants_and_rope(gen, variant):
    cache, ids, q = make_cache(gen, [5, 33, 40], 4, 1, 64, 8, layout="HND")
    run_checked(q, cache, ids, variant=variant, rope=ib.RoPE(theta=500.0), num_sms=3,
                window_left=-1 if variant is None else variant.window_left)


def check_decode_call(q, cache, ids, **kw):
    """ib.decode (the front door) against the float64 reference, output and LSE."""
    out, lse = ib.decode(q, cache, ids, return_lse=True, **kw)
    ref_o, ref_s = reference_decode(q, cache, ids, **kw)
    assert_close(out.float().cpu(), ref_o.cpu(), q.dtype, name="out", rowwise=True)
    assert_close(lse.cpu(), ref_s.cpu(), q.dtype, name="lse")


def test_cpu_mqa_groups_above_16_run_on_the_prefill_kernel(gen):
    # 32 query heads on one KV head: the decode kernel holds 16, so ib.decode runs an append of one token per
    # sequence on the tensor-core prefill kernel (here its emulator); the decode runner itself still refuses
    cache, ids, q = make_cache(gen, [5, 70, 200], 32, 1, 64, 16)
    check_decode_call(q, cache, ids)
    check_decode_call(q, cache, ids, rope=ib.RoPE(theta=500.0))
    p = ib.plan([1] * 3, cache.lengths(ids), num_qo_heads=32, num_kv_heads=1, head_dim=64, page_size=16)
    with pytest.raises(InputError, match="GQA group 32 > 16"):
        DecodeRunner(p, cache, cache.page_table(ids))(q, cache)


def test_cpu_runner_takes_a_bare_pool_or_another_cache_at_call_time(gen):
    """A runner called with a pool tensor (not a PagedKVCache) of the planned shape attends over that pool; a cache
    of the other layout is refused (a bare tensor's ``.layout`` is torch's, never compared with NHD/HND)."""
    cache, ids, q = make_cache(gen, [40, 300], 8, 2, 64, 16)
    table = cache.page_table(ids)
    p = ib.plan([1, 1], [40, 300], num_qo_heads=8, num_kv_heads=2, head_dim=64, num_sms=4)
    r = DecodeRunner(p, cache, table)
    pool2 = torch.randn(cache.pool.shape, generator=gen).to(cache.pool.dtype)
    o, s = r(q, pool2)
    ref_o, ref_s = ib.reference.paged_attention(q, pool2, table.indptr, table.indices, table.last_page_len)
    assert_close(o.double(), ref_o, q.dtype, rowwise=True)
    assert_close(s.double(), ref_s, q.dtype, name="lse")
    square, ids2, q2 = make_cache(gen, [40, 300], 8, 2, 64, 2)     # page size = KV heads: both layouts' shape
    r2 = DecodeRunner(ib.plan([1, 1], [40, 300], num_qo_heads=8, num_kv_heads=2, head_dim=64, page_size=2, num_sms=4),
                      square, square.page_table(ids2))
    with pytest.raises(InputError, match="layout HND"):
        r2(q2, square.to_layout("HND"))


def test_cta_records_hold_each_ctas_range_and_first_item(gen):
    """The kernel's per-CTA record: item range and a copy of the first item (zeros for a CTA without items)."""
    from infernb.ops.paged_decode import cta_records

    lens = [0, 1, 15, 20]
    p = ib.plan([1] * len(lens), lens, num_qo_heads=8, num_kv_heads=2, head_dim=64, num_sms=40)
    a = plan_arrays(p)
    rec = cta_records(a["items"], a["cta_indptr"])
    assert rec.shape == (p.num_ctas,) and rec.dtype.itemsize == 64
    assert (rec["item_begin"] == a["cta_indptr"][:-1]).all() and (rec["item_end"] == a["cta_indptr"][1:]).all()
    has = rec["item_end"] > rec["item_begin"]
    assert has.any() and not has.all()                  # more CTAs than items: some have none
    assert (rec["first"][has] == a["items"][rec["item_begin"][has]]).all()
    assert (rec[~has].view(np.int32).reshape(-1, 16)[:, 2:] == 0).all()


def test_plan_arrays_describe_every_item(gen):
    lens = [1, 15, 16, 17, 1000, 300, 2]
    p = ib.plan([1] * 7, lens, num_qo_heads=32, num_kv_heads=8, head_dim=128, num_sms=20)
    a = plan_arrays(p)
    items, ind = a["items"], a["cta_indptr"]
    assert items.shape == (p.num_items,) and items.dtype.itemsize == 48
    assert all(items.dtype.fields[n][0] == np.int32 for n in items.dtype.names)
    assert ind[0] == 0 and ind[-1] == p.num_items and (np.diff(ind) >= 0).all()
    for c in range(p.num_ctas):                         # CTA c runs exactly its items
        assert (p.item_cta[ind[c]:ind[c + 1]] == c).all()
    covered = {}
    for it in items:
        b, h, s, e, tok, kvl = (int(it[n]) for n in ("b", "kv_head", "pos_start", "pos_end", "q_token", "kv_len"))
        slot, m, s0, s1 = (int(it[n]) for n in ("slot", "merge_unit", "slot_begin", "slot_end"))
        assert tok == b and kvl == lens[b] and 0 <= s <= e <= lens[b]
        covered.setdefault((b, h), []).append((s, e))
        if slot >= 0:                                   # its unit's slots, and the unit's index among split units
            assert s0 <= slot < s1 and p.merge_unit[m] == b * 8 + h and s1 - s0 >= 2
        else:
            assert m == -1
    for (b, h), parts in covered.items():              # each (request, head) covered once, in order
        parts.sort()
        assert parts[0][0] == 0 and parts[-1][1] == lens[b]
        assert all(x[1] == y[0] for x, y in zip(parts, parts[1:]))
    assert smem_bytes(128, 4) < 227 * 1024


def test_window_plans_read_only_the_window(gen):
    v = ib.variants.sliding_window(100)
    assert v.window_left == 100
    assert ib.variants.combine(ib.variants.softcap(30.0), v).window_left == 100
    assert ib.variants.or_masks(v, ib.variants.prefix_lm(4)).window_left == -1
    p = ib.plan([1, 1], [5000, 50], num_qo_heads=8, num_kv_heads=2, head_dim=64, window_left=v.window_left,
                num_sms=8)
    assert int((p.item_kv_end - p.item_kv_start).sum()) == 2 * (101 + 50)


def test_decode_input_errors(gen):
    cache, ids, q = make_cache(gen, [20, 7], 8, 2, 64, 16)
    table = cache.page_table(ids)
    p = ib.plan([1, 1], [20, 7], num_qo_heads=8, num_kv_heads=2, head_dim=64, num_sms=4)
    r = DecodeRunner(p, cache, table)
    with pytest.raises(InputError, match="q: expected shape"):
        r(q[:1], cache)
    with pytest.raises(InputError, match="q: expected dtype"):
        r(q.half(), cache)
    with pytest.raises(InputError, match="out"):
        r(q, cache, out=torch.empty(q.shape, dtype=torch.float16))
    with pytest.raises(InputError, match="lse"):
        r(q, cache, lse=torch.empty(q.shape[0], q.shape[1] + 1))
    other, _, _ = make_cache(gen, [20, 7], 8, 2, 64, 16, spare_pages=9)
    with pytest.raises(InputError, match="page pool of shape"):
        r(q, other)                                   # a cache of another size than the runner's
    bad = ib.PageTable(table.indptr, table.indices + 1000, table.last_page_len, 16)
    with pytest.raises(InputError, match="outside the pool"):
        DecodeRunner(p, cache, bad)
    with pytest.raises(InputError, match="head_dim"):
        DecodeRunner(ib.plan([1, 1], [20, 7], num_qo_heads=8, num_kv_heads=2, head_dim=128), cache, table)
    with pytest.raises(InputError, match="num_kv_heads"):
        DecodeRunner(ib.plan([1, 1], [20, 7], num_qo_heads=8, num_kv_heads=4, head_dim=64), cache, table)
    with pytest.raises(InputError, match="does not match the plan"):
        DecodeRunner(ib.plan([1, 1], [20, 8], num_qo_heads=8, num_kv_heads=2, head_dim=64), cache, table)
    with pytest.raises(InputError, match="decode plans"):
        DecodeRunner(ib.plan([2, 1], [20, 7], num_qo_heads=8, num_kv_heads=2, head_dim=64), cache, table)
    with pytest.raises(InputError, match="sigmoid"):
        DecodeRunner(ib.plan([1, 1], [2000, 7], num_qo_heads=8, num_kv_heads=2, head_dim=64, num_sms=8),
                     cache, table, variant=ib.variants.sigmoid_attention())
    with pytest.raises(InputError, match="group"):
        ib.ops.paged_decode.check_decode_plan(ib.plan([1], [4], num_qo_heads=64, num_kv_heads=2, head_dim=64))
    cache.free([ids[1]])
    with pytest.raises(InputError):
        ib.decode(q, cache, ids)                      # a freed sequence id
    with pytest.raises(InputError, match="q: expected"):
        ib.decode(q, cache, ids[:1])


# ---------------------------------------------------------------------------------------------- GPU
@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("heads", HEADS, ids=[f"{a}x{b}" for a, b in HEADS])
def test_decode_grid(gen, heads, head_dim, layout, dtype):
    """Batch of 7 with the edge lengths, a page size per case; split (few CTAs) and unsplit (naive) plans."""
    page = [1, 16, 64][(head_dim // 64 + HEADS.index(heads)) % 3]
    lens = [1, 15, 16, 17, 1000] + random_lens(gen, 2, 8192)
    cache, ids, q = make_cache(gen, lens, *heads, head_dim, page, layout=layout, dtype=dtype, device="cuda")
    p = run_checked(q, cache, ids, num_sms=2 * 7 * heads[1], ctas_per_sm=1)    # more CTAs than units: splits
    assert len(p.merge_unit) > 0
    p = run_checked(q, cache, ids, strategy="naive")
    assert len(p.merge_unit) == 0


@gpu
@pytest.mark.parametrize("batch,hi", [(1, 8192), (64, 8192), (64, 40)])
@pytest.mark.parametrize("page", [1, 16, 64])
def test_decode_batches(gen, batch, hi, page):
    lens = random_lens(gen, batch, hi)
    cache, ids, q = make_cache(gen, lens, 32, 8, 128, page, device="cuda")
    run_checked(q, cache, ids)                         # the default plan for the H100's SMs


def _variants(device):
    slopes = ib.variants.alibi_slopes(32).to(device)
    bias = torch.randn(32, 32, generator=torch.Generator().manual_seed(3)).to(device)

    def custom(score, b, h, q_idx, kv_idx):             # a traced custom variant: a per-head distance penalty
        return score - 0.01 * (h % 4 + 1) * torch.sqrt((q_idx - kv_idx).float() + 1.0)
    return {
        "none": None, "softcap": ib.variants.softcap(30.0), "softcap_runtime": ib.variants.softcap(5.0, runtime=True),
        "alibi": ib.variants.alibi(slopes), "sliding_window": ib.variants.sliding_window(300),
        "t5_bias": ib.variants.relative_position_bias(bias), "custom": ib.Variant("sqrt_distance", score_mod=custom),
        "softcap_window": ib.variants.combine(ib.variants.softcap(20.0), ib.variants.sliding_window(64)),
    }


@gpu
@pytest.mark.parametrize("name", list(_variants("cpu")))
@pytest.mark.parametrize("rope", [None, ib.RoPE(), ib.RoPE(theta=5e5, interleave=True, rotary_dim=64)],
                         ids=["norope", "rope", "rope_interleave_rd64"])
@pytest.mark.parametrize("split", [True, False], ids=["split", "unsplit"])
def test_decode_variants(gen, name, rope, split):
    v = _variants("cuda")[name]
    lens = [1, 17, 1000, 4000] + random_lens(gen, 3, 8192)
    cache, ids, q = make_cache(gen, lens, 32, 8, 128, 16, device="cuda")
    wl = -1 if v is None else v.window_left
    run_checked(q, cache, ids, variant=v, rope=rope, num_sms=16 if split else None,
                strategy="balanced" if split else "naive", window_left=wl)


@gpu
@pytest.mark.parametrize("heads", [(32, 2), (24, 2), (12, 4)], ids=["group16", "group12", "group3"])
@pytest.mark.parametrize("page", [3, 24])
def test_decode_groups_and_odd_pages(gen, heads, page):
    """Groups over 8 (both halves of the mma rows), a non-power-of-two group, non-power-of-two pages, and a
    sequence with no keys at all."""
    cache, ids, q = make_cache(gen, [0, 1, 40, 999, 3000], *heads, 128, page, device="cuda")
    p = run_checked(q, cache, ids, rope=ib.RoPE(), num_sms=12)
    assert len(p.merge_unit) > 0


@gpu
@pytest.mark.parametrize("heads", [(32, 1), (64, 1), (128, 1), (64, 2)], ids=["mqa32", "mqa64", "mqa128", "g32x2"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_decode_mqa_groups(gen, heads, head_dim):
    # groups above 16 run on the tensor-core prefill kernel (ib.decode routes them); long and short sequences, RoPE
    cache, ids, q = make_cache(gen, [8192, 1, 300, 4097], heads[0], heads[1], head_dim, 16, device="cuda")
    check_decode_call(q, cache, ids)
    check_decode_call(q, cache, ids, rope=ib.RoPE())


@gpu
def test_decode_empty_plan(gen):
    cache, ids, q = make_cache(gen, [5, 9], 8, 2, 64, 16, device="cuda")
    p = ib.plan([0, 0], [5, 9], num_qo_heads=8, num_kv_heads=2, head_dim=64)
    o, s = DecodeRunner(p, cache, cache.page_table(ids))(q[:0], cache)
    assert o.shape == (0, 8, 64) and s.shape == (0, 8)


@gpu
def test_decode_sigmoid_unsplit(gen):
    cache, ids, q = make_cache(gen, [1, 300, 2000], 32, 8, 64, 16, device="cuda")
    run_checked(q, cache, ids, variant=ib.variants.sigmoid_attention(-2.0), merge_gain=math.inf)


@gpu
def test_decode_one_call_and_run(gen):
    cache, ids, q = make_cache(gen, [50, 3000], 32, 8, 128, 16, device="cuda")
    out, lse = ib.decode(q, cache, ids, return_lse=True, rope=ib.RoPE())
    ref_o, ref_s = reference_decode(q, cache, ids, rope=ib.RoPE())
    assert_close(out.float().cpu(), ref_o.cpu(), q.dtype, rowwise=True)
    p = ib.plan([1, 1], cache.lengths(ids), num_qo_heads=32, num_kv_heads=8, head_dim=128)
    o2, _ = ib.run(p, q, cache, page_table=cache.page_table(ids))
    assert_close(o2.float().cpu(), reference_decode(q, cache, ids)[0].cpu(), q.dtype, rowwise=True)


@gpu
def test_decode_gpu_input_errors(gen):
    cache, ids, q = make_cache(gen, [50, 30], 8, 2, 64, 16, device="cuda")
    p = ib.plan([1, 1], [50, 30], num_qo_heads=8, num_kv_heads=2, head_dim=64)
    r = DecodeRunner(p, cache, cache.page_table(ids))
    with pytest.raises(InputError, match="is on"):
        r(q.cpu(), cache)
    with pytest.raises(InputError, match="contiguous"):
        r(torch.empty(2, 64, 8, dtype=q.dtype, device="cuda").transpose(1, 2), cache)
    with pytest.raises(InputError, match="tensor captured"):
        DecodeRunner(p, cache, cache.page_table(ids), variant=ib.variants.alibi(8))   # slopes on the CPU


def test_planner_plans_for_the_kernels_occupancy():
    from infernb.ops.paged_decode import CONFIG, decode_ctas_per_sm
    from infernb.plan.planner import DECODE_CTAS_PER_SM

    assert DECODE_CTAS_PER_SM == {d: c for d, (_, c) in CONFIG.items()}
    p = ib.plan([1, 1], [100, 200], num_qo_heads=8, num_kv_heads=2, head_dim=128, num_sms=10)
    hopper = ib.device_info().arch.startswith("sm_90")
    assert p.num_ctas == 10 * (decode_ctas_per_sm(128) if hopper else min(2, decode_ctas_per_sm(128)))
    assert ib.plan([4], [100], num_qo_heads=8, num_kv_heads=2, head_dim=128, num_sms=10).num_ctas == 10   # prefill


def _swizzle(row, chunk, ch):
    """mma::swizzle (kernels/include/infernb/mma.cuh): 16-byte chunk offset in a [rows][ch chunks] tile."""
    return row * ch + (chunk ^ (row & 7))


@pytest.mark.parametrize("ch", [8, 16, 32], ids=["d64", "d128", "d256"])
def test_kernel_address_identities(ch):
    """The decode kernel's shortcuts equal the plain swizzled addresses (a mirror of its integer arithmetic):
    ldmatrix rows as a per-lane base XOR 32 kk (mma::kstep_addr, tile bases multiples of the row pitch), and the
    producer's copies: lane -> (column, rows), source lane (lane & (RPI - 1)) | RPI k, destination offset."""
    pitch = ch * 16
    for base in (0, pitch, 7 * pitch, 64 * pitch):           # stage / Q-buffer bases: multiples of the row pitch
        for row in range(64):
            for b in (0, 1):
                lane_base = base + _swizzle(row, b, ch) * 16
                for kk in range(ch // 2):
                    assert base + _swizzle(row, 2 * kk + b, ch) * 16 == lane_base ^ (32 * kk)
    rpi = 32 // ch
    for w_row0 in (0, 16, 32, 48):
        covered = set()
        for lane in range(32):
            cp_ch, cp_r0 = lane // rpi, lane % rpi
            cp_row0, cp_x = (w_row0 + cp_r0) * ch * 16, (cp_ch ^ cp_r0) * 16
            for k in range(ch // 2):
                r = cp_r0 + rpi * k
                assert ((lane & (rpi - 1)) | (rpi * k)) == r                      # shfl_rows' source lane
                dst = cp_row0 + rpi * k * ch * 16 + (cp_x ^ (((rpi * k) & 7) * 16))
                assert dst == _swizzle(w_row0 + r, cp_ch, ch) * 16
                covered.add((r, cp_ch))
        assert covered == {(r, c) for r in range(16) for c in range(ch)}      # every row and chunk, once


def test_shared_memory_keeps_the_planned_occupancy():
    """CONFIG's CTAs per SM fit Hopper's 228 KB per SM (1 KB reserved per CTA) with and without the RoPE
    tables, and the trace build of the diagnostic (benchmarks/diag/decode_ab.py) compiles without spills."""
    from infernb.jit import build
    from infernb.ops.paged_decode import CONFIG, decode_spec

    for d, (stages, ctas) in CONFIG.items():
        for rope in (0, 1, 2):
            assert ctas * (smem_bytes(d, 16, stages, rope) + 1024) <= 228 * 1024, (d, rope)
    k = build(decode_spec(torch.bfloat16, 128, 4), arch="sm_90a", extra_options=("-DINFERNB_DECODE_TRACE=4096",))
    assert not k.report.spills


def test_bandwidth_chart_of_the_committed_run():
    run = ib.profile.committed_results("decode")
    assert run is not None and run["rows"], "benchmarks/results/decode_*.json is committed"
    fig = ib.viz.bandwidth_bars(run["rows"], run["copy_TBps"], subtitle=run["device"])
    names = {t.name for t in fig.data}
    assert "infernb" in names and len(fig.data[0].x) == len(run["rows"])
    assert any((t.name or "").startswith("copy ceiling") for t in fig.data)    # named in the legend
    marks = {t.name: t for t in fig.data if t.name.startswith(("streaming read", "device copy"))}
    assert len(marks) == 2                              # the committed run measured both references
    for t in marks.values():
        assert len(t.y) == len(run["rows"]) and all(0 < y < 2 * run["copy_TBps"] for y in t.y)


@gpu
@pytest.mark.parametrize("interleave", [False, True])
@pytest.mark.parametrize("rotary_dim", [16, 24, 48, 64, 128])
def test_decode_rope_rotary_dims(gen, interleave, rotary_dim):
    """Both K-rotation paths: a lane per vector of 4 pairs walking rows (rotary_dim / 8 divides 32) and the
    element-wise fallback (24 and 48: 3 or 6 vectors)."""
    cache, ids, q = make_cache(gen, [1, 17, 300, 2500], 16, 4, 128, 16, device="cuda")
    run_checked(q, cache, ids, rope=ib.RoPE(theta=5e5, interleave=interleave, rotary_dim=rotary_dim), num_sms=8)


@gpu
@pytest.mark.parametrize("interleave", [False, True])
@pytest.mark.parametrize("head_dim,rotary_dim", [(64, 32), (64, 64), (256, 128), (256, 256)])
def test_decode_rope_head_dims(gen, head_dim, rotary_dim, interleave):
    """RoPE tables and angle walks at head dims 64 (4 stages, 8 lane groups) and 256 (one group of 16 rows at
    rotary_dim 256)."""
    cache, ids, q = make_cache(gen, [1, 17, 300, 2500], 16, 4, head_dim, 16, device="cuda")
    run_checked(q, cache, ids, rope=ib.RoPE(theta=5e5, interleave=interleave, rotary_dim=rotary_dim), num_sms=8)


@gpu
def test_decode_follows_a_page_table_updated_in_place(gen):
    """A runner reads page ids from its page table at every call: pages moved in the pool and the table rewritten
    in place give the same output, bit for bit (the kernel reads the same values in the same order)."""
    cache, ids, q = make_cache(gen, [40, 3000, 9000], 32, 8, 128, 16, device="cuda")
    table = cache.page_table(ids)
    p = ib.plan([1] * 3, cache.lengths(ids), num_qo_heads=32, num_kv_heads=8, head_dim=128, num_sms=16)
    r = DecodeRunner(p, cache, table)
    o1, s1 = (t.clone() for t in r(q))
    perm = torch.randperm(cache.pool.shape[0], generator=gen).cuda()
    pool2 = torch.empty_like(cache.pool)
    pool2[perm] = cache.pool                            # physical page x moves to perm[x]
    table.indices.copy_(perm[table.indices.long()].int())
    o2, s2 = r(q, pool2)
    assert torch.equal(o2, o1) and torch.equal(s2, s1)


@gpu
def test_decode_runner_reuse_other_cache_and_cuda_graph(gen):
    """One runner, many calls: the split units' counters reset (a second call merges again), another pool of the
    same shape at call time, and a CUDA-graph replay equal to the eager call (the kernel is deterministic)."""
    cache, ids, q = make_cache(gen, [40, 3000, 9000], 32, 8, 128, 16, device="cuda")
    table = cache.page_table(ids)
    p = ib.plan([1] * 3, cache.lengths(ids), num_qo_heads=32, num_kv_heads=8, head_dim=128, num_sms=16)
    assert len(p.merge_unit) > 0
    r = DecodeRunner(p, cache, table)
    o1, s1 = (t.clone() for t in r(q))
    o2, s2 = r(q, out=torch.full_like(q, float("nan")),
               lse=torch.full(q.shape[:2], float("nan"), dtype=torch.float32, device="cuda"))
    assert torch.equal(o1, o2) and torch.equal(s1, s2)
    assert_close(o1.float().cpu(), reference_decode(q, cache, ids)[0].cpu(), q.dtype, rowwise=True)
    pool2 = torch.randn(cache.pool.shape, generator=gen).to(cache.pool.dtype).cuda()
    o3, _ = r(q, pool2)
    ref3 = ib.reference.paged_attention(q, pool2, table.indptr, table.indices, table.last_page_len)[0]
    assert_close(o3.float().cpu(), ref3.cpu(), q.dtype, rowwise=True)
    out = torch.full_like(q, float("nan"))
    lse = torch.full(q.shape[:2], float("nan"), dtype=torch.float32, device="cuda")
    st = torch.cuda.Stream()
    st.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(st):
        r(q, out=out, lse=lse)                       # warm-up on the capture stream
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=st):
        r(q, out=out, lse=lse)
    out.fill_(float("nan"))
    g.replay()
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, o1) and torch.equal(lse, s1)


def test_kernel_item_arrays_compute_the_reference(gen):
    """The CPU twin of the kernel's contract: run the runner's item list (in the kernel's order, pages through the
    page table, partial slots, merge by the last item of each split unit) with the reference math."""
    from infernb.reference import attend, merge_states

    lens = [0, 1, 15, 16, 17, 300, 1000]
    cache, ids, q = make_cache(gen, lens, 8, 2, 64, 16)
    table = cache.page_table(ids)
    p = ib.plan([1] * len(lens), lens, num_qo_heads=8, num_kv_heads=2, head_dim=64, num_sms=6)
    items = plan_arrays(p)["items"].copy()
    items["page_begin"] = table.indptr.numpy()[items["b"]]
    ind = plan_arrays(p)["cta_indptr"]
    pool = cache.pool.double()
    g = p.group
    out = torch.full((len(lens), 8, 64), float("nan"), dtype=torch.float64)
    lse = torch.full((len(lens), 8), float("nan"), dtype=torch.float64)
    part_o, part_s = {}, {}
    count = np.zeros(max(len(p.merge_unit), 1), np.int64)
    for c in range(p.num_ctas):                         # CTAs one after the other, items in the kernel's order
        for it in items[ind[c]:ind[c + 1]]:
            b, h, s, e, tok, kvl = (int(it[n]) for n in ("b", "kv_head", "pos_start", "pos_end", "q_token", "kv_len"))
            slot, page_begin = int(it["slot"]), int(it["page_begin"])
            m, s0, s1 = int(it["merge_unit"]), int(it["slot_begin"]), int(it["slot_end"])
            pos = torch.arange(s, e)
            pages = table.indices[page_begin + pos // 16].long()
            k = pool[pages, 0, pos % 16, h]                # [keys, d]
            v = pool[pages, 1, pos % 16, h]
            o, l = attend(q[tok:tok + 1, h * g:(h + 1) * g].double(), k[:, None].expand(-1, g, -1),
                          v[:, None].expand(-1, g, -1), torch.tensor([kvl - 1]), pos, torch.arange(h * g, (h + 1) * g),
                          b=b, sm_scale=64 ** -0.5)
            if slot < 0:
                out[tok, h * g:(h + 1) * g], lse[tok, h * g:(h + 1) * g] = o[0], l[0]
                continue
            part_o[slot], part_s[slot] = o[0], l[0]
            count[m] += 1
            if count[m] == s1 - s0:                     # the last part of the unit merges all of them
                mo, ml = merge_states(torch.stack([part_o[i] for i in range(s0, s1)])[None],   # [1, n, g, d]
                                      torch.stack([part_s[i] for i in range(s0, s1)])[None])
                out[tok, h * g:(h + 1) * g], lse[tok, h * g:(h + 1) * g] = mo[0], ml[0]
    assert len(p.merge_unit) > 0 and (count[:len(p.merge_unit)] == np.diff(p.merge_indptr)).all()
    ref_o, ref_s = reference_decode(q, cache, ids)
    assert_close(out, ref_o, torch.float64, name="out")
    fin = torch.isfinite(ref_s)
    assert torch.equal(torch.isfinite(lse), fin) and torch.allclose(lse[fin], ref_s[fin])
