"""Built-in variants: each a factory returning a :class:`Variant` (name stable, used in cache keys and plots)."""
from __future__ import annotations

import math

import torch

from ..errors import InputError, is_int
from .trace import approx_tanh
from .variant import Variant


def causal() -> Variant:
    """Bottom-right aligned causal mask: a query sees keys at or before its position."""
    def mask_mod(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx
    return Variant("causal", mask_mod=mask_mod)


def sliding_window(window: int, *, causal: bool = True) -> Variant:
    """Keys within ``window`` positions to the left (FlashInfer's ``window_left``), causal by default."""
    if not is_int(window) or window < 0:
        raise InputError(f"window: expected an integer >= 0, got {window!r}")

    def mask_mod(b, h, q_idx, kv_idx, window):
        m = kv_idx >= q_idx - window
        return (m & (kv_idx <= q_idx)) if causal else m
    return Variant(f"sliding_window_{window}" + ("" if causal else "_bidir"), mask_mod=mask_mod,
                   params={"window": int(window)}, window_left=int(window))


def prefix_lm(prefix_len: int) -> Variant:
    """Bidirectional over the first ``prefix_len`` positions, causal after (PrefixLM / T5 decoder prompts)."""
    if not is_int(prefix_len) or prefix_len < 0:
        raise InputError(f"prefix_len: expected an integer >= 0, got {prefix_len!r}")
    def mask_mod(b, h, q_idx, kv_idx, prefix_len):
        return (kv_idx <= q_idx) | (kv_idx < prefix_len)
    return Variant(f"prefix_lm_{prefix_len}", mask_mod=mask_mod, params={"prefix_len": int(prefix_len)})


def attention_sink(window: int, sink: int = 4) -> Variant:
    """StreamingLLM's mask: causal, the keys within ``window`` positions to the left and the first ``sink`` keys
    (the attention sinks). Its block structure reads the sink's blocks and the window's band only."""
    for name, x in (("window", window), ("sink", sink)):
        if not is_int(x) or x < 0:
            raise InputError(f"{name}: expected an integer >= 0, got {x!r}")

    def mask_mod(b, h, q_idx, kv_idx, window, sink):
        return (kv_idx <= q_idx) & ((kv_idx >= q_idx - window) | (kv_idx < sink))
    return Variant(f"attention_sink_{sink}_window_{window}", mask_mod=mask_mod,
                   params={"window": int(window), "sink": int(sink)})


def document(doc_ids: torch.Tensor, *, causal: bool = True) -> Variant:
    """Packed sequences: a query sees only keys of its own document. ``doc_ids`` ``[total_tokens]`` int32/64
    gives each packed position's document (on the device the kernel runs on)."""
    if not isinstance(doc_ids, torch.Tensor) or doc_ids.dim() != 1 or doc_ids.is_floating_point():
        raise InputError("doc_ids: expected a 1-D integer tensor [total_tokens]")

    def mask_mod(b, h, q_idx, kv_idx):
        same = doc_ids[q_idx] == doc_ids[kv_idx]
        return (same & (kv_idx <= q_idx)) if causal else same
    return Variant(f"document_{int(doc_ids.max()) + 1 if doc_ids.numel() else 0}docs", mask_mod=mask_mod)


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """The ALiBi paper's head slopes ``2^(-8 i / n)`` (with the interpolation for non-power-of-two ``n``)."""
    def pow2(n):
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]
    if math.log2(num_heads).is_integer():
        s = pow2(num_heads)
    else:
        c = 2 ** math.floor(math.log2(num_heads))
        s = pow2(c) + pow2(2 * c)[0::2][: num_heads - c]
    return torch.tensor(s, dtype=torch.float32)


def alibi(slopes: torch.Tensor | int) -> Variant:
    """ALiBi: ``score + slope[h] * (kv_idx - q_idx)``. ``slopes`` ``[num_qo_heads]`` float32, or a head count."""
    if isinstance(slopes, int):
        slopes = alibi_slopes(slopes)
    if not isinstance(slopes, torch.Tensor) or slopes.dim() != 1:
        raise InputError("slopes: expected a 1-D float tensor [num_qo_heads] or a head count")
    slopes = slopes.float()

    def score_mod(score, b, h, q_idx, kv_idx):
        return score + slopes[h] * (kv_idx - q_idx)
    return Variant(f"alibi_h{slopes.numel()}", score_mod=score_mod)


def softcap(cap: float, *, runtime: bool = False, approx: bool = False) -> Variant:
    """Tanh logit soft-capping (Gemma 2, Grok): ``cap * tanh(score / cap)``, computed as ``score * (1 / cap)``.
    ``runtime``: ``cap`` is a kernel argument (changing it does not recompile). ``approx``: the GPU computes tanh by
    the SFU (:func:`approx_tanh`, relative error <= 2^-10.987, as FlashInfer does) instead of the accurate ``tanhf``,
    about 25 instructions per logit; the reference stays exact."""
    if not cap > 0:
        raise InputError(f"cap: expected > 0, got {cap}")
    tanh = approx_tanh if approx else torch.tanh

    def score_mod(score, b, h, q_idx, kv_idx, cap):
        # times the reciprocal, as FlashInfer does: a division per logit is an IEEE division sequence with a
        # branch to its slow path (the compiler folds 1 / cap for a constant cap and hoists it for a runtime one)
        return cap * tanh(score * (1.0 / cap))
    name = ("softcap" if runtime else f"softcap_{cap:g}".replace(".", "p")) + ("_approx" if approx else "")
    return Variant(name, score_mod=score_mod, params={"cap": float(cap)}, runtime={"cap"} if runtime else ())


def relative_position_bias(bias: torch.Tensor, *, num_buckets: int = 32, max_distance: int = 128,
                           bidirectional: bool = False) -> Variant:
    """T5 relative position bias: ``score + bias[h, bucket(kv_idx - q_idx)]`` with T5's log-spaced buckets.
    ``bias`` ``[num_qo_heads, num_buckets]`` float32."""
    if not isinstance(bias, torch.Tensor) or bias.dim() != 2 or bias.shape[1] != num_buckets:
        raise InputError(f"bias: expected [num_qo_heads, num_buckets={num_buckets}], got "
                         f"{list(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__}")
    bias = bias.float()
    nb = num_buckets // 2 if bidirectional else num_buckets
    max_exact = nb // 2
    scale = (nb - max_exact) / math.log(max_distance / max_exact)

    def score_mod(score, b, h, q_idx, kv_idx):
        rel = kv_idx - q_idx
        if bidirectional:
            offset = torch.where(rel > 0, nb, 0)
            n = torch.abs(rel)
        else:
            offset = 0
            n = torch.clamp(-rel, min=0)
        large = max_exact + (torch.log(n.float() / max_exact + 1e-9) * scale).long()
        large = torch.clamp(large, max=nb - 1)
        bucket = offset + torch.where(n < max_exact, n, large)
        return score + bias[h, bucket]
    return Variant(f"t5_bias_h{bias.shape[0]}_b{num_buckets}_d{max_distance}{'_bidir' if bidirectional else ''}",
                   score_mod=score_mod)


def sigmoid_attention(bias: float = 0.0) -> Variant:
    """Sigmoid attention (no softmax): ``out = sum_j sigmoid(score_ij + bias) v_j``."""
    def score_mod(score, b, h, q_idx, kv_idx, bias):
        return score + bias
    return Variant(f"sigmoid_b{bias:g}".replace(".", "p").replace("-", "m"), score_mod=score_mod,
                   params={"bias": float(bias)}, softmax=False)


def and_masks(*variants: Variant, name: str | None = None) -> Variant:
    """A key is visible if every variant's mask_mod allows it."""
    return _combine_masks(variants, "and", name)


def or_masks(*variants: Variant, name: str | None = None) -> Variant:
    """A key is visible if any variant's mask_mod allows it."""
    return _combine_masks(variants, "or", name)


def _window(variants, how) -> int:
    """window_left of a combination: and-ed masks keep the tightest promise, or-ed masks keep one only if all do."""
    w = [v.window_left for v in variants if v.mask_mod is not None or v.cuda_mask_mod is not None]
    if how == "and":
        w = [x for x in w if x >= 0]
        return min(w) if w else -1
    return max(w) if w and min(w) >= 0 else -1


def _combine_masks(variants, how, name):
    mods = [v.bound_mods()[1] for v in variants]
    if any(m is None for m in mods):
        raise InputError(f"{how}_masks: every variant needs a mask_mod")

    def mask_mod(b, h, q_idx, kv_idx):
        out = mods[0](b, h, q_idx, kv_idx)
        for m in mods[1:]:
            out = (out & m(b, h, q_idx, kv_idx)) if how == "and" else (out | m(b, h, q_idx, kv_idx))
        return out
    return Variant(name or f"_{how}_".join(v.name for v in variants), mask_mod=mask_mod,
                   window_left=_window(variants, how))


def combine(*variants: Variant, name: str | None = None) -> Variant:
    """Stack variants: score_mods applied in order, mask_mods and-ed (e.g. soft-cap + sliding window)."""
    scores = [v.bound_mods()[0] for v in variants if v.bound_mods()[0] is not None]
    masks = [v.bound_mods()[1] for v in variants if v.bound_mods()[1] is not None]
    if sum(not v.softmax for v in variants) and len(variants) > 1 and any(v.softmax for v in variants):
        raise InputError("combine: cannot mix sigmoid attention with softmax variants")

    def score_mod(score, b, h, q_idx, kv_idx):
        for f in scores:
            score = f(score, b, h, q_idx, kv_idx)
        return score

    def mask_mod(b, h, q_idx, kv_idx):
        out = masks[0](b, h, q_idx, kv_idx)
        for m in masks[1:]:
            out = out & m(b, h, q_idx, kv_idx)
        return out
    return Variant(name or "_".join(v.name for v in variants), score_mod=score_mod if scores else None,
                   mask_mod=mask_mod if masks else None, softmax=all(v.softmax for v in variants),
                   window_left=_window(variants, "and"))


BUILTINS = ("examples", "causal", "sliding_window", "attention_sink", "prefix_lm", "document", "alibi", "softcap", "relative_position_bias",
            "sigmoid_attention", "and_masks", "or_masks", "combine")


#: Every example of :func:`examples` as the code that makes it, run with ``ib`` (infernb), ``torch`` and ``device``
#: (where captured tensors live) in scope: one list for :func:`examples` and for the VariantEditor's dropdown, which
#: shows a picked built-in as this code so that an edit of it is what compiles.
_DOC = "doc = torch.tensor([0] * 5 + [1] * 7 + [2] * 4 + [3] * 48, dtype=torch.int32, device=device)\n"
_TABLE = "table = torch.randn(8, 32, generator=torch.Generator().manual_seed(0)).to(device)\n"
EXAMPLE_CODE = (
    "variant = ib.variants.causal()",
    "variant = ib.variants.sliding_window(16)",
    "variant = ib.variants.sliding_window(8, causal=False)",
    "variant = ib.variants.prefix_lm(6)",
    "variant = ib.variants.attention_sink(12, sink=3)      # StreamingLLM: a window and the first keys",
    _DOC + "variant = ib.variants.document(doc)",
    "variant = ib.variants.alibi(ib.variants.alibi_slopes(8).to(device))",
    "variant = ib.variants.softcap(30.0)",
    "variant = ib.variants.softcap(5.0, runtime=True)       # the cap is a runtime parameter: a slider",
    "variant = ib.variants.softcap(30.0, approx=True)       # the SFU's tanh: a light hook, the plain path's step",
    _TABLE + "variant = ib.variants.relative_position_bias(table)",
    _TABLE + "variant = ib.variants.relative_position_bias(table, bidirectional=True)",
    "variant = ib.variants.sigmoid_attention(-2.0)",
    "variant = ib.variants.combine(ib.variants.softcap(20.0), ib.variants.sliding_window(12))",
    _DOC + "variant = ib.variants.and_masks(ib.variants.causal(), ib.variants.document(doc))",
    "variant = ib.variants.or_masks(ib.variants.sliding_window(4), ib.variants.prefix_lm(3))",
    "variant = ib.variants.combine(ib.variants.alibi(ib.variants.alibi_slopes(8).to(device)),\n"
    "                              ib.variants.softcap(10.0), ib.variants.prefix_lm(8))",
)


def variant_from_code(code: str, *, filename: str = "<variant code>", device="cpu") -> Variant:
    """Run ``code`` (a researcher's or :data:`EXAMPLE_CODE`'s) with ``ib``, ``torch`` and ``device`` in scope and
    return the ``variant`` it defines; raises ``InputError`` when it defines none."""
    import infernb as ib

    ns = {"ib": ib, "torch": torch, "device": device}
    exec(compile(code, filename, "exec"), ns)   # code the user wrote or picked
    v = ns.get("variant")
    if not isinstance(v, Variant):
        raise InputError("the code must define `variant = ib.Variant(...)`")
    return v


def example_code() -> dict[str, str]:
    """``{name: code}`` of every example (:data:`EXAMPLE_CODE`), in :func:`examples`' order."""
    return {variant_from_code(c).name: "import torch\n" + c + "\n" for c in EXAMPLE_CODE}


def examples(device="cpu") -> list[Variant]:
    """One instance of every built-in (and a few compositions), with captured tensors on ``device``: what CI
    compiles for every architecture and the GPU probe checks against Python (:data:`EXAMPLE_CODE`)."""
    return [variant_from_code(c, device=device) for c in EXAMPLE_CODE]
