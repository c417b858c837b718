"""Exceptions raised by infernb. Every message names the argument, what was expected and what came."""
from __future__ import annotations


class InfernbError(Exception):
    """Base class of every error infernb raises on purpose."""


class InputError(InfernbError, ValueError):
    """A tensor or argument does not have the shape, dtype, device or value range an op needs."""


class CompileError(InfernbError):
    """NVRTC rejected a generated kernel. ``str(err)`` shows the offending lines with context."""

    def __init__(self, message: str, *, kernel: str = "", log: str = "", source: str = ""):
        super().__init__(message)
        self.kernel = kernel
        self.log = log
        self.source = source


class DeviceError(InfernbError, RuntimeError):
    """A GPU-only operation was asked for where no usable CUDA device (or CuPy) is present."""


class OutOfPagesError(InfernbError, RuntimeError):
    """The page pool has too few free pages for an append or fork; nothing was changed."""


def is_int(x) -> bool:
    """An integer (Python or NumPy) and not a bool: ``True`` is an int to Python, never a count, size or id here."""
    import numpy as np

    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))
