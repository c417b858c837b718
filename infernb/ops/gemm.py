"""A bf16 GEMM on Hopper's wgmma + TMA (``kernels/include/infernb/gemm_sm90.cuh``): the proof of the Hopper
vocabulary (``hopper.cuh``) the attention kernel of issue 16 is built from, kept as a test and a benchmark row.

    c = ib.ops.gemm.gemm(a, b)      # a [M, K], b [N, K] bf16 -> c [M, N] = a @ b.T (fp32 accumulation)

TMA descriptors (``CUtensorMap``, 128 bytes: :func:`infernb.jit.tma.tensor_map_2d`) are passed by value
(``Kernel.launch_packed``).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..errors import DeviceError, InputError
from ..jit import KernelSpec, build
from ..jit.tma import tensor_map_2d


@dataclasses.dataclass(frozen=True)
class GemmTraits:
    """The tile of a CTA (``bm`` x ``bn``), the K block (``bk``: one 128-byte swizzled row of bf16) and the
    pipeline's shared-memory stages."""

    bm: int = 128
    bn: int = 256
    bk: int = 64
    stages: int = 4

    @property
    def smem_bytes(self) -> int:
        """``gemm_sm90_cfg_t::SMEM_BYTES`` (each compiled unit checks they agree)."""
        return self.stages * (self.bm + self.bn) * self.bk * 2 + 2 * self.stages * 8


TRAITS = GemmTraits()


def gemm_spec(tr: GemmTraits = TRAITS) -> KernelSpec:
    """The sm_90a specialization of :data:`TRAITS`' tile."""
    args = f"{tr.bm}, {tr.bn}, {tr.bk}, {tr.stages}"
    check = (f"static_assert(infernb::gemm_sm90_cfg_t<{args}>::SMEM_BYTES == {tr.smem_bytes}, "
             f'"shared memory: GemmTraits.smem_bytes");')
    return KernelSpec(family="gemm_sm90", name=f"gemm_sm90_bf16_{tr.bm}x{tr.bn}x{tr.bk}_s{tr.stages}",
                      kernels=(("gemm", f"infernb::gemm_bf16_tn_kernel<{args}>"),), preamble=check,
                      archs=("sm_90a",))


def specializations() -> list[KernelSpec]:
    return [gemm_spec()]


def gemm(a: torch.Tensor, b: torch.Tensor, *, out: torch.Tensor | None = None,
         traits: GemmTraits = TRAITS) -> torch.Tensor:
    """``a @ b.T`` in bf16 with fp32 accumulation.

    Args:
        a: [M, K] bf16, b: [N, K] bf16 (both K-major, row-major storage); on CUDA (an sm_90 GPU: the wgmma + TMA
            kernel) or on the CPU (torch, in fp32, rounded to bf16).
        out: optional [M, N] bf16 output.
    Returns:
        [M, N] bf16. On the GPU M must be a multiple of ``traits.bm`` (128), N of ``traits.bn`` (256), K of
        ``traits.bk`` (64).
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise InputError(f"gemm: a [M, K] and b [N, K] with the same K, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dtype != torch.bfloat16 or b.dtype != torch.bfloat16:
        raise InputError(f"gemm: bf16 operands, got {a.dtype} and {b.dtype}")
    if a.device != b.device:
        raise InputError(f"gemm: a on {a.device}, b on {b.device}")
    M, K = a.shape
    N = b.shape[0]
    if out is not None and (tuple(out.shape) != (M, N) or out.dtype != torch.bfloat16 or out.device != a.device
                            or not out.is_contiguous() or out.data_ptr() % 16):
        raise InputError(f"gemm: out must be a contiguous, 16-byte aligned [{M}, {N}] bf16 tensor on {a.device}")
    if not a.is_cuda:
        c = (a.float() @ b.float().T).to(torch.bfloat16)
        return c if out is None else out.copy_(c)
    major, _ = torch.cuda.get_device_capability(a.device)
    if major != 9:
        raise DeviceError(f"gemm: the wgmma + TMA kernel runs on sm_90 (Hopper) GPUs; {a.device} is sm_{major}x")
    if M % traits.bm or N % traits.bn or K % traits.bk:
        raise InputError(f"gemm: M ({M}) must be a multiple of {traits.bm}, N ({N}) of {traits.bn}, K ({K}) of "
                         f"{traits.bk}")
    a, b = a.contiguous(), b.contiguous()
    c = torch.empty(M, N, dtype=torch.bfloat16, device=a.device) if out is None else out
    kernel = build(gemm_spec(traits), "sm_90a")
    params = [tensor_map_2d(a, traits.bm, traits.bk), tensor_map_2d(b, traits.bn, traits.bk),
              np.uint64(c.data_ptr()).tobytes(), np.int32(M).tobytes(), np.int32(N).tobytes(), np.int32(K).tobytes()]
    kernel.launch_packed("gemm", (N // traits.bn, M // traits.bm, 1), (384, 1, 1), params,
                         shared_mem=traits.smem_bytes, device_index=a.device.index)
    return c
