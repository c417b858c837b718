"""infernb: a Jupyter-first research library for LLM attention kernels.

``import infernb`` is cheap and works with or without a GPU: it imports torch, never CuPy, plotly or
ipywidgets (those load inside the functions that need them). ``infernb.device_info()`` says which
device and CUDA architecture kernels target.

Layers (imports point down; docs/ARCHITECTURE.md): widgets -> viz -> profile -> ops -> plan -> variants -> layout -> jit
-> reference.
"""
from __future__ import annotations

from . import errors, layout, reference, testing
from .device import DeviceInfo, device_info, has_gpu
from .errors import CompileError, DeviceError, InfernbError, InputError, OutOfPagesError
from .layout import BlockSparse, PagedKVCache, PageTable
from .reference import RoPE
# `infernb.plan` is the planning *function* (`ib.plan(...)`); the subpackage stays importable as
# `infernb.plan.presets` etc. through sys.modules.
from .plan import Plan, emulate, plan  # noqa: E402
from . import variants  # noqa: E402
from .variants import Variant  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "BlockSparse", "OutOfPagesError", "Variant", "variants", "PageTable", "PagedKVCache", "layout", "viz", "widgets",
    "CompileError", "DeviceError", "DeviceInfo", "InfernbError", "InputError", "device_info", "errors",
    "has_gpu", "jit", "ops", "reference", "testing", "merge_state", "merge_states", "plan", "Plan", "emulate", "run",
    "decode", "DecodeRunner", "prefill", "append", "PrefillRunner", "RoPE", "block_sparse_attention",
    "cascade_attention", "cascade_choice", "decode_runner", "__version__",
]


def __getattr__(name: str):
    # Lazy subpackages: jit/ops pull in more machinery; keep `import infernb` light.
    import importlib

    if name in ("jit", "ops", "viz", "widgets", "profile"):
        return importlib.import_module(f".{name}", __name__)
    if name in ("merge_state", "merge_states", "run", "decode", "DecodeRunner", "prefill", "append", "PrefillRunner",
                "block_sparse_attention", "cascade_attention", "cascade_choice", "decode_runner"):
        return getattr(importlib.import_module(".ops", __name__), name)
    raise AttributeError(f"module 'infernb' has no attribute {name!r}")
