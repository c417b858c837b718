"""Same-process A/B of two decode kernel sources: the working tree's headers against a baseline's, interleaved.

The baseline's headers come first on NVRTC's include path (``-I<base>``, an extra option and so its own cache
key): ``#include <infernb/decode.cuh>`` and everything it includes resolve there, while the runner, the plan and
the records stay the working tree's (the A/B of a kernel-only change). Both kernels are checked against the float64
reference on the same batch (outputs poisoned first), then timed in interleaved rounds (L2 flushed before each
call), so clocks and temperature weigh on both alike. The four decode benchmark cases (``bench_decode.py``; bf16,
32 query / 8 KV heads, d 128, page 16), NHD and HND. Prints one JSON line per case and writes them to ``--out``.

    python benchmarks/diag/decode_ab_inproc.py --base build/ab_base/kernels/include --out ab.jsonl [--runs 60]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import infernb as ib
from infernb.ops.paged_decode import DecodeRunner
from infernb.profile import cuda_time_interleaved, random_decode_batch
from infernb.profile.decode_cases import decode_reference
from infernb.testing import rel_error

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_ab import CASES, SHAPE  # noqa: E402  (the decode benchmark's cases, as the two-checkout A/B runs them)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="the baseline's kernels/include directory")
    ap.add_argument("--out", required=True)
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--layouts", nargs="*", default=["NHD", "HND"])
    args = ap.parse_args()
    base = Path(args.base).resolve()
    if not (base / "infernb" / "decode.cuh").is_file():
        raise SystemExit(f"{base}: no infernb/decode.cuh")
    rows = []
    for name, lens in CASES.items():
        cache, ids, q = random_decode_batch(lens, **SHAPE)
        table = cache.page_table(ids)
        for layout in args.layouts:
            c = cache if layout == "NHD" else cache.to_layout("HND")
            p = ib.plan([1] * len(lens), lens, page_table=table, **SHAPE)
            runners = {"new": DecodeRunner(p, c, table), "old": DecodeRunner(p, c, table, extra_options=(f"-I{base}",))}
            ref = decode_reference(c, table, q)
            row = dict(case=name, layout=layout)
            outs = {}
            for tag, r in runners.items():
                out = torch.full_like(q, float("nan"))
                lse = torch.full(q.shape[:2], float("nan"), dtype=torch.float32, device=q.device)
                r(q, out=out, lse=lse)
                row[f"err_{tag}"] = rel_error(out, ref)
                outs[tag] = out
            row["max_abs_new_vs_old"] = float((outs["new"].float() - outs["old"].float()).abs().max())
            t = cuda_time_interleaved({tag: (lambda r=r: r(q)) for tag, r in runners.items()}, runs=args.runs)
            row.update({f"ms_{k}": v.median_ms for k, v in t.items()})
            row.update({f"p90_{k}": v.p90_ms for k, v in t.items()})
            row["new_over_old"] = t["new"].median_ms / t["old"].median_ms
            print(json.dumps(row), flush=True)
            rows.append(row)
            del c, runners
        del cache, q
        torch.cuda.empty_cache()
    Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
