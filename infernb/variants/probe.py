"""The GPU probe: evaluate a variant's generated hooks on a (b, h, q, kv) grid and compare with its Python."""
from __future__ import annotations

import torch

from ..jit import KernelSpec, build
from .variant import Variant


def probe_spec(variant: Variant) -> KernelSpec:
    """Kernel specialization that evaluates ``variant``'s hooks (``kernels/include/infernb/variant_probe.cuh``)."""
    g = variant.generated
    # the preamble starts on line 4 of the rendered unit; map struct lines to their Python origin
    return KernelSpec(family="variant_probe", name=f"variant_probe_{variant.cuda_name[8:]}_{variant.code_hash}",
                      kernels=(("probe", f"infernb::variant_probe_kernel<{variant.cuda_name}>"),),
                      preamble=g.code, preamble_origin=tuple(sorted(g.origins.items())))


def probe(variant: Variant, scores: torch.Tensor, *, q_offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the generated ``score_mod`` / ``mask_mod`` on the GPU over ``scores`` ``[B, H, Q, K]`` (CUDA, float32).

    Returns ``(scores [B, H, Q, K] float32, mask [B, H, Q, K] bool)``, to compare with
    :meth:`Variant.evaluate` (exactly for the mask, to float32 rounding for the scores).
    """
    if not scores.is_cuda:
        raise ValueError("probe runs on the GPU: pass CUDA scores")
    raw, captured = variant.pack(scores.device)      # checks where the captured tensors live; keeps them alive
    B, H, Q, K = scores.shape
    scores = scores.float().contiguous()
    out_s = torch.full_like(scores, float("nan"))
    out_m = torch.full(scores.shape, 255, dtype=torch.uint8, device=scores.device)
    params = torch.frombuffer(bytearray(raw), dtype=torch.uint8).to(scores.device)
    total = scores.numel()
    if total:
        build(probe_spec(variant)).launch("probe", (min(-(-total // 256), 65535), 1, 1), (256, 1, 1),
                                          (params, scores, out_s, out_m, B, H, Q, K, q_offset),
                                          device_index=scores.device.index)
    if (out_m == 255).any():
        raise RuntimeError("probe kernel left mask entries unwritten")
    return out_s, out_m.bool()
