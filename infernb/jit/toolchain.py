"""Where NVRTC and the CUDA headers come from (CuPy's NVRTC binding; headers from the CUDA wheels).

Works on a machine with no GPU: NVRTC is a compiler library and needs no driver.
"""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path

from ..errors import DeviceError

#: Architectures CI proves every specialization compiles for.
CI_ARCHS = ("sm_90a", "sm_80")


def nvrtc():
    """CuPy's NVRTC module, or a clear error saying what to install."""
    try:
        from cupy.cuda import nvrtc as _nvrtc  # noqa: PLC0415 (heavy import on purpose here)
        _nvrtc.getVersion()
    except ImportError as e:
        raise DeviceError("infernb.jit needs CuPy to compile kernels: pip install 'infernb[cu13]' "
                          "(or [cu12]); it works without a GPU") from e
    except Exception as e:  # the NVRTC shared library was not found
        raise DeviceError(f"CuPy could not load NVRTC ({e}); pip install 'infernb[cu13]' brings it as a wheel "
                          "(nvidia-cuda-nvrtc)") from e
    return _nvrtc


@functools.lru_cache(maxsize=None)
def nvrtc_version() -> tuple[int, int]:
    """NVRTC ``(major, minor)``."""
    return tuple(nvrtc().getVersion())


@functools.lru_cache(maxsize=None)
def cuda_include_dirs() -> tuple[str, ...]:
    """Directories holding ``cuda_fp16.h``/``cuda_bf16.h`` (CUDA runtime wheel, ``$CUDA_PATH``, /usr/local/cuda)."""
    found = []
    try:
        import cuda.pathfinder as pf  # shipped with CuPy >= 14

        d = pf.find_nvidia_header_directory("cudart")
        if d:
            found.append(d)
    except Exception:
        pass
    for root in (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root and (Path(root) / "include" / "cuda_fp16.h").exists():
            found.append(str(Path(root) / "include"))
    if not found:
        raise DeviceError("CUDA headers (cuda_fp16.h) not found: pip install 'infernb[cu13]' brings them as a "
                          "wheel (nvidia-cuda-runtime), or set CUDA_PATH to a CUDA toolkit")
    return tuple(dict.fromkeys(found))


@functools.lru_cache(maxsize=None)
def toolchain_fingerprint() -> str:
    """What else decides the cubin besides our sources: NVRTC's exact build (package version or library
    file), the resolved CUDA header directories and the contents of the headers kernels include."""
    import hashlib
    from importlib import metadata

    h = hashlib.sha256(repr(nvrtc_version()).encode())
    for dist in ("nvidia-cuda-nvrtc", "nvidia-cuda-nvrtc-cu12", "cupy-cuda13x", "cupy-cuda12x"):
        try:
            h.update(f"{dist}={metadata.version(dist)}".encode())
        except metadata.PackageNotFoundError:
            pass
    for d in cuda_include_dirs():
        h.update(d.encode())
        for name in ("cuda_fp16.h", "cuda_fp16.hpp", "cuda_bf16.h", "cuda_bf16.hpp", "cuda.h"):
            f = Path(d) / name
            if f.exists():
                h.update(name.encode() + f.read_bytes())
    return h.hexdigest()


def normalize_arch(arch: str) -> str:
    """Accept ``sm_90a``, ``90a``, ``9.0``, ``compute_80`` ...; return ``sm_XY[a]``."""
    a = arch.strip().lower().replace("compute_", "sm_")
    if re.fullmatch(r"\d\.\d", a):
        a = "sm_" + a.replace(".", "")
    elif re.fullmatch(r"\d{2,3}[af]?", a):
        a = "sm_" + a
    if not re.fullmatch(r"sm_\d{2,3}[af]?", a):
        raise ValueError(f"arch: expected something like 'sm_90a' or 'sm_80', got {arch!r}")
    return a
