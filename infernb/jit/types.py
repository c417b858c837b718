"""Element types as kernels see them, and the launch-side alignment rule, shared by every kernel family."""
from __future__ import annotations

import torch

#: torch dtype -> CUDA type name used in template arguments
CUDA_TYPES = {torch.float16: "half", torch.bfloat16: "__nv_bfloat16", torch.float32: "float"}
#: torch dtype -> short name used in specialization names (``merge_states_bf16_hd128``)
DTYPE_NAMES = {torch.float16: "f16", torch.bfloat16: "bf16", torch.float32: "f32"}


def aligned16(t: torch.Tensor) -> torch.Tensor:
    """``t`` contiguous with a 16-byte aligned data pointer (kernels use 16-byte vector loads); copies only
    when needed (``.contiguous()`` alone keeps an offset view's misalignment)."""
    t = t.contiguous()
    return t if t.data_ptr() % 16 == 0 else t.clone()
