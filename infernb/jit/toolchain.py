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
def _nvrtc_library():
    """The NVRTC shared library CuPy loaded, through ctypes (for the calls CuPy's binding gets wrong)."""
    import ctypes
    import re as _re

    nvrtc()                                   # loads it
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if _re.search(r"/libnvrtc\.so", line)})
    except OSError:
        paths = []
    for path in paths or ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"]:
        try:
            lib = ctypes.CDLL(path)
            lib.nvrtcGetCUBINSize, lib.nvrtcGetCUBIN    # noqa: B018 (both symbols present)
            return lib
        except (OSError, AttributeError):
            continue
    raise DeviceError("could not open the NVRTC library CuPy uses (to read whole cubins)")


def get_cubin(prog) -> bytes:
    """The whole cubin of a compiled NVRTC program (``nvrtcGetCUBINSize`` bytes). CuPy 14.2's ``getCUBIN`` drops
    the last byte (it strips a trailing NUL as for PTX; cubins have none): the driver still loads such a file, but
    ``nvdisasm`` / ``cuobjdump`` reject it."""
    import ctypes

    lib = _nvrtc_library()
    size = ctypes.c_size_t()
    if lib.nvrtcGetCUBINSize(ctypes.c_void_p(int(prog)), ctypes.byref(size)) != 0:
        raise DeviceError("nvrtcGetCUBINSize failed")
    buf = ctypes.create_string_buffer(size.value)
    if lib.nvrtcGetCUBIN(ctypes.c_void_p(int(prog)), buf) != 0:
        raise DeviceError("nvrtcGetCUBIN failed")
    return buf.raw


def nvdisasm_path() -> str | None:
    """The ``nvdisasm`` binary: on ``PATH``, in the CUDA toolkit, or from the ``nvidia-cuda-nvdisasm`` wheel (a dev
    dependency); None if there is none."""
    import shutil
    import sys

    found = shutil.which("nvdisasm")
    if found:
        return found
    for root in [*(Path(p) for p in sys.path if p), Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))]:
        for cand in (root / "nvidia" / "cu13" / "bin" / "nvdisasm", root / "bin" / "nvdisasm"):
            if cand.is_file() and os.access(cand, os.X_OK):
                return str(cand)
    return None


def sass(cubin: bytes) -> str:
    """The SASS of a cubin (``nvdisasm -c``), to read on the CPU: which instructions a kernel's loops use."""
    import subprocess
    import tempfile

    tool = nvdisasm_path()
    if tool is None:
        raise DeviceError("nvdisasm not found: pip install nvidia-cuda-nvdisasm (a dev dependency)")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([tool, "-c", f.name], check=True, capture_output=True, text=True).stdout


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
