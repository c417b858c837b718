"""``run(plan, q, ...)``: execute a plan. Today every plan runs through the emulator (on the tensors' own
device: exact, slow); the decode and prefill kernels take over CUDA tensors as they land."""
from __future__ import annotations

import torch

from ..plan import Plan, emulate


def run(plan: Plan, q: torch.Tensor, kv_cache=None, *, page_table=None, k: torch.Tensor | None = None,
        v: torch.Tensor | None = None, **options) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of a planned batch.

    Args:
        plan: from :func:`infernb.plan`.
        q: ``[sum(qo_lens), num_qo_heads, head_dim]``.
        kv_cache: a :class:`~infernb.layout.PagedKVCache` (with ``page_table`` = the table the plan was made
            for), or pass ragged ``k``/``v`` ``[sum(kv_lens), num_kv_heads, head_dim]`` instead.
        **options: variant options of :func:`infernb.plan.emulate` (sm_scale, logits_soft_cap, rope, ...).
    Returns:
        ``(out [sum(qo_lens), num_qo_heads, head_dim] float64, lse [sum(qo_lens), num_qo_heads] float64)``.
    """
    return emulate(plan, q, k, v, kv_cache=kv_cache, page_table=page_table, **options)
