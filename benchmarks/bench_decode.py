"""Decode attention over a paged KV cache: infernb vs FlashInfer (best of its tensor-core and CUDA-core decode)
vs torch SDPA on contiguous (unpaged) KV, bf16, 32 query / 8 KV heads, head dim 128, page 16, one run.

    python benchmarks/bench_decode.py [--out DIR] [--runs N]

The comparison itself is :func:`infernb.profile.profile_decode` (what notebook 05 shows); the measurement around it
is ``infernb.profile.decode_cases.decode_benchmark``: the copy ceiling, references for each case's KV bytes (a
streaming read that computes nothing and a device copy moving them, infernb.profile.read), the variants and tuning
alternatives against plain decode on the 64 x 4096 case (checked against the float64 reference, timed in the same
rounds), targets and derived fields. Writes ``decode_<device>_<date>.json``. L2 is flushed before every timed call
(infernb.profile.cuda_time).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parse_args, write_result  # noqa: E402

SHAPE = dict(num_qo_heads=32, num_kv_heads=8, head_dim=128, page_size=16)
CASES = {  # name -> kv lengths
    "64x4096": [4096] * 64,
    "16x16384": [16384] * 16,
    "skewed_1x65536+63x512": [65536] + [512] * 63,
    "1x32768": [32768],
}
TARGETS = {"64x4096": 1.00, "16x16384": 1.00, "skewed_1x65536+63x512": 1.30, "1x32768": 1.30}  # x FlashInfer
VARIANT_CASE = "64x4096"
TUNING = [(3, 2)]                 # (stages, CTAs per SM) tried beside the default on VARIANT_CASE


def main(argv=None) -> int:
    args = parse_args(argv, runs=50)
    from infernb.profile.decode_cases import decode_benchmark, decode_summary

    result = decode_benchmark(CASES, targets=TARGETS, variant_case=VARIANT_CASE, tuning=TUNING, runs=args.runs,
                              shape=SHAPE)
    path = write_result(args.out, f"decode_{result['device']}_{result['date']}", result)
    print(decode_summary(result))
    print(f"device {result['device']} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
