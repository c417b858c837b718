"""``ib.profile.compare`` over a few problems, for the ProfilerPanel and notebook 09 on machines without a GPU.

    python benchmarks/bench_compare.py [--out DIR] [--runs N]

Problems (bf16, 32 query / 8 KV heads, head dim 128): decode 64 x 4096 (plain and soft-cap 30 on the SFU's tanh),
prefill 1 x 8192 causal (plain, soft-cap, ALiBi), append 16 x 512 onto 8192 cached (page 16), block-sparse 1 x 8192
(a block-aligned window of 16 blocks of 64 x 64; SDPA with the dense mask, FlashInfer's BlockSparseAttentionWrapper). Each is timed with
infernb, FlashInfer (plain only), SDPA (one-request plain), FlexAttention (compiled with the same mods) and the eager
fp32 reference, interleaved; errors against float64; copy and GEMM ceilings measured in each problem's run. Writes
``compare_<device>_<date>.json``: ``{benchmark, device, date, results: [compare(...) dicts]}``.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parse_args, write_result  # noqa: E402


def main(argv=None) -> int:
    args = parse_args(argv, runs=15)
    import infernb as ib

    slopes = ib.variants.alibi_slopes(32).to("cuda")
    problems = [("decode", [1] * 64, [4096] * 64, None),
                ("decode", [1] * 64, [4096] * 64, ib.variants.softcap(30.0, approx=True)),
                ("prefill", [8192], [8192], None),
                ("prefill", [8192], [8192], ib.variants.softcap(30.0, approx=True)),
                ("prefill", [8192], [8192], ib.variants.alibi(slopes)),
                ("append", [512] * 16, [8704] * 16, None),
                ("block_sparse", [8192], [8192], None)]
    results, failed = ib.profile.compare_sweep(problems, runs=args.runs)
    for r in results:
        print(f"{r['case']} [{r['variant']}]: " + ", ".join(f"{k} {p['ms']:.3f} ms (err {p['err']:.1e})"
                                                            for k, p in r["paths"].items()), flush=True)
        if r["missing"]:
            print("   missing: " + "; ".join(f"{k}: {v[:100]}" for k, v in r["missing"].items()), flush=True)
    for label, why in failed.items():
        print(f"{label}: FAILED {why}", flush=True)
    if results:
        path = write_result(args.out, f"compare_{results[0]['device']}_{results[0]['date']}",
                            dict(benchmark="compare", device=results[0]["device"], date=results[0]["date"],
                                 results=results))
        print(f"wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
