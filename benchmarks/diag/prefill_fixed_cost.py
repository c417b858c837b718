"""The planner's per-item cost (``fixed_cost``, in key tokens) against the prefill kernel's time, on the benchmark's
cases (32 / 8 heads, d 128, bf16, default tile), interleaved rounds, L2 flushed; and the naive round-robin plan.

    python3 benchmarks/diag/prefill_fixed_cost.py [--costs 256,512,1024,2048,4096] [--runs 15]

Prints one line per case and writes prefill_fixed_cost.json to --out (a diagnostic: the numbers pick the traits'
fixed_cost, benchmarks/NOTES.md).
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import infernb as ib  # noqa: E402
from infernb.ops.prefill import PrefillRunner, default_tile_q, traits  # noqa: E402
from infernb.profile import cuda_time_interleaved, device_name  # noqa: E402

HQ, HKV, D = 32, 8, 128
CASES = {"causal_8192": ([8192], [8192]), "causal_16384": ([16384], [16384]),
         "skewed_1x16384_63x512": ([16384] + [512] * 63, [16384] + [512] * 63),
         "append_16x512_on_8192": ([512] * 16, [8192 + 512] * 16)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--costs", default="256,512,1024,2048,4096")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--out", default="/tmp")
    a = ap.parse_args()
    costs = [float(c) for c in a.costs.split(",")]
    g = torch.Generator(device="cuda").manual_seed(0)
    out = dict(device=device_name(), cases={})
    for name, (qo, kv) in CASES.items():
        q = torch.randn(sum(qo), HQ, D, device="cuda", generator=g, dtype=torch.bfloat16)
        k = torch.randn(sum(kv), HKV, D, device="cuda", generator=g, dtype=torch.bfloat16)
        v = torch.randn(sum(kv), HKV, D, device="cuda", generator=g, dtype=torch.bfloat16)
        tq = default_tile_q(float(np.mean(qo)) * HQ // HKV, D)
        tr = traits(D, tq)
        shape = dict(num_qo_heads=HQ, num_kv_heads=HKV, head_dim=D, causal=True, tile_q=tq,
                     ctas_per_sm=tr.ctas_per_sm)
        fns, plans = {}, {}
        for c in costs:
            plans[f"cost{int(c)}"] = ib.plan(qo, kv, fixed_cost=c, **shape)
        plans["naive"] = ib.plan(qo, kv, strategy="naive", fixed_cost=tr.fixed_cost, **shape)
        for label, p in plans.items():
            r = PrefillRunner(p)
            fns[label] = (lambda r=r: r(q, k, v))
        t = cuda_time_interleaved(fns, warmup=3, runs=a.runs)
        out["cases"][name] = {lab: dict(ms=t[lab].median_ms, items=int(plans[lab].num_items),
                                        split_units=int(len(plans[lab].merge_unit))) for lab in fns}
        print(f"{name} (tile {tq}): " + ", ".join(f"{lab}={t[lab].median_ms:.3f}ms/{plans[lab].num_items}it"
                                                  for lab in fns), flush=True)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "prefill_fixed_cost.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
