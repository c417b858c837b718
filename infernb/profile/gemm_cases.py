"""The Hopper GEMM's measurement (``benchmarks/bench_gemm.py``): infernb's wgmma + TMA kernel against
``torch.matmul`` on the same operands, interleaved rounds with the L2 flushed, each path checked against float64
row and column sums of the product first. TFLOP/s = 2 M N K / time; the target (issue 16): >= 90% of torch."""
from __future__ import annotations

import datetime

import torch

from ..ops.gemm import gemm
from ..testing import rel_error
from .prefill import timing_fields
from .timing import cuda_time_interleaved, device_name


def gemm_benchmark(shapes, *, runs: int = 20, seed: int = 0) -> dict:
    """``shapes``: ``[(M, N, K)]`` (C = A B^T, A [M, K], B [N, K] bf16). Returns the benchmark JSON: per shape the
    median / p10 / p90 ms and TFLOP/s of ``infernb`` and ``torch`` (``a @ b.T``), their errors, and the ratio."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    result = dict(device=device_name(), date=datetime.date.today().isoformat(), torch=torch.__version__,
                  dtype="bf16", cases=[])
    for M, N, K in shapes:
        a = torch.randn(M, K, device="cuda", generator=g).to(torch.bfloat16)
        b = torch.randn(N, K, device="cuda", generator=g).to(torch.bfloat16)
        ones_n = torch.ones(N, 1, device="cuda", dtype=torch.float64)
        ref_rows = a.double() @ (b.double().T @ ones_n)            # row sums of A B^T without the product
        out = torch.full((M, N), float("nan"), device="cuda", dtype=torch.bfloat16)
        fns = {"infernb": lambda: gemm(a, b, out=out), "torch": lambda: a @ b.T}
        errs = {label: rel_error(fn().double() @ ones_n, ref_rows) for label, fn in fns.items()}
        times = cuda_time_interleaved(fns, warmup=5, runs=runs)
        flops = 2.0 * M * N * K
        row = dict(case=f"{M}x{N}x{K}", M=M, N=N, K=K, flops=flops, errors=errs, **timing_fields(times, flops))
        row["infernb_over_torch_speed"] = times["torch"].median_ms / times["infernb"].median_ms
        result["cases"].append(row)
        print(f"{row['case']}: infernb {row['infernb_ms']:.3f} ms ({row['infernb_tflops']:.0f} TF), torch "
              f"{row['torch_ms']:.3f} ms ({row['torch_tflops']:.0f} TF): {row['infernb_over_torch_speed']:.2f}x of "
              f"torch; errors {errs}", flush=True)
    return result
