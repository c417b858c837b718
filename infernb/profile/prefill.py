"""Prefill timing side by side: infernb's prefill kernel, FlashInfer's fa2 prefill (when installed) and torch SDPA
(flash, cuDNN) on the same ragged causal batch, in interleaved rounds; and the FLOPs a mask leaves visible."""
from __future__ import annotations

import numpy as np
import torch

from .timing import cuda_time, cuda_time_interleaved


def visible_pairs(qo_lens, kv_lens, causal: bool, window_left: int = -1) -> int:
    """(query, key) pairs a bottom-right aligned causal / sliding-window mask leaves visible, summed over requests.
    Attention FLOPs are ``4 x num_qo_heads x head_dim x`` this."""
    n = 0
    for L, S in zip(qo_lens, kv_lens):
        p = np.arange(S - L, S, dtype=np.int64)                 # the queries' positions
        hi = np.minimum(p, S - 1) if causal else np.full(L, S - 1, np.int64)
        lo = np.maximum(0, p - window_left) if window_left >= 0 else np.zeros(L, np.int64)
        n += int(np.maximum(hi - lo + 1, 0).sum())
    return n


def gemm_ceiling_tflops(n: int = 8192, runs: int = 10) -> float:
    """bf16 matrix product ``n^3`` through torch, in TFLOP/s: the roof a compute-bound kernel is held to."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = cuda_time(lambda: a @ b, warmup=3, runs=runs).median_ms
    return 2 * n ** 3 / (ms * 1e-3) / 1e12


def profile_prefill(cases: dict, *, num_qo_heads: int = 32, num_kv_heads: int = 8, head_dim: int = 128,
                    causal: bool = True, runs: int = 20, seed: int = 0) -> list[dict]:
    """Time the prefill of each ragged batch ``{name: (qo_lens, kv_lens)}`` (bf16, random inputs) with infernb, with
    FlashInfer's ragged fa2 prefill when it is installed, and, for one-request batches, with SDPA flash and cuDNN
    (K/V expanded to the query heads outside the timing). Returns rows ``{case, flops, <path>_ms, <path>_tflops}``
    in the schema of ``benchmarks/bench_prefill.py``'s JSON (:func:`infernb.viz.tflops_bars` draws them)."""
    from ..ops.prefill import PrefillRunner, _plan_for

    g = torch.Generator(device="cuda").manual_seed(seed)
    rows = []
    for name, (qo, kv) in cases.items():
        q = torch.randn(sum(qo), num_qo_heads, head_dim, device="cuda", generator=g, dtype=torch.bfloat16)
        k = torch.randn(sum(kv), num_kv_heads, head_dim, device="cuda", generator=g, dtype=torch.bfloat16)
        v = torch.randn(sum(kv), num_kv_heads, head_dim, device="cuda", generator=g, dtype=torch.bfloat16)
        plan, _ = _plan_for(q, np.asarray(qo), np.asarray(kv), num_kv_heads, head_dim, 16, causal, -1, None, None,
                            None)
        runner = PrefillRunner(plan)
        fns = {"infernb": lambda r=runner, q=q, k=k, v=v: r(q, k, v)}
        try:
            import flashinfer

            ptr = lambda x: torch.as_tensor(np.r_[0, np.cumsum(x)], dtype=torch.int32, device="cuda")  # noqa: E731
            w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(torch.zeros(256 * 2**20, dtype=torch.uint8,
                                                                            device="cuda"), "NHD", backend="fa2")
            w.plan(ptr(qo), ptr(kv), num_qo_heads, num_kv_heads, head_dim, causal=causal, q_data_type=torch.bfloat16)
            fns["flashinfer_fa2"] = lambda w=w, q=q, k=k, v=v: w.run(q, k, v)
        except ImportError:
            pass
        if len(qo) == 1:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            rep = num_qo_heads // num_kv_heads
            qs, ks, vs = (t.transpose(0, 1)[None] for t in (q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)))
            for label, be in (("sdpa_flash", SDPBackend.FLASH_ATTENTION), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)):
                def call(be=be, qs=qs, ks=ks, vs=vs):
                    with sdpa_kernel(be):
                        return torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=causal)
                try:
                    call()
                    fns[label] = call
                except RuntimeError:                      # a backend this torch build or GPU lacks
                    pass
        times = cuda_time_interleaved(fns, warmup=5, runs=runs)
        flops = 4 * num_qo_heads * head_dim * visible_pairs(qo, kv, causal)
        row = dict(case=name, flops=flops)
        for label, t in times.items():
            row[f"{label}_ms"] = t.median_ms
            row[f"{label}_tflops"] = flops / (t.median_ms * 1e-3) / 1e12
        rows.append(row)
    return rows
