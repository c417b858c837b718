"""Compile on demand: render a kernel family from ``kernels/`` with a specialization, compile it with NVRTC
for an explicit architecture (no GPU needed), cache the cubin on disk, load it with CuPy on the GPU.

>>> k = infernb.jit.build(spec, arch="sm_90a")      # doctest: +SKIP
>>> print(k.report)                                   # registers, spills, smem, compile time, cache hit
"""
from .builder import Kernel, build, clear_memory_cache
from .cache import cache_dir
from .compiler import compile_options
from .report import CompileReport, KernelResources
from .spec import INCLUDE_DIR, KERNELS_DIR, KernelSpec, kernels_digest
from . import toolchain  # noqa: F401  (infernb.jit.toolchain is public: fingerprint, arch helpers)
from .toolchain import CI_ARCHS, cuda_include_dirs, normalize_arch, nvrtc_version

__all__ = ["CI_ARCHS", "CompileReport", "INCLUDE_DIR", "KERNELS_DIR", "Kernel", "KernelResources", "KernelSpec",
           "build", "cache_dir", "clear_memory_cache", "compile_options", "cuda_include_dirs", "kernels_digest",
           "normalize_arch", "nvrtc_version"]
