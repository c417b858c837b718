"""infernb.ops.merge_state / merge_states: the CUDA kernel (GPU) and the CPU path against the reference."""
import math

import pytest
import torch

import infernb
from infernb import InputError, reference
from infernb.testing import assert_close, poison_

DTYPES = [torch.float16, torch.bfloat16, torch.float32]


def states(gen, n, k, h, d, dtype, device, empty_rows=True):
    """Partial results as a real split produces them: random values and LSEs, some parts and rows empty."""
    v = torch.randn(n, k, h, d, generator=gen).to(dtype)
    s = torch.randn(n, k, h, generator=gen) * 4
    if empty_rows and n > 2 and k > 0:
        s[0, 0] = -math.inf                    # one empty part
        s[1] = -math.inf                       # a row that saw no key at all
    return v.to(device), s.to(device)


def check_merge_states(v, s, out_v, out_s):
    ref_v, ref_s = reference.merge_states(v.cpu(), s.cpu())
    assert out_v.dtype == v.dtype and out_s.dtype == torch.float32
    assert_close(out_v.cpu(), ref_v, v.dtype, name="merged v", rowwise=True)
    assert_close(out_s.cpu(), ref_s, torch.float32, name="merged lse", rowwise=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_path_matches_reference(gen, dtype):
    v, s = states(gen, 5, 3, 2, 64, dtype, "cpu")
    check_merge_states(v, s, *infernb.merge_states(v, s))
    va, vb = v[:, 0], v[:, 1]
    sa, sb = s[:, 0], s[:, 1]
    ov, os_ = infernb.merge_state(va, sa, vb, sb)
    rv, rs = reference.merge_state(va, sa, vb, sb)
    assert_close(ov, rv, dtype)
    assert_close(os_, rs, torch.float32)


def test_invalid_lse_gives_nan_rows_cpu(gen):
    v, s = states(gen, 3, 2, 1, 64, torch.float32, "cpu", empty_rows=False)
    s[0, 0, 0] = float("nan")
    s[1, 1, 0] = float("inf")
    ov, os_ = infernb.merge_states(v, s)
    assert torch.isnan(ov[:2]).all() and torch.isnan(os_[:2]).all() and torch.isfinite(ov[2]).all()


def test_input_errors(gen):
    v, s = states(gen, 4, 2, 3, 64, torch.bfloat16, "cpu")
    with pytest.raises(InputError, match="s: expected dtype"):
        infernb.merge_states(v, s.double())
    with pytest.raises(InputError, match=r"s: expected shape \[4, 2, 3\]"):
        infernb.merge_states(v, s[:, :1])
    with pytest.raises(InputError, match="v: expected dtype"):
        infernb.merge_states(v.to(torch.int32), s)
    with pytest.raises(InputError, match="v_b: expected dtype"):
        infernb.merge_state(v[:, 0], s[:, 0], v[:, 1].half(), s[:, 1])
    with pytest.raises(InputError, match="v_b: expected shape"):
        infernb.merge_state(v[:, 0], s[:, 0], v[:2, 1], s[:, 1])
    with pytest.raises(InputError, match="out\\[0\\]"):
        infernb.merge_states(v, s, out=(torch.empty(4, 3, 64), torch.empty(4, 3)))
    va, sa = v[:, 0].contiguous(), s[:, 0].contiguous()
    with pytest.raises(InputError, match="v_out overlaps input v_a"):
        infernb.merge_state(va, sa, v[:, 1].contiguous(), s[:, 1].contiguous(), out=(va, torch.empty_like(sa)))


def gather_case(gen, n, m, depth, h, d, dtype, device):
    """Own states of n rows, m other states, an index whose rows pick 0 .. depth of them (-1: none); and the
    expected merge, each row's states stacked explicitly (a loop, not merge_gather's own vectorized gather)."""
    v0, s0 = (x[:, 0] for x in states(gen, n, 1, h, d, dtype, "cpu", empty_rows=False))
    v1, s1 = (x[:, 0] for x in states(gen, m, 1, h, d, dtype, "cpu", empty_rows=False))
    s0[1] = -math.inf                                    # a row whose own part is empty
    s1[0, 0] = -math.inf
    idx = torch.randint(-1, m, (n, depth), generator=gen, dtype=torch.int32)
    if n > 2:
        idx[2] = -1                                      # a row with nothing gathered
    exp_v, exp_s = [], []
    for r in range(n):
        js = [int(j) for j in idx[r] if j >= 0]
        vv = torch.stack([v0[r]] + [v1[j] for j in js])[None]
        ss = torch.stack([s0[r]] + [s1[j] for j in js])[None]
        rv, rs = reference.merge_states(vv, ss)
        exp_v.append(rv[0])
        exp_s.append(rs[0])
    dev = lambda t: t.to(device)  # noqa: E731
    return (dev(v0), dev(s0), dev(v1), dev(s1), dev(idx)), torch.stack(exp_v), torch.stack(exp_s)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("depth", [0, 1, 3])
def test_cpu_merge_gather(gen, dtype, depth):
    args, ev, es = gather_case(gen, 9, 5, depth, 2, 64, dtype, "cpu")
    ov, os_ = infernb.ops.merge_gather(*args)
    assert_close(ov, ev.to(dtype), dtype, name="v", rowwise=True)
    assert_close(os_, es, torch.float32, name="lse", rowwise=True)
    if depth == 0:                                           # row 1: its own part empty, nothing gathered
        assert torch.isneginf(os_[1]).all() and (ov[1] == 0).all()


def test_cpu_merge_gather_with_nothing_to_gather(gen):
    (v0, s0, _, _, _), _, _ = gather_case(gen, 4, 3, 2, 2, 64, torch.bfloat16, "cpu")
    empty_v, empty_s = v0[:0], s0[:0]
    ov, os_ = infernb.ops.merge_gather(v0, s0, empty_v, empty_s, torch.full((4, 2), -1, dtype=torch.int32))
    fin = torch.isfinite(s0)                              # (row 1's own part is empty: 0 and -inf)
    assert torch.equal(ov[fin], v0[fin]) and (ov[~fin] == 0).all() and torch.equal(os_[fin], s0[fin])
    assert torch.isneginf(os_[~fin]).all()


def test_merge_gather_input_errors(gen):
    (v0, s0, v1, s1, idx), _, _ = gather_case(gen, 4, 3, 2, 2, 64, torch.bfloat16, "cpu")
    with pytest.raises(InputError, match="index: expected rows of v1"):
        infernb.ops.merge_gather(v0, s0, v1, s1, idx + 5)
    with pytest.raises(InputError, match="index: expected dtype"):
        infernb.ops.merge_gather(v0, s0, v1, s1, idx.long())
    with pytest.raises(InputError, match="v1: expected shape"):
        infernb.ops.merge_gather(v0, s0, v1[:, :1].contiguous(), s1, idx)
    with pytest.raises(InputError, match="index: expected shape"):
        infernb.ops.merge_gather(v0, s0, v1, s1, idx[:2])


# ---------------------------------------------------------------- GPU: the compiled kernels
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("num_states", [0, 1, 2, 3, 5, 8, 13])
def test_gpu_merge_states(gen, dtype, head_dim, num_states):
    # 37 x 3 = 111 rows: not a multiple of any rows-per-CTA (2..16), so the last CTA is partial
    v, s = states(gen, 37, num_states, 3, head_dim, dtype, "cuda")
    out = (poison_(torch.empty(37, 3, head_dim, dtype=dtype, device="cuda")),
           poison_(torch.empty(37, 3, device="cuda")))
    ov, os_ = infernb.merge_states(v, s, out=out)
    torch.cuda.synchronize()
    assert ov.data_ptr() == out[0].data_ptr()
    check_merge_states(v, s, ov, os_)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_gpu_merge_state_two_way(gen, dtype, head_dim):
    v, s = states(gen, 301, 2, 31, head_dim, dtype, "cuda")                 # 9331 rows: partial last CTA
    va, vb, sa, sb = v[:, 0].contiguous(), v[:, 1].contiguous(), s[:, 0].contiguous(), s[:, 1].contiguous()
    out = (poison_(torch.empty_like(va)), poison_(torch.empty_like(sa)))
    ov, os_ = infernb.merge_state(va, sa, vb, sb, out=out)
    torch.cuda.synchronize()
    check_merge_states(v, s, ov, os_)
    assert not torch.isnan(ov).any()


@pytest.mark.gpu
def test_gpu_split_attention_merge_equals_whole(gen):
    """End to end: attention over two halves of the keys (reference, then cast to bf16), merged on the GPU."""
    q = torch.randn(64, 32, 128, generator=gen)
    k = torch.randn(1000, 8, 128, generator=gen)
    v = torch.randn(1000, 8, 128, generator=gen)
    whole, whole_lse = reference.attention(q, k, v)
    a = reference.attention(q, k[:613], v[:613])
    b = reference.attention(q, k[613:], v[613:])
    ov, os_ = infernb.merge_state(a[0].bfloat16().cuda(), a[1].float().cuda(), b[0].bfloat16().cuda(),
                                  b[1].float().cuda())
    assert_close(ov.cpu(), whole, torch.bfloat16)
    assert_close(os_.cpu(), whole_lse, torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_offset_views_and_invalid_lse(gen, dtype):
    """Inputs that are views at an odd element offset (not 16-byte aligned) still give the right answer, and
    NaN / +inf LSEs give NaN rows like the reference."""
    n, k, h, d = 9, 3, 5, 128
    buf = torch.randn(n * k * h * d + 1, generator=gen).to(dtype).cuda()
    v = buf[1:].view(n, k, h, d)
    assert v.data_ptr() % 16 != 0
    s = (torch.randn(n, k, h, generator=gen) * 3).cuda()
    s[0, 0, 0] = float("nan")
    s[1, 2, 4] = float("inf")
    ov, os_ = infernb.merge_states(v, s)
    torch.cuda.synchronize()
    check_merge_states(v[2:], s[2:], ov[2:], os_[2:])         # rows 0 and 1 hold the invalid LSEs
    assert torch.isnan(ov[0, 0]).all() and torch.isnan(os_[1, 4]) and torch.isfinite(os_[1, :4]).all()
    va, vb = buf[1:1 + n * h * d].view(n, h, d), buf[1 + n * h * d:1 + 2 * n * h * d].view(n, h, d)
    sa, sb = s[:, 0].contiguous(), s[:, 1].contiguous()
    ov, os_ = infernb.merge_state(va, sa, vb, sb)
    rv, rs = reference.merge_state(va.cpu(), sa.cpu(), vb.cpu(), sb.cpu())
    assert torch.isnan(ov[0, 0]).all() and torch.isnan(rv[0, 0]).all()      # s_a[0, 0] is NaN
    assert_close(ov[1:].cpu(), rv[1:], dtype, rowwise=True)
    assert_close(os_[1:].cpu(), rs[1:], torch.float32, rowwise=True)
    with pytest.raises(InputError, match="16-byte aligned"):
        infernb.merge_state(va, sa, vb, sb, out=(buf[1:1 + n * h * d].view(n, h, d), torch.empty_like(sa)))


@pytest.mark.gpu
def test_gpu_launch_is_captured_by_cuda_graph(gen):
    """A launch on any stream other than torch's current one would break (or escape) graph capture."""
    v, s = states(gen, 64, 4, 8, 128, torch.bfloat16, "cuda", empty_rows=False)
    out = (torch.empty(64, 8, 128, dtype=torch.bfloat16, device="cuda"), torch.empty(64, 8, device="cuda"))
    infernb.merge_states(v, s, out=out)                      # compile + load outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        infernb.merge_states(v, s, out=out)
    v2, s2 = states(gen, 64, 4, 8, 128, torch.bfloat16, "cuda", empty_rows=False)
    v.copy_(v2)
    s.copy_(s2)
    poison_(out[0])
    poison_(out[1])
    graph.replay()
    torch.cuda.synchronize()
    check_merge_states(v, s, *out)


@pytest.mark.gpu
def test_gpu_runs_on_torch_current_stream(gen):
    v, s = states(gen, 4096, 4, 32, 128, torch.bfloat16, "cuda", empty_rows=False)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        out = infernb.merge_states(v, s)
        result = out[0].float().sum()   # ordered after the kernel on the same stream
    stream.synchronize()
    ref_v, _ = reference.merge_states(v.cpu(), s.cpu())
    assert math.isclose(float(result), float(ref_v.sum()), rel_tol=1e-2, abs_tol=1.0)


@pytest.mark.gpu
def test_gpu_empty_and_unsupported(gen):
    v, s = states(gen, 0, 2, 4, 128, torch.bfloat16, "cuda", empty_rows=False)
    ov, os_ = infernb.merge_states(v, s)
    assert ov.shape == (0, 4, 128) and os_.shape == (0, 4)
    v, s = states(gen, 3, 2, 4, 96, torch.bfloat16, "cuda", empty_rows=False)
    with pytest.raises(InputError, match="head_dim 96 is not supported"):
        infernb.merge_states(v, s)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("depth", [0, 1, 4])
def test_gpu_merge_gather(gen, dtype, head_dim, depth):
    args, ev, es = gather_case(gen, 37, 23, depth, 3, head_dim, dtype, "cuda")     # 111 rows: partial last CTA
    out = (poison_(torch.empty(37, 3, head_dim, dtype=dtype, device="cuda")),
           poison_(torch.empty(37, 3, device="cuda")))
    ov, os_ = infernb.ops.merge_gather(*args, out=out)
    torch.cuda.synchronize()
    assert ov.data_ptr() == out[0].data_ptr()
    assert_close(ov.cpu(), ev.to(dtype), dtype, name="v", rowwise=True)
    assert_close(os_.cpu(), es, torch.float32, name="lse", rowwise=True)
