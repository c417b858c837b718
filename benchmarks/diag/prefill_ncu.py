"""One prefill launch to profile with Nsight Compute (the benchmark's causal 8192 case, 32 / 8 heads, d 128):

    ncu --clock-control none --section SpeedOfLight --section WarpStateStats --section ComputeWorkloadAnalysis \
        -k regex:prefill --launch-skip 1 --launch-count 1 python3 benchmarks/diag/prefill_ncu.py [--tile 64]

``--flashinfer 1`` runs FlashInfer's ragged fa2 prefill on the same inputs instead (its kernel: ``-k regex:Prefill``),
for the same sections side by side.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import infernb as ib  # noqa: E402
from infernb.ops.prefill import PrefillRunner  # noqa: E402
from _common import prefill_config  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--tile", type=int, default=64)
ap.add_argument("--n", type=int, default=8192)
ap.add_argument("--causal", type=int, default=1)
ap.add_argument("--time", type=int, default=0, help="also time 20 launches (CUDA events) and print TFLOP/s")
ap.add_argument("--config", default="", help="m,block_n,sub_n,stages,ctas: a PrefillTraits other than the default")
ap.add_argument("--flashinfer", type=int, default=0, help="profile FlashInfer's fa2 ragged prefill instead")
a = ap.parse_args()
g = torch.Generator(device="cuda").manual_seed(0)
q = torch.randn(a.n, 32, 128, device="cuda", generator=g, dtype=torch.bfloat16)
k = torch.randn(a.n, 8, 128, device="cuda", generator=g, dtype=torch.bfloat16)
v = torch.randn(a.n, 8, 128, device="cuda", generator=g, dtype=torch.bfloat16)
if a.flashinfer:
    from infernb.profile import optional_flashinfer
    from infernb.profile.prefill import flashinfer_ragged
    fi = optional_flashinfer()
    ws = torch.zeros(256 * 2**20, dtype=torch.uint8, device="cuda")
    call = flashinfer_ragged(fi, q, k, v, [a.n], [a.n], causal=bool(a.causal), workspace=ws)
    for _ in range(2):
        call()
    torch.cuda.synchronize()
    sys.exit(0)
tr = ib.ops.prefill_ops.traits(128, a.tile)
cfg = None
if a.config:
    cfg = tr = prefill_config(a.config, 128, fixed_cost=tr.fixed_cost)
p = ib.plan([a.n], [a.n], num_qo_heads=32, num_kv_heads=8, head_dim=128, causal=bool(a.causal), tile_q=a.tile,
            ctas_per_sm=tr.ctas_per_sm, fixed_cost=tr.fixed_cost)
r = PrefillRunner(p, config=cfg)
for _ in range(2):
    r(q, k, v)
torch.cuda.synchronize()
print(p)
if a.time:
    from infernb.profile import cuda_time, visible_pairs
    t = cuda_time(lambda: r(q, k, v), warmup=3, runs=20)
    fl = 4 * 32 * 128 * visible_pairs([a.n], [a.n], bool(a.causal), -1)
    print(f"tile {a.tile} n {a.n} causal {a.causal} config {a.config or 'default'}: {t.median_ms:.3f} ms, "
          f"{fl / t.median_ms / 1e9:.0f} TFLOP/s")
