"""Keys per compute step of hooked specializations (a variant's score_mod / mask_mod), against plain causal, in the
same interleaved rounds (L2 flushed): each variant at the default traits' hooked step and at the plain path's step
(``PrefillRunner(config=...)``), every path first checked against the float64 reference on a sample of rows.
One causal request of 8192 tokens, 32 / 8 heads, d 128, bf16. A diagnostic for the traits' ``hooked_n``
(benchmarks/NOTES.md); the registers and spills of each build are printed with the times.

    python3 benchmarks/diag/prefill_hooked_step.py [--runs 20] [--out DIR]
"""
import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

import infernb as ib  # noqa: E402
from infernb import reference  # noqa: E402
from infernb.ops.prefill import PrefillRunner, plan_batch, traits, variant_traits  # noqa: E402
from infernb.profile import cuda_time_interleaved, device_name  # noqa: E402
from infernb.testing import rel_error  # noqa: E402

HQ, HKV, D, N = 32, 8, 128, 8192


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--out", default="/tmp")
    a = ap.parse_args()
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(N, h, D, device="cuda", generator=g, dtype=torch.bfloat16) for h in (HQ, HKV, HKV))
    variants = {"softcap30_approx": ib.variants.softcap(30.0, approx=True),
                "alibi": ib.variants.alibi(ib.variants.alibi_slopes(HQ).to("cuda"))}
    p = plan_batch([N], [N], num_qo_heads=HQ, num_kv_heads=HKV, head_dim=D, dtype=torch.bfloat16, causal=True)
    base = traits(D, p.tile_q)
    runners = {"plain": PrefillRunner(p)}
    for name, var in variants.items():
        hooked = variant_traits(base, var)
        runners[f"{name}_k{hooked.step_n}"] = PrefillRunner(p, variant=var)
        if hooked.step_n != base.step_n:
            runners[f"{name}_k{base.step_n}"] = PrefillRunner(p, variant=var, config=dataclasses.replace(base))
    rows = torch.arange(N - 64, N)
    out = dict(device=device_name(), case="causal_8192", runs=a.runs, results={})
    for label, r in runners.items():
        var = next((vv for n, vv in variants.items() if label.startswith(n)), None)
        kw = {} if var is None else var.reference_kwargs()
        ref, _ = reference.attention(q[rows], k, v, [0, 64], [0, N], causal=True, **kw)
        o = r(q, k, v)[0]
        res = r.kernel.report.kernels[0]
        out["results"][label] = dict(err=rel_error(o[rows], ref), registers=res.registers,
                                     spill_bytes=res.spill_stores + res.spill_loads)
    t = cuda_time_interleaved({lb: (lambda r=r: r(q, k, v)) for lb, r in runners.items()}, runs=a.runs)
    for label, tm in t.items():
        out["results"][label]["ms"] = tm.median_ms
        out["results"][label]["over_plain"] = tm.median_ms / t["plain"].median_ms
        print(label, json.dumps(out["results"][label]), flush=True)
    Path(a.out, "prefill_hooked_step.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
