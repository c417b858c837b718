"""Which device and CUDA architecture infernb will use.

Detection uses torch only (no CuPy import), so it is cheap and works on a machine without a GPU.
"""
from __future__ import annotations

import dataclasses
import functools
import os

#: Architecture kernels are built for when there is no GPU to ask (the lent H100).
DEFAULT_ARCH = "sm_90a"
#: Multiprocessor count assumed when there is no GPU (H100 SXM).
DEFAULT_SM_COUNT = 132


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    """What infernb knows about the device it targets.

    ``arch`` is the NVRTC target: ``sm_90a`` on Hopper (so wgmma/TMA are available), ``sm_XY`` for
    the device's own compute capability otherwise, ``DEFAULT_ARCH`` (or ``$INFERNB_ARCH``) without a GPU.
    """

    has_cuda: bool
    name: str
    arch: str
    sm_count: int
    capability: tuple[int, int] | None
    total_memory_gib: float | None

    def __str__(self) -> str:
        if self.has_cuda:
            return (f"infernb device: {self.name} (compute {self.capability[0]}.{self.capability[1]}, "
                    f"{self.sm_count} SMs, {self.total_memory_gib:.0f} GiB); kernels compile for {self.arch} "
                    "and run on the GPU")
        return (f"infernb device: no CUDA GPU; kernels compile for {self.arch} (NVRTC needs no GPU) but "
                f"do not run; ops fall back to the PyTorch reference / CPU emulator; planner assumes "
                f"{self.sm_count} SMs")


def arch_for_capability(major: int, minor: int) -> str:
    """NVRTC ``-arch`` for a compute capability: ``sm_90a`` for 9.0 (Hopper), else ``sm_<major><minor>``."""
    return "sm_90a" if (major, minor) == (9, 0) else f"sm_{major}{minor}"


@functools.lru_cache(maxsize=None)
def device_info(index: int | None = None) -> DeviceInfo:
    """Describe the CUDA device infernb uses (``torch.cuda.current_device()`` unless ``index``)."""
    import torch

    env_arch = os.environ.get("INFERNB_ARCH")
    if torch.cuda.is_available():
        idx = torch.cuda.current_device() if index is None else index
        p = torch.cuda.get_device_properties(idx)
        cap = (p.major, p.minor)
        return DeviceInfo(True, p.name, env_arch or arch_for_capability(*cap), p.multi_processor_count,
                          cap, p.total_memory / 2**30)
    return DeviceInfo(False, "cpu", env_arch or DEFAULT_ARCH, DEFAULT_SM_COUNT, None, None)


def has_gpu() -> bool:
    """True when a CUDA device is visible to torch."""
    return device_info().has_cuda
