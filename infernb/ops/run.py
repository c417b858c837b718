"""``run(plan, q, ...)``: execute a plan. Decode plans the kernel supports, on CUDA tensors and a
:class:`~infernb.layout.PagedKVCache`, run the decode kernel (:mod:`infernb.ops.paged_decode`); everything
else (CPU tensors, prefill plans, ragged k/v, raw pools, the reference-only options, shapes the kernel does not
support) runs through the emulator on the tensors' own device: exact and slow."""
from __future__ import annotations

import torch

from ..plan import Plan, emulate
from ..reference import RoPE
from ..variants import Variant


def run(plan: Plan, q: torch.Tensor, kv_cache=None, *, page_table=None, k: torch.Tensor | None = None,
        v: torch.Tensor | None = None, variant: Variant | None = None, rope: RoPE | None = None,
        sm_scale: float | None = None, **options) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of a planned batch.

    Args:
        plan: from :func:`infernb.plan`.
        q: ``[sum(qo_lens), num_qo_heads, head_dim]``.
        kv_cache: a :class:`~infernb.layout.PagedKVCache` (with ``page_table`` = the table the plan was made for),
            or pass ragged ``k``/``v`` ``[sum(kv_lens), num_kv_heads, head_dim]`` instead.
        variant: a :class:`~infernb.variants.Variant` (score_mod / mask_mod / sigmoid), compiled into the kernel.
        rope: :class:`~infernb.reference.RoPE` applied to q and k at their positions (the cache holds raw keys).
        sm_scale: logit scale (default ``1 / sqrt(head_dim)``).
        **options: reference-only options of :func:`infernb.plan.emulate` (logits_soft_cap, alibi_slopes,
            custom_masks, compute_dtype); with any of them the emulator runs.
    Returns:
        ``(out [sum(qo_lens), num_qo_heads, head_dim], lse [sum(qo_lens), num_qo_heads])``: from the decode
        kernel ``q.dtype`` and float32; from the emulator float64 (``compute_dtype``).
    """
    if q.is_cuda and hasattr(kv_cache, "pool") and page_table is not None and k is None and v is None and not options:
        from ..errors import InputError
        from .paged_decode import check_decode_plan, run_decode

        try:
            check_decode_plan(plan)
            supported = True
        except InputError:
            supported = False
        if supported:
            return run_decode(plan, q, kv_cache, page_table, variant=variant, rope=rope, sm_scale=sm_scale)
    if variant is not None:
        options.update(variant.reference_kwargs())
    return emulate(plan, q, k, v, kv_cache=kv_cache, page_table=page_table, rope=rope, sm_scale=sm_scale, **options)
