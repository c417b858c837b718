"""Public entry points. Each op runs a CUDA kernel on CUDA tensors and the reference / emulator on CPU ones."""
from __future__ import annotations

from ..jit import KernelSpec
from ..layout import append_kernel
from . import gemm, merge, paged_decode, prefill as prefill_ops, prefill_sm90
from .block_sparse import block_sparse_attention
from .cascade import CascadeRunner, DecodeStep, cascade_attention, cascade_choice, cascade_tree, decode_runner
from .paged_decode import DecodeRunner, decode
from .merge import merge_gather, merge_state, merge_states
from .prefill import PrefillRunner, append, prefill
from .run import run


def kernel_specializations() -> list[KernelSpec]:
    """Every kernel specialization the library can generate today (CI compiles them all without a GPU)."""
    from ..variants import examples, probe_spec

    return [*merge.specializations(), *append_kernel.specializations(), *(probe_spec(v) for v in examples()),
            *paged_decode.specializations(), *prefill_ops.specializations(), *gemm.specializations(),
            *prefill_sm90.specializations()]


__all__ = ["DecodeRunner", "PrefillRunner", "append", "block_sparse_attention", "CascadeRunner", "cascade_attention", "cascade_choice", "cascade_tree", "DecodeStep", "decode_runner", "decode", "kernel_specializations", "merge_gather", "merge_state", "merge_states",
           "prefill", "run"]
