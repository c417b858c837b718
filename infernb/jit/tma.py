"""TMA descriptors for the Hopper kernels: a ``CUtensorMap`` (128 opaque bytes) encoded on the host by the driver
(``cuTensorMapEncodeTiled`` through ctypes: no extra dependency), passed by value to a kernel
(:meth:`infernb.jit.Kernel.launch_packed`) as ``kernels/include/infernb/hopper.cuh``'s ``tensor_map_t``.
"""
from __future__ import annotations

import ctypes
import functools

import torch

from ..errors import DeviceError, InputError

#: CUtensorMapDataType, CUtensorMapSwizzle, CUtensorMapL2promotion values (cuda.h)
_F16, _BF16, _SWIZZLE_128B, _L2_256B = 6, 9, 3, 3


@functools.lru_cache(maxsize=1)
def _libcuda():
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError as e:                                     # pragma: no cover (GPU machines have it)
        raise DeviceError(f"the CUDA driver library is not available: {e}") from e
    fn = lib.cuTensorMapEncodeTiled
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p,
                   ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                   ctypes.c_int]
    return fn


def tensor_map_2d(t: torch.Tensor, box_rows: int, box_cols: int) -> bytes:
    """The ``CUtensorMap`` (128 bytes) of a row-major 2-D bf16 / f16 CUDA tensor (rows may be strided), tiled in
    boxes of ``box_rows`` x ``box_cols`` elements (``box_cols`` x 2 = 128 bytes: the 128-byte swizzle), for
    ``tma_load_2d``. Boxes reaching past the tensor's end are zero-filled."""
    if t.dim() != 2 or t.dtype not in (torch.bfloat16, torch.float16) or not t.is_cuda or t.stride(1) != 1:
        raise InputError(f"tensor_map_2d: a row-major 2-D bf16 / f16 CUDA tensor, got {tuple(t.shape)} {t.dtype} "
                         f"strides {t.stride()} on {t.device}")
    if (t.stride(0) * 2) % 16 or t.data_ptr() % 16:
        raise InputError("tensor_map_2d: rows must start on 16-byte boundaries (TMA)")
    raw = (ctypes.c_uint8 * (128 + 64))()                                  # the driver wants it 64-byte aligned
    at = -ctypes.addressof(raw) % 64
    out = (ctypes.c_uint64 * 16).from_buffer(raw, at)
    dims = (ctypes.c_uint64 * 2)(t.shape[1], t.shape[0])                 # innermost first
    strides = (ctypes.c_uint64 * 1)(t.stride(0) * 2)                      # bytes, for the dims after the first
    box = (ctypes.c_uint32 * 2)(box_cols, box_rows)
    elem = (ctypes.c_uint32 * 2)(1, 1)
    dtype = _BF16 if t.dtype == torch.bfloat16 else _F16
    res = _libcuda()(ctypes.byref(out), dtype, 2, ctypes.c_void_p(t.data_ptr()), dims, strides, box, elem, 0,
                     _SWIZZLE_128B, _L2_256B, 0)
    if res != 0:
        raise DeviceError(f"cuTensorMapEncodeTiled failed (CUresult {res}) for a {tuple(t.shape)} tensor, box "
                          f"{box_rows} x {box_cols}")
    return bytes(out)
