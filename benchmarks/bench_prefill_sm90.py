"""The Hopper prefill kernel (issue 16) side by side with the mma.sync kernel, FlashInfer fa3 / fa2, cuDNN, SDPA
flash and FlexAttention, in one run.

    python benchmarks/bench_prefill_sm90.py [--out DIR] [--runs N] [--flashinfer 0|1] [--flex 0|1]

bf16, head_dim 128, 32 query / 8 KV heads, ragged K/V: one causal request of 8192 (plain, and soft-cap 30, a
relative-position bias and ALiBi on both kernels and FlexAttention) and of 16384 tokens, the skewed batch 1 x 16384
+ 63 x 512, 16 x 512 short requests, a full (non-causal) 4096, a sliding window of 1024 on 8192; the paged append
of 16 x 512 new tokens onto 8192 cached (page 16) against FlashInfer's paged fa3 / fa2; RoPE (the rotation pass,
then the kernel) on the 8192 request; head dims 64 and 256 on one causal 8192 (``head_dim_cases``). Every path checked against
the float64 reference on a row sample first, timed in interleaved rounds with the L2 flushed
(``infernb.profile.prefill_cases``). Targets (issue 16): >= 1.1x FlashInfer fa3 and >= 1.0x cuDNN on the one-request
cases. Writes ``hopper_prefill_<device>_<date>.json``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parse_args, write_result  # noqa: E402


def main(argv=None) -> int:
    args = parse_args(argv, runs=20, flashinfer=1, flex=1)
    import dataclasses

    from infernb.ops.prefill_sm90 import SM90_TRAITS, sm90_traits
    from infernb.profile.prefill_cases import prefill_cases

    # the schedules compared with the default (overlap inside a warpgroup + pingpong, 3 stages): none and each alone,
    # and the default's with 2 stages; BENCH_SM90="stages,sched;..." replaces the list
    spec = os.environ.get("BENCH_SM90")
    pairs = [(3, 0), (3, 1), (3, 2), (2, 3)] if spec is None else \
        [tuple(int(x) for x in part.split(",")) for part in spec.split(";") if part]
    alts = [dataclasses.replace(SM90_TRAITS, stages=st, sched=sc) for st, sc in pairs]
    import infernb as ib
    # variants on one request of 8192 (both kernels, FlexAttention with the same score_mod): soft-cap 30, a
    # relative-position bias written as arithmetic on (q, k), ALiBi (a captured tensor of slopes)
    relpos = ib.Variant("relpos", score_mod=lambda s, b, h, q, k: s - 0.01 * abs(q - k))
    alibi = ib.variants.alibi(ib.variants.alibi_slopes(32).to("cuda"))
    variants = [("softcap30", ib.variants.softcap(30.0)), ("softcap30_approx", ib.variants.softcap(30.0, approx=True)),
                ("relpos", relpos), ("alibi", alibi)]
    if os.environ.get("BENCH_VARIANTS") is not None:               # a subset (device time: FlexAttention compiles each)
        variants = [x for x in variants if x[0] in os.environ["BENCH_VARIANTS"].split(",")]
    fa2 = os.environ.get("BENCH_FA2", "1") == "1"                  # 0: FlashInfer's fa3 only (each is a JIT build)
    cases = [dict(name="causal_8192", qo=[8192], kv=[8192], sm90=True, sm90_configs=alts, variants=variants,
                  rope_cmp=True),
             dict(name="causal_16384", qo=[16384], kv=[16384], sm90=True, sm90_configs=alts),
             dict(kind="paged", name="append_16x512_on_8192", qo=[512] * 16, kv=[8192 + 512] * 16, sm90=True,
                  sm90_configs=[dataclasses.replace(SM90_TRAITS, sched=3)]),      # (the synchronous arrivals)
             dict(name="skewed_1x16384_63x512", qo=[16384] + [512] * 63, kv=[16384] + [512] * 63, sm90=True),
             dict(name="documents_16x512_ragged", qo=[512] * 16, kv=[512] * 16, sm90=True),
             dict(name="full_4096", qo=[4096], kv=[4096], causal=False, sm90=True),
             dict(name="window_1024_on_8192", qo=[8192], kv=[8192], window=1024, sm90=True)]
    only = os.environ.get("BENCH_CASES")
    cases = [c for c in cases if only is None or c["name"] in only.split(",")]
    result = prefill_cases(cases, runs=args.runs, flashinfer=args.flashinfer, flex=bool(args.flex), fa2=fa2) \
        if cases else None
    # head dims 64 and 256: one causal request of 8192 beside FlashInfer fa3 / fa2, cuDNN and the mma.sync kernel
    # (BENCH_HEAD_DIMS="" skips them)
    tag = os.environ.get("BENCH_TAG", "")                          # a partial run's file suffix (e.g. "subset")
    for d in [int(x) for x in os.environ.get("BENCH_HEAD_DIMS", "64,256").split(",") if x]:
        # (head dim 256: also 80-key blocks, FA3's tile there)
        alt = [dataclasses.replace(sm90_traits(256), block_n=80)] if d == 256 else []
        r = prefill_cases([dict(name=f"causal_8192_hd{d}", qo=[8192], kv=[8192], sm90=True, sm90_configs=alt)],
                          runs=args.runs,
                          flashinfer=args.flashinfer, flex=False, head_dim=d, fa2=fa2)
        if result is None:
            result = dict(r, cases=[])
        result.setdefault("head_dim_cases", {})[str(d)] = r["cases"]
    path = write_result(args.out, f"hopper_prefill_{result['device']}_{result['date']}{'_' + tag if tag else ''}",
                        result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
