"""The CPU twin of the GPU probe: compile a variant's generated struct as host C++ (g++) and evaluate its
hooks on a grid, so the code generator's semantics are checked on every machine, CI included.

The generated code and ``kernels/include/infernb/variant.cuh`` are plain C++ apart from ``__device__`` and
``__forceinline__``, which the shim below defines away. Captured tensors must be CPU tensors here.
"""
from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from ..jit.spec import INCLUDE_DIR, kernels_digest
from .variant import Variant

_SHIM = r"""
#include <cmath>
#include <cstring>
#define __device__
#define __forceinline__ inline
#define INFERNB_INF (std::numeric_limits<float>::infinity())
#include <limits>
#include <infernb/variant.cuh>
"""

_RUN = r"""
extern "C" void run(const void* params, const float* scores, float* out_s, unsigned char* out_m,
                    int B, int H, int Q, int K, int q_offset) {
  using V = %s;
  V::params_t p;
  std::memcpy(&p, params, sizeof(p));
  const long long total = (long long)B * H * Q * K;
  for (long long i = 0; i < total; ++i) {
    const int k = int(i %% K), q = int((i / K) %% Q), h = int((i / ((long long)K * Q)) %% H);
    const int b = int(i / ((long long)K * Q * H));
    out_s[i] = V::score_mod(p, scores[i], b, h, q + q_offset, k);
    out_m[i] = V::mask_mod(p, b, h, q + q_offset, k) ? 1 : 0;
  }
}
"""

_libs: dict[str, ctypes.CDLL] = {}


def available() -> bool:
    """True if a host C++ compiler (g++) is on PATH."""
    return shutil.which("g++") is not None


def host_probe(variant: Variant, scores: torch.Tensor, *, q_offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluate the generated hooks on the CPU over ``scores`` ``[B, H, Q, K]``; same contract as
    :func:`infernb.variants.probe`. fp32 arithmetic without fused multiply-add contraction (``-ffp-contract=off``),
    so the result is what the C++ says, to float32 rounding."""
    raw, captured = variant.pack("cpu")             # checks where the captured tensors live; keeps them alive
    src = _SHIM + variant.cuda + (_RUN % variant.cuda_name)
    # keyed like the JIT cache: the source and the contents of every file under kernels/ (variant.cuh included)
    key = hashlib.sha256((src + kernels_digest()).encode()).hexdigest()[:16]
    lib = _libs.get(key)
    if lib is None:
        out_dir = Path(tempfile.gettempdir()) / "infernb-host-probe"
        out_dir.mkdir(exist_ok=True)
        so = out_dir / f"{key}.so"
        if not so.exists():
            cpp = out_dir / f"{key}.cpp"
            cpp.write_text(src)
            r = subprocess.run(["g++", "-O1", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off", "-w",
                                f"-I{INCLUDE_DIR}", str(cpp), "-o", str(so) + ".tmp"], capture_output=True, text=True)
            if r.returncode:
                raise RuntimeError(f"g++ could not compile the host probe of {variant.name}:\n{r.stderr[:3000]}")
            Path(str(so) + ".tmp").replace(so)
        lib = _libs[key] = ctypes.CDLL(str(so))
    scores = scores.float().contiguous().cpu()
    B, H, Q, K = scores.shape
    out_s = torch.full_like(scores, float("nan"))
    out_m = torch.full(scores.shape, 255, dtype=torch.uint8)
    params = ctypes.create_string_buffer(raw)
    P = ctypes.c_void_p
    lib.run(params, P(scores.data_ptr()), P(out_s.data_ptr()), P(out_m.data_ptr()), B, H, Q, K, q_offset)
    return out_s, out_m.bool()
