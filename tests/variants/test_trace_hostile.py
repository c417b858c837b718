"""Issue 12, items 8-10: every untraceable construct is a TraceError naming the line and the fix; ops the tracer
accepts mean what torch means; the host twin compiles every op the tracer emits and agrees with the Python."""
import math
import shutil

import pytest
import torch

import infernb as ib
from infernb.variants.trace import TORCH_FUNCS, TraceError


@pytest.mark.parametrize("mod,hint", [
    (lambda s, b, h, q, k: s + round(s), "torch.floor"),
    (lambda s, b, h, q, k: s + divmod(q, 3)[0], "x // y"),
    (lambda s, b, h, q, k: s + (q << 1), "power of two"),
    (lambda s, b, h, q, k: s + (q >> 1), "power of two"),
    (lambda s, b, h, q, k: s + torch.tensor(q), "cuda_score_mod"),
    (lambda s, b, h, q, k: s + math.exp(s), "torch.exp"),
    (lambda s, b, h, q, k: s + math.floor(s), "torch.floor"),
    (lambda s, b, h, q, k: s + q[0], "scalars"),
    (lambda s, b, h, q, k: torch.max(s, 0), "reduction"),
    (lambda s, b, h, q, k: torch.min(s, 0), "reduction"),
    (lambda s, b, h, q, k: torch.max(s), "reduction"),
    (lambda s, b, h, q, k: torch.maximum(s, 0.0), "clamp"),
], ids=["round", "divmod", "lshift", "rshift", "torch.tensor", "math.exp", "math.floor", "index", "max dim",
        "min dim", "max reduce", "maximum scalar"])
def test_untraceable_python_names_its_line_and_the_fix(mod, hint):
    with pytest.raises(TraceError) as e:
        ib.Variant("bad", score_mod=mod)
    msg = str(e.value)
    assert "test_trace_hostile.py:" in msg, msg          # the user's own line
    assert hint in msg, msg


def test_torch_special_spellings_trace_like_the_plain_ones():
    v = ib.Variant("special", score_mod=lambda s, b, h, q, k: torch.special.erf(s) + torch.special.expit(s))
    w = ib.Variant("plain", score_mod=lambda s, b, h, q, k: torch.erf(s) + torch.sigmoid(s))
    import re

    code = lambda x: re.sub(r"//[^\n]*", "", x.cuda).replace(x.cuda_name, "V")  # noqa: E731  (no origin comments)
    assert code(v) == code(w)


def test_elementwise_max_min_clamp_match_torch():
    other = torch.tensor([0.25])
    v = ib.Variant("mm", score_mod=lambda s, b, h, q, k: torch.max(s, s * 0.5) + torch.min(s, k * 0.1)
                   + torch.clamp(s, min=-0.5, max=0.5) + torch.maximum(s, other[0]))
    scores = torch.randn(1, 2, 4, 6)
    got, _ = v.evaluate(scores)                            # the Python side, on tensors: torch's semantics
    ref = (torch.max(scores, scores * 0.5) + torch.min(scores, torch.arange(6) * 0.1)
           + torch.clamp(scores, min=-0.5, max=0.5) + torch.maximum(scores, other[0]))
    assert torch.allclose(got, ref)


def _op_variants():
    """One variant per public op of the tracer (TORCH_FUNCS without operator dunders), on domain-safe inputs."""
    pos = lambda s: s.abs() + 0.5  # noqa: E731
    unary = {"tanh", "exp", "exp2", "log", "log2", "log1p", "sqrt", "rsqrt", "sigmoid", "sin", "cos", "erf", "floor",
             "ceil", "abs", "sign", "special_erf", "special_expit", "special_exp2", "special_log1p"}
    fns = {}
    def unary_mod(f):
        return lambda s, b, h, q, k: s + f(pos(s))
    for name in unary:
        fns[name] = unary_mod(getattr(torch.special, name[8:]) if name.startswith("special_") else getattr(torch, name))
    fns.update({
        "where": lambda s, b, h, q, k: torch.where(q >= k, s, -s),
        "minimum": lambda s, b, h, q, k: torch.minimum(s, s * 0.5),
        "maximum": lambda s, b, h, q, k: torch.maximum(s, s * 0.5),
        "min": lambda s, b, h, q, k: torch.min(s, s * 0.5),
        "max": lambda s, b, h, q, k: torch.max(s, s * 0.5),
        "clamp": lambda s, b, h, q, k: torch.clamp(s, min=-0.3, max=0.7),
        "clip": lambda s, b, h, q, k: torch.clip(s, min=-0.3),
        "logical_and": lambda s, b, h, q, k: s * torch.logical_and(q >= k, k > 0).float(),
        "logical_or": lambda s, b, h, q, k: s * torch.logical_or(q > k, k == 0).float(),
        "logical_not": lambda s, b, h, q, k: s * torch.logical_not(q > k).float(),
        "add": lambda s, b, h, q, k: torch.add(s, k, alpha=2),
        "sub": lambda s, b, h, q, k: torch.sub(s, q, alpha=3),
        "mul": lambda s, b, h, q, k: torch.mul(s, k),
        "div": lambda s, b, h, q, k: torch.div(s, k + 1) + torch.div(q - k, 3, rounding_mode="floor"),
        "pow": lambda s, b, h, q, k: torch.pow(pos(s), 1.5),
        "remainder": lambda s, b, h, q, k: s + torch.remainder(q - k, 3),
    })
    names = {n for n in TORCH_FUNCS if not n.startswith("__")}
    assert names == set(fns), f"ops without a host-twin test: {sorted(names - set(fns))}"
    return [ib.Variant(f"op_{n}", score_mod=f) for n, f in sorted(fns.items())]


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ (the host twin)")
@pytest.mark.parametrize("variant", _op_variants(), ids=lambda v: v.name)
def test_host_twin_compiles_every_op_and_agrees_with_python(variant):
    scores = torch.randn(1, 2, 5, 7, generator=torch.Generator().manual_seed(0))
    hs, hm = ib.variants.host_probe(variant, scores)
    ps, pm = variant.evaluate(scores)
    assert torch.equal(hm, pm)
    assert torch.allclose(hs, ps, rtol=2e-6, atol=2e-6, equal_nan=True), (hs - ps).abs().max()
