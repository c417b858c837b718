"""Variants: tracing, generated CUDA, the reference through the same Python, errors, and the GPU probe."""
import struct

import pytest
import torch

import infernb as ib
from infernb import CompileError, InputError, reference
from infernb import variants as V
from infernb.jit import build
from infernb.testing import assert_close


def ragged(gen, qo, kv, hq=4, hkv=2, d=16):
    q = torch.randn(sum(qo), hq, d, generator=gen, dtype=torch.float64)
    k = torch.randn(sum(kv), hkv, d, generator=gen, dtype=torch.float64)
    v = torch.randn(sum(kv), hkv, d, generator=gen, dtype=torch.float64)
    qp, kp = [0], [0]
    for a, b in zip(qo, kv):
        qp.append(qp[-1] + a)
        kp.append(kp[-1] + b)
    return q, k, v, qp, kp


@pytest.mark.parametrize("variant,builtin", [
    (V.causal(), dict(causal=True)),
    (V.sliding_window(5), dict(causal=True, window_left=5)),
    (V.alibi(torch.tensor([0.5, 0.25, 0.125, 0.0625])), dict(alibi_slopes=torch.tensor([0.5, 0.25, 0.125, 0.0625]))),
    (V.softcap(2.0), dict(logits_soft_cap=2.0)),
    (V.softcap(2.0, runtime=True), dict(logits_soft_cap=2.0)),
    (V.softcap(2.0, approx=True), dict(logits_soft_cap=2.0)),      # exact in Python: approx_tanh is the GPU's
])
def test_builtins_equal_the_reference_options(gen, variant, builtin):
    q, k, v, qp, kp = ragged(gen, [1, 6, 3], [9, 6, 12])
    q = q * 3
    a = reference.attention(q, k, v, qp, kp, **variant.reference_kwargs())
    b = reference.attention(q, k, v, qp, kp, **builtin)
    assert_close(a[0], b[0], tol=1e-12)
    assert_close(a[1], b[1], tol=1e-12)


def test_examples_generate_cuda_structs():
    for v in V.examples():
        code = v.cuda
        assert f"struct {v.cuda_name}" in code and "score_mod" in code and "mask_mod" in code
        # the generated static_assert checks sizeof(params_t) against this at compile time (CI compiles all)
        assert f"== {v.generated.params_size}," in code


def test_params_bytes_pack_mixed_fields():
    t = torch.randn(8, 4)
    v = ib.Variant("mixed", score_mod=lambda s, b, h, q, k, cap, w: s * cap + t[h, k % 4] + w,
                   mask_mod=lambda b, h, q, k, on: (k <= q) | on, params={"cap": 1.5, "w": 7, "on": True},
                   runtime={"cap", "w", "on"})
    raw = v.params_bytes()
    ptr, s0, s1, w, cap, on = struct.unpack("=Qqqqfi", raw[:40])
    assert (ptr, s0, s1) == (t.data_ptr(), 4, 1) and (w, cap, on) == (7, 1.5, 1)
    assert len(raw) == v.generated.params_size == 40


def test_document_prefix_and_combinations_on_the_grid():
    doc = torch.tensor([0, 0, 1, 1, 1, 2])
    s = torch.randn(1, 2, 6, 6)
    _, m = V.document(doc).evaluate(s)
    expect = (doc[:, None] == doc[None, :]) & torch.ones(6, 6).tril().bool()
    assert torch.equal(m[0, 0], expect)
    _, m = V.prefix_lm(3).evaluate(s)
    assert m[0, 0, 0, 2] and not m[0, 0, 3, 4] and m[0, 0, 4, 4]
    _, m = V.and_masks(V.sliding_window(1, causal=False), V.prefix_lm(0)).evaluate(s)  # kv in [q - 1, q]
    assert m[0, 0, 5, 4] and m[0, 0, 5, 5] and not m[0, 0, 5, 3] and not m[0, 0, 2, 4]
    _, m = V.or_masks(V.sliding_window(0), V.document(doc, causal=False)).evaluate(s)  # diagonal or same doc
    assert m[0, 0, 0, 1] and not m[0, 0, 2, 0] and m[0, 0, 5, 5] and not m[0, 0, 5, 4]
    c = V.combine(V.softcap(1.0), V.sliding_window(2))
    sc, m = c.evaluate(s * 10)
    assert sc.abs().max() <= 1.0 and not m[0, 0, 5, 2] and m[0, 0, 5, 3]


def test_t5_bias_buckets():
    table = torch.arange(8 * 32, dtype=torch.float32).reshape(8, 32)
    v = V.relative_position_bias(table)
    sc, _ = v.evaluate(torch.zeros(1, 8, 200, 200))
    # distance 0 -> bucket 0, small distances exact, far ones log-spaced, capped at 31
    assert sc[0, 2, 10, 10] == table[2, 0] and sc[0, 2, 10, 3] == table[2, 7]
    assert sc[0, 2, 199, 0] == table[2, 31]
    assert sc[0, 0, 100, 40] > sc[0, 0, 100, 80]


def test_sigmoid_attention_reference(gen):
    q, k, v, qp, kp = ragged(gen, [2], [5])
    out, _ = reference.attention(q, k, v, qp, kp, **V.sigmoid_attention(-1.0).reference_kwargs())
    s = torch.einsum("lhd,shd->hls", q, k.repeat_interleave(2, 1)) / 4.0 - 1.0
    manual = torch.einsum("hls,shd->lhd", torch.sigmoid(s), v.repeat_interleave(2, 1))
    assert_close(out, manual, tol=1e-12)


def test_runtime_params_do_not_change_the_code_compile_time_ones_do():
    a = V.softcap(30.0, runtime=True)
    b = a.with_params(cap=5.0)
    assert a.cuda == b.cuda and V.probe_spec(a).name == V.probe_spec(b).name
    assert struct.unpack("=f", b.params_bytes()[:4])[0] == 5.0
    assert V.softcap(30.0).cuda != V.softcap(5.0).cuda
    assert build(V.probe_spec(a), "sm_90a").lowered == build(V.probe_spec(b), "sm_90a").lowered


def test_approx_tanh_lowers_to_the_sfu_and_declares_its_bound():
    exact, fast = V.softcap(30.0), V.softcap(30.0, approx=True)
    assert "tanhf(" in exact.cuda and "tanh_approx" not in exact.cuda and exact.generated.approx == {}
    assert "infernb::vx::tanh_approx(" in fast.cuda and "tanhf(" not in fast.cuda
    assert fast.generated.approx == {"tanh_approx": 2.0 ** -10.987} and fast.name == "softcap_30_approx"
    x = torch.linspace(-5, 5, 101)
    assert torch.equal(V.approx_tanh(x), torch.tanh(x))           # on tensors: the exact function


def test_params_bytes_hold_pointers_and_strides():
    table = torch.randn(8, 32)[:, :].t().contiguous().t()           # a non-contiguous view: strides matter
    v = V.relative_position_bias(table)
    raw = v.params_bytes()
    ptr, s0, s1 = struct.unpack("=Qqq", raw[:24])
    assert ptr == table.data_ptr() and (s0, s1) == table.stride()


def test_untraceable_python_fails_with_the_line():
    def branchy(score, b, h, q_idx, kv_idx):
        if q_idx > kv_idx:                     # data-dependent if
            return score
        return score * 2
    with pytest.raises(V.TraceError, match=r"data-dependent Python control flow .*test_variants.py:\d+ +if q_idx > kv_idx"):
        ib.Variant("branchy", score_mod=branchy)

    def unsupported(score, b, h, q_idx, kv_idx):
        return torch.softmax(score, 0)
    with pytest.raises(V.TraceError, match=r"torch.softmax is not supported .*test_variants.py:\d+.*cuda_score_mod"):
        ib.Variant("unsupported", score_mod=unsupported)

    def as_int(b, h, q_idx, kv_idx):
        return kv_idx <= int(q_idx)
    with pytest.raises(V.TraceError, match=r"int\(\) of a traced value .*\.long\(\)"):
        ib.Variant("as_int", mask_mod=as_int)

    t = torch.arange(10.0)

    def sliced(score, b, h, q_idx, kv_idx):
        return score + t[h:h + 2][0]                  # a slice with traced bounds
    with pytest.raises(V.TraceError, match="int\\(\\) of a traced value|slicing"):
        ib.Variant("sliced", score_mod=sliced)

    def whole(score, b, h, q_idx, kv_idx):
        return score + t                              # a captured tensor used without an index
    with pytest.raises(V.TraceError, match="used whole"):
        ib.Variant("whole", score_mod=whole)

    def not_bool(b, h, q_idx, kv_idx):
        return q_idx - kv_idx
    with pytest.raises(V.TraceError, match="mask_mod must return a boolean"):
        ib.Variant("not_bool", mask_mod=not_bool)


def test_definition_errors():
    with pytest.raises(InputError, match="must take 5 arguments"):
        ib.Variant("x", score_mod=lambda s, b: s)
    with pytest.raises(InputError, match="takes `cap` but params has no such entry"):
        ib.Variant("x", score_mod=lambda s, b, h, q, k, cap: s * cap)
    with pytest.raises(InputError, match="runtime: `w` is not one of the params"):
        ib.Variant("x", runtime={"w"})


def test_captured_tensor_on_the_wrong_device():
    v = V.alibi(8)                                                   # slopes on the CPU
    v.check_device("cpu")
    with pytest.raises(InputError, match=r"captured at .* is on cpu, but the kernel runs on cuda"):
        v.check_device("cuda")


def test_raw_cuda_escape_hatch_and_compile_errors_point_at_origin():
    v = ib.Variant("raw_double", score_mod=lambda s, b, h, q, k: s * 2, cuda_score_mod="return score * 2.f;")
    assert "return score * 2.f;" in v.cuda
    build(V.probe_spec(v), "sm_90a")
    bad = ib.Variant("raw_bad", score_mod=lambda s, b, h, q, k: s, cuda_score_mod="return scor * 2.f;")
    with pytest.raises(CompileError, match=r"identifier \"scor\" is undefined[\s\S]*generated from: raw CUDA"):
        build(V.probe_spec(bad), "sm_90a")


def test_block_mask_matches_mask_mod():
    v = V.sliding_window(20)
    bs = v.block_mask(100, 100, (16, 16))
    _, m = v.evaluate(torch.zeros(1, 1, 100, 100))
    assert torch.equal(bs.to_dense(), m[0, 0])
    assert bs.stats()["full_blocks"] > 0 and bs.stats()["partial_blocks"] > 0


# ---------------------------------------------------------------- GPU probe: generated CUDA == Python
def random_compositions(seed, device):
    g = torch.Generator().manual_seed(seed)
    ex = V.examples(device)
    masks = [v for v in ex if v.mask_mod is not None]
    scores = [v for v in ex if v.score_mod is not None and v.softmax]
    out = []
    for i in range(6):
        a = masks[int(torch.randint(len(masks), (1,), generator=g))]
        s = scores[int(torch.randint(len(scores), (1,), generator=g))]
        b = masks[int(torch.randint(len(masks), (1,), generator=g))]
        out.append(V.combine(s, V.or_masks(a, b) if i % 2 else V.and_masks(a, b), name=f"random_{seed}_{i}"))
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("idx", range(len(V.examples())))
def test_gpu_probe_matches_python_for_every_builtin(idx):
    v = V.examples("cuda")[idx]
    check_probe(v)


@pytest.mark.gpu
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gpu_probe_matches_python_for_random_compositions(seed):
    for v in random_compositions(seed, "cuda"):
        check_probe(v)


@pytest.mark.gpu
def test_gpu_probe_runtime_param_change_needs_no_recompile():
    v = V.softcap(30.0, runtime=True)
    check_probe(v)
    before = build(V.probe_spec(v))
    w = v.with_params(cap=3.0)
    check_probe(w)
    assert build(V.probe_spec(w)) is before


@pytest.mark.gpu
@pytest.mark.parametrize("runtime", [False, True])
def test_gpu_probe_approx_tanh_within_its_bound(runtime):
    # the device's tanh.approx against Python's exact tanh, at the bound the op declares (APPROX_OPS): the score is
    # cap * tanh(x), so its error is the op's relative error (plus a few ulps of the multiplications)
    v = V.softcap(30.0, runtime=runtime, approx=True)
    g = torch.Generator(device="cuda").manual_seed(0)
    scores = torch.randn(2, 8, 64, 64, device="cuda", generator=g) * 40
    gs, gm = V.probe(v, scores, q_offset=0)
    ps, pm = v.evaluate(scores)
    assert torch.equal(gm, pm)
    bound = v.generated.approx["tanh_approx"] * ps.abs() + 4 * torch.finfo(torch.float32).eps * ps.abs() + 1e-6
    err = (gs - ps).abs()
    assert bool((err <= bound).all()), f"max excess {float((err - bound).max()):.3e}"
    assert float(err.max()) > 0                                   # the SFU ran (tanhf would be within 1e-6)


def check_probe(v, B=2, H=8, Q=64, K=64):
    g = torch.Generator(device="cuda").manual_seed(0)
    scores = torch.randn(B, H, Q, K, device="cuda", generator=g) * 8
    gs, gm = V.probe(v, scores, q_offset=0)
    ps, pm = v.evaluate(scores)
    assert torch.equal(gm, pm), f"{v.name}: mask differs at {torch.nonzero(gm != pm)[:5].tolist()}"
    close = torch.isclose(gs, ps, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert bool(close.all()), f"{v.name}: max score diff {float((gs - ps).abs().nan_to_num().max()):.3e}"


# ---------------------------------------------------------------- generated code == Python, on the CPU (g++)
from tests.variants.operator_cases import cases as operator_cases  # noqa: E402

needs_gxx = pytest.mark.skipif(not V.host_probe.__module__ or not __import__("shutil").which("g++"),
                               reason="needs g++ for the host probe")


def check_host(v, B=2, H=8, Q=24, K=24, q_offset=0):
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(B, H, Q, K, generator=g) * 4
    hs, hm = V.host_probe(v, scores, q_offset=q_offset)
    ps, pm = v.evaluate(scores, q_offset=q_offset)
    assert torch.equal(hm, pm), f"{v.name}: mask differs at {torch.nonzero(hm != pm)[:5].tolist()}"
    close = torch.isclose(hs, ps, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert bool(close.all()), f"{v.name}: scores differ at {torch.nonzero(~close)[:3].tolist()}"


@needs_gxx
@pytest.mark.parametrize("idx", range(len(V.examples())))
def test_host_probe_matches_python_for_every_builtin(idx):
    check_host(V.examples()[idx], q_offset=5)


@needs_gxx
@pytest.mark.parametrize("name", [v.name for v in operator_cases()])
def test_host_probe_operator_semantics(name):
    check_host(next(v for v in operator_cases() if v.name == name))


@needs_gxx
def test_zero_d_and_rebound_captures_are_read_at_run_time():
    z = torch.tensor(2.0)
    v = ib.Variant("zero_d", score_mod=lambda s, b, h, q, k: s * z)
    z.fill_(3.0)                                               # changed after definition: both sides see 3
    check_host(v)
    state = {"bias": torch.zeros(8)}
    w = ib.Variant("rebound", score_mod=lambda s, b, h, q, k: s + state["bias"][h])
    state["bias"] = torch.full((8,), 5.0)                      # re-bound, same shape: the kernel follows
    check_host(w)
    state["bias"] = torch.zeros(4, 2)                          # another shape: refuse rather than mis-read
    with pytest.raises(InputError, match="traces to different code"):
        w.params_bytes()


def test_pack_returns_and_checks_the_tensors_it_points_into():
    """The kernel side keeps alive, and checks the device of, the tensors the fresh trace packs (a re-bound
    global), not the ones captured at definition."""
    state = {"bias": torch.zeros(8)}
    v = ib.Variant("rebound_pack", score_mod=lambda s, b, h, q, k: s + state["bias"][h])
    raw, kept = v.pack("cpu")
    assert kept == [state["bias"]] and struct.unpack("=Q", raw[:8])[0] == state["bias"].data_ptr()
    new = torch.full((8,), 5.0)
    state["bias"] = new
    raw, kept = v.pack("cpu")
    assert len(kept) == 1 and kept[0] is new and struct.unpack("=Q", raw[:8])[0] == new.data_ptr()
    state["bias"] = torch.empty(8, device="meta")                # same code, but not where the kernel runs
    with pytest.raises(InputError, match="is on meta"):
        v.pack("cpu")
    v.check_device("cpu")                                        # (the tensor captured at definition was fine)


def test_tracing_rejects_what_torch_rejects_or_c_cannot_hold():
    with pytest.raises(V.TraceError, match="subtracting booleans"):
        ib.Variant("x", mask_mod=lambda b, h, q, k: (k <= q) - (k >= q))
    with pytest.raises(V.TraceError, match="overflows float32"):
        ib.Variant("x", score_mod=lambda s, b, h, q, k: s * 1e40)
    with pytest.raises(V.TraceError, match="rounding_mode"):
        ib.Variant("x", score_mod=lambda s, b, h, q, k: torch.div(s, 2, rounding_mode="round"))
    with pytest.raises(V.TraceError, match="out of range"):
        ib.Variant("x", score_mod=lambda s, b, h, q, k: s + torch.zeros(8, 4)[h, 7])
    with pytest.raises(InputError, match="integer parameter"):
        V.sliding_window(8).with_params(window=2.5)


@pytest.mark.gpu
@pytest.mark.parametrize("name", [v.name for v in operator_cases()])
def test_gpu_probe_operator_semantics(name):
    v = next(v for v in operator_cases() if v.name == name)
    # captured tensors must be on the GPU: rebuild the case there
    cuda_case = ib.Variant(v.name, score_mod=_to_cuda(v.score_mod), mask_mod=_to_cuda(v.mask_mod), params=v.params,
                           runtime=v.runtime, softmax=v.softmax)
    check_probe(cuda_case, Q=24, K=24)


def _to_cuda(fn):
    """The same function with its captured tensors (closure cells) moved to the GPU."""
    if fn is None or not fn.__closure__:
        return fn
    import types

    cells = tuple(types.CellType(c.cell_contents.cuda() if isinstance(c.cell_contents, torch.Tensor)
                                 else c.cell_contents) for c in fn.__closure__)
    return types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, cells)


@pytest.mark.parametrize("arch", ["sm_90a", "sm_80"])
def test_operator_cases_compile_without_spills(arch):
    for v in operator_cases():
        k = build(V.probe_spec(v), arch)
        assert not k.report.spills, v.name
