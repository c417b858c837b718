"""``run(plan, q, ...)``: execute a plan. On CUDA tensors a kernel runs it (decode plans: the decode kernel;
everything else: the prefill kernel, over a paged cache or ragged k / v) or an ``InputError`` says what no kernel
runs; the emulator runs on CPU tensors, or anywhere with ``backend="emulator"`` (exact and slow). A user timing
"the GPU" never times the emulator."""
from __future__ import annotations

import torch

from ..errors import InputError
from ..plan import Plan, emulate
from ..reference import RoPE
from ..variants import Variant

BACKENDS = ("auto", "kernel", "emulator")


def is_decode_plan(plan: Plan) -> bool:
    """One query token per request, one GQA group per tile: the decode kernel's plans."""
    return int(plan.qo_lens.max(initial=0)) <= 1 and plan.tile_q == plan.group


def run(plan: Plan, q: torch.Tensor, kv_cache=None, *, page_table=None, k: torch.Tensor | None = None,
        v: torch.Tensor | None = None, variant: Variant | None = None, rope: RoPE | None = None,
        sm_scale: float | None = None, backend: str = "auto", **options) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of a planned batch.

    Args:
        plan: from :func:`infernb.plan`.
        q: ``[sum(qo_lens), num_qo_heads, head_dim]``.
        kv_cache: a :class:`~infernb.layout.PagedKVCache` (with ``page_table`` = the table the plan was made for),
            or pass ragged ``k``/``v`` ``[sum(kv_lens), num_kv_heads, head_dim]`` instead.
        variant: a :class:`~infernb.variants.Variant` (score_mod / mask_mod / sigmoid), compiled into the kernel.
        rope: :class:`~infernb.reference.RoPE` applied to q and k at their positions (the cache holds raw keys).
        sm_scale: logit scale (default ``1 / sqrt(head_dim)``).
        backend: ``"auto"`` (a kernel on CUDA tensors, the emulator on CPU ones), ``"kernel"`` (a kernel or an
            error) or ``"emulator"``.
        **options: reference-only options of :func:`infernb.plan.emulate` (logits_soft_cap, alibi_slopes,
            custom_masks, compute_dtype): emulator only (the kernels take these as variants).
    Returns:
        ``(out [sum(qo_lens), num_qo_heads, head_dim] q.dtype, lse [sum(qo_lens), num_qo_heads] float32)``, from a
        kernel or from the emulator computing in fp32 (float64 inputs: float64 throughout); with an explicit
        ``compute_dtype`` option, the emulator's results in that dtype.
    """
    if backend not in BACKENDS:
        raise InputError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    use_kernel = backend == "kernel" or (backend == "auto" and q.is_cuda)
    if use_kernel:
        if not q.is_cuda:
            raise InputError(f"backend='kernel' needs CUDA tensors; q is on {q.device}")
        if options:
            raise InputError(f"{sorted(options)}: reference-only options, which no kernel takes (use a variant: "
                             "ib.variants.softcap, alibi, ...; or backend='emulator')")
        paged = kv_cache is not None
        if paged and (page_table is None or not hasattr(kv_cache, "pool")):
            raise InputError("kv_cache: the kernels read a PagedKVCache with the page_table the plan was made for")
        if not paged and (k is None or v is None):
            raise InputError("pass kv_cache and page_table (paged KV) or k and v (ragged KV)")
        if is_decode_plan(plan):
            if not paged:
                raise InputError("the decode kernel reads a paged cache; ragged k / v run through "
                                 "backend='emulator'")
            from .paged_decode import run_decode
            return run_decode(plan, q, kv_cache, page_table, variant=variant, rope=rope, sm_scale=sm_scale)
        from .prefill import run_prefill
        return run_prefill(plan, q, k, v, cache=kv_cache, page_table=page_table, variant=variant, rope=rope,
                           sm_scale=sm_scale)
    if variant is not None:
        options.update(variant.reference_kwargs())
    if "compute_dtype" in options:                 # an explicit precision: its results as they are
        return emulate(plan, q, k, v, kv_cache=kv_cache, page_table=page_table, rope=rope, sm_scale=sm_scale,
                       **options)
    # like a kernel: the input dtype out (computed in fp32, or float64 for float64 inputs), so rounding is real
    wide = q.dtype == torch.float64
    out, lse = emulate(plan, q, k, v, kv_cache=kv_cache, page_table=page_table, rope=rope, sm_scale=sm_scale,
                       compute_dtype=torch.float64 if wide else torch.float32, **options)
    return out.to(q.dtype), lse.to(torch.float64 if wide else torch.float32)
