"""compile-or-load: the one entry point ops use to get a kernel."""
from __future__ import annotations

import threading
import time
import warnings

import numpy as np

from ..device import device_info
from ..errors import CompileError, DeviceError
from . import cache, toolchain
from .compiler import compile_options, compile_spec
from .report import CompileReport, KernelResources, parse_ptxas_log
from .spec import KernelSpec, kernels_digest, kernels_stamp

_memo: dict[str, "Kernel"] = {}          # cache key -> kernel
_by_spec: dict[tuple, "Kernel"] = {}     # (spec, arch, options) -> kernel: the per-launch fast path
_streams: dict[tuple[int, int], object] = {}
_lock = threading.Lock()
#: How often (seconds) the launch fast path re-stats ``kernels/`` to notice edits made in a live session.
SOURCE_CHECK_INTERVAL = 1.0
_source_check = {"t": 0.0, "stamp": None}


def _sources_unchanged() -> bool:
    """True if ``kernels/`` is as it was at the last check (re-stat at most every SOURCE_CHECK_INTERVAL s)."""
    now = time.monotonic()
    if now - _source_check["t"] < SOURCE_CHECK_INTERVAL:
        return True
    stamp = kernels_stamp()
    same = stamp == _source_check["stamp"]
    _source_check.update(t=now, stamp=stamp)
    return same


class Kernel:
    """A compiled specialization: its cubin, its report, and (on a GPU) its loaded functions."""

    def __init__(self, spec: KernelSpec, arch: str, cubin: bytes, lowered: dict[str, str], report: CompileReport):
        self.spec, self.arch, self.cubin, self.lowered, self.report = spec, arch, cubin, lowered, report
        self._modules: dict[int, object] = {}
        self._functions: dict[tuple[int, str], object] = {}
        self._smem_opt_in: dict[tuple[int, str], int] = {}

    def __repr__(self) -> str:
        return f"<infernb Kernel {self.spec.name} [{self.arch}] kernels={list(self.lowered)}>"

    def _repr_html_(self) -> str:
        return self.report._repr_html_()

    def function(self, short_name: str, device_index: int = 0):
        """The CuPy ``Function`` for entry point ``short_name`` on GPU ``device_index`` (loaded once)."""
        if short_name not in self.lowered:
            raise KeyError(f"{self.spec.name} has no kernel {short_name!r}; it has {list(self.lowered)}")
        key = (device_index, short_name)
        fn = self._functions.get(key)
        if fn is None:
            cp = _cupy()
            with cp.cuda.Device(device_index):
                mod = self._modules.get(device_index)
                if mod is None:
                    mod = cp.cuda.function.Module()
                    mod.load(self.cubin)
                    self._modules[device_index] = mod
                fn = self._functions[key] = mod.get_function(self.lowered[short_name])
        return fn

    def global_array(self, name: str, count: int, dtype, device_index: int = 0):
        """A CuPy array over the ``__device__`` global ``name`` (``count`` elements of ``dtype``) of this module on
        GPU ``device_index`` (loaded if needed): for diagnostics a kernel writes there (e.g. the decode trace)."""
        cp = _cupy()
        self.function(next(iter(self.lowered)), device_index)          # loads the module
        with cp.cuda.Device(device_index):
            ptr = self._modules[device_index].get_global_var(name)
            nbytes = count * np.dtype(dtype).itemsize
            if not isinstance(ptr, cp.cuda.MemoryPointer):                # (CuPy versions return an address)
                ptr = cp.cuda.MemoryPointer(cp.cuda.UnownedMemory(int(ptr), nbytes, None), 0)
            return cp.ndarray((count,), dtype, memptr=ptr)

    def launch(self, short_name: str, grid, block, args, *, shared_mem: int = 0, device_index: int | None = None):
        """Launch ``short_name`` on torch's current stream. ``args``: torch tensors (passed as device
        pointers, zero copy) and NumPy scalars (passed by value; Python ints become int32, floats float32)."""
        kargs = tuple(_kernel_arg(a) for a in args)
        self.launcher(short_name, shared_mem=shared_mem, device_index=device_index)(tuple(grid), tuple(block), kargs)

    def launcher(self, short_name: str, *, shared_mem: int = 0, device_index: int | None = None):
        """A lean launch path for a hot loop: ``go = kernel.launcher(...)`` then ``go(grid, block, kargs)`` with
        ``kargs`` already kernel arguments (``np.uint64`` device pointers, NumPy scalars), on torch's current
        stream. The function lookup and the shared-memory opt-in happen once, here."""
        import torch

        if not torch.cuda.is_available():
            raise DeviceError(f"cannot launch {self.spec.name}/{short_name}: no CUDA GPU is available "
                              "(kernels compile without one, but run only on a GPU)")
        dev = torch.cuda.current_device() if device_index is None else device_index
        fn = self._functions.get((dev, short_name)) or self.function(short_name, dev)
        if shared_mem > 48 * 1024 and self._smem_opt_in.get((dev, short_name), 0) < shared_mem:
            from cupy.cuda import driver      # opt in to more than 48 KiB of dynamic shared memory (once)

            driver.funcSetAttribute(fn.ptr, driver.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, shared_mem)
            self._smem_opt_in[(dev, short_name)] = shared_mem

        def go(grid, block, kargs):
            fn(grid, block, kargs, shared_mem=shared_mem, stream=_stream(dev))
        return go

    def launch_packed(self, short_name: str, grid, block, params: list[bytes], *, shared_mem: int = 0,
                      device_index: int | None = None):
        """Launch ``short_name`` on torch's current stream with each parameter given as its bytes (the value as the
        kernel takes it: an 8-byte pointer, a 4-byte int, a 128-byte ``CUtensorMap`` struct), through
        ``cuLaunchKernel``'s parameter array: for parameters CuPy's argument conversion does not take (structs by
        value, such as TMA descriptors)."""
        import ctypes

        from cupy.cuda import driver

        self.launcher(short_name, shared_mem=shared_mem, device_index=device_index)   # loads, opts in to smem
        import torch

        dev = torch.cuda.current_device() if device_index is None else device_index
        fn = self._functions[(dev, short_name)]
        bufs = [ctypes.create_string_buffer(bytes(p), len(p)) for p in params]
        ptrs = (ctypes.c_void_p * max(1, len(bufs)))(*[ctypes.cast(b, ctypes.c_void_p) for b in bufs])
        g, bl = (tuple(grid) + (1, 1))[:3], (tuple(block) + (1, 1))[:3]
        with _cupy().cuda.Device(dev):                  # the device's context current for the driver call
            driver.launchKernel(fn.ptr, *g, *bl, shared_mem, _stream(dev).ptr, ctypes.addressof(ptrs), 0)


def _stream(device_index: int):
    """CuPy view of torch's current stream on ``device_index`` (cached per raw stream handle)."""
    import torch

    ts = torch.cuda.current_stream(device_index)
    handle = ts.cuda_stream
    st = _streams.get((device_index, handle))
    if st is None:
        cp = _cupy()
        with cp.cuda.Device(device_index):
            if hasattr(ts, "__cuda_stream__") and hasattr(cp.cuda.Stream, "from_external"):
                st = cp.cuda.Stream.from_external(ts)
            else:
                st = cp.cuda.ExternalStream(handle, device_index)
        _streams[(device_index, handle)] = st
    return st


def _kernel_arg(a):
    import torch

    if isinstance(a, torch.Tensor):
        if not a.is_cuda:
            raise DeviceError(f"kernel argument is a {a.device} tensor; kernels need CUDA tensors")
        return np.uint64(a.data_ptr())
    if isinstance(a, (bool, np.bool_)):
        return np.int32(bool(a))
    if isinstance(a, int):
        return np.int32(a)
    if isinstance(a, float):
        return np.float32(a)
    if isinstance(a, np.generic):
        return a
    raise TypeError(f"unsupported kernel argument type {type(a).__name__}")


def _cupy():
    try:
        import cupy
    except ImportError as e:
        raise DeviceError("running kernels needs CuPy: pip install 'infernb[cu13]'") from e
    return cupy


def build(spec: KernelSpec, arch: str | None = None, *, extra_options: tuple[str, ...] = (),
          force: bool = False) -> Kernel:
    """Compile ``spec`` for ``arch`` (default: the device's, see :func:`infernb.device_info`), or load it
    from the disk cache. Works without a GPU. Raises :class:`infernb.CompileError` with the offending lines.

    The returned kernel's ``report`` has registers, spills, shared memory, compile time, cache hit/miss.
    """
    fast = (spec, arch, extra_options)
    if not force and (k := _by_spec.get(fast)) is not None:
        if _sources_unchanged():
            return k
        _by_spec.clear()   # a file under kernels/ changed: re-key everything (the edited kernels recompile)
    arch = toolchain.normalize_arch(arch or device_info().arch)
    if not spec.targets(arch):
        raise CompileError(f"{spec.name} is written for {', '.join(spec.archs)}, not {arch}")
    t0 = time.perf_counter()
    options = compile_options(arch, extra_options)
    source = spec.render()
    key = cache.cache_key(source, arch, options, toolchain.nvrtc_version(), kernels_digest(),
                          toolchain.toolchain_fingerprint())
    if not force and (k := _memo.get(key)) is not None:
        _by_spec[fast] = k
        return k
    with _lock:
        if not force and (k := _memo.get(key)) is not None:
            return k
        path = cache.entry_path(spec.name, key)
        note, entry = "", None
        if not force:
            try:
                entry = cache.read_entry(path, expect=dict(name=spec.name, arch=arch,
                                                           kernels=[short for short, _ in spec.kernels]))
            except cache.CorruptEntry as e:
                note = f"rebuilt: corrupt cache entry ({e})"
                warnings.warn(f"infernb: cache entry {path} is damaged ({e}); recompiling", stacklevel=2)
        if entry is not None:
            meta, cubin = entry
            hit = True
        else:
            res = compile_spec(spec, arch, extra_options)
            cubin = res["cubin"]
            meta = dict(name=spec.name, arch=arch, lowered=res["lowered"], log=res["log"],
                        compile_seconds=res["seconds"], nvrtc_version=list(toolchain.nvrtc_version()))
            try:
                cache.write_entry(path, meta, cubin)
            except OSError as e:   # a read-only or broken cache dir must not throw away a good compile
                note = f"not cached: {e}"
                warnings.warn(f"infernb: could not write the kernel cache entry {path} ({e}); "
                              "continuing with the compiled kernel", stacklevel=2)
            hit = False
        resources = parse_ptxas_log(meta["log"])
        kernels = []
        for short, lowered in meta["lowered"].items():
            r = resources.get(lowered, {})
            kernels.append(KernelResources(name=short, lowered_name=lowered, **{
                f: r.get(f, 0) for f in ("registers", "spill_stores", "spill_loads", "stack_frame",
                                         "smem_static", "barriers")}))
        report = CompileReport(spec_name=spec.name, arch=arch, cache_key=key, kernels=tuple(kernels),
                               compile_seconds=meta["compile_seconds"], cache_hit=hit,
                               load_seconds=time.perf_counter() - t0,
                               nvrtc_version=tuple(meta["nvrtc_version"]), cubin_bytes=len(cubin), note=note)
        k = Kernel(spec, arch, cubin, dict(meta["lowered"]), report)
        _memo[key] = k
        _by_spec[fast] = k
        return k


def clear_memory_cache() -> None:
    """Forget kernels built in this process (the disk cache stays); the next :func:`build` re-hashes the
    sources and reads the disk or recompiles. Call it after editing a file under ``kernels/`` in a live
    session: within a process, a specialization already built is reused without re-reading the sources."""
    with _lock:
        _memo.clear()
        _by_spec.clear()
