"""Prefill and append attention on tensor cores, side by side with FlashInfer (fa2) and PyTorch in one run.

    python benchmarks/bench_prefill.py [--out DIR] [--runs N] [--flashinfer 0|1|2] [--flex 0|1]

Cases (issue 18; bf16, head_dim 128, 32 query / 8 KV heads):

- ``causal_8192`` / ``causal_16384``: one request of n new tokens, causal, ragged K/V: infernb, FlashInfer's ragged
  fa2 prefill, SDPA flash and cuDNN (K/V expanded to 32 heads outside the timing);
- ``append_16x512_on_8192``: 16 requests x 512 new tokens onto 8192 cached, causal, paged (page 16, NHD): infernb's
  append, FlashInfer's paged fa2 prefill;
- ``skewed``: ragged causal 1 x 16384 + 63 x 512 new tokens: infernb's balanced plan, the same kernel on a naive
  plan (one item per unit, round robin), FlashInfer fa2;
- variants on ``causal_8192``: soft-cap 30 (accurate tanhf, and the SFU's tanh as FlashInfer computes it), ALiBi,
  RoPE (Llama; ``rope_path`` auto, here the rotation pass, and the in-tile rotation), each against plain causal in
  the same rounds (FlashInfer fa2's logits_soft_cap / ALIBI /
  ROPE_LLAMA with ``--flashinfer 2``: each one more JIT build);
- FlexAttention (``--flex 1``, ``torch.compile``d, GQA, causal / window block mask) on the one-request cases, plain
  and with the same score_mods (the variants' Python functions, unchanged);
- ``window_1024``: sliding window 1024 on 8192 causal: only the window's keys are read (FlashInfer fa2's
  window_left with ``--flashinfer 2``).
- ``documents_4_in_8192``: a document mask (``variants.document``, 4 x 2048 tokens) on one causal request of 8192,
  planned with the variant's block structure (empty blocks not read, full ones without mask_mod) and densely
  (``block_sparse=False``), FlexAttention with the same mask_mod; ``documents_4x2048_ragged``: the same documents
  as 4 ragged requests, the bound.

Every path is checked against the float64 reference (a row sample of the long cases) before it is timed. Times:
CUDA events, median, L2 flushed, paths interleaved per round (``infernb.profile.cuda_time_interleaved``).
TFLOP/s count the visible (q, k) pairs: 4 x heads x d x pairs. The bf16 GEMM ceiling (8192^3, torch) is measured
in the same run. Writes ``prefill_<device>_<date>.json``.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parse_args, prefill_config, write_result  # noqa: E402

HQ, HKV, D = 32, 8, 128
#: planner settings compared on some cases: an item's fixed cost in key tokens (pipeline restart, Q tile, epilogue)
FIXED_COSTS = [(f"fixed_cost{c}", dict(fixed_cost=float(c))) for c in (64, 1024)]
#: the split threshold compared on the skewed and short-row cases: a split plan is taken when its busiest CTA is more
#: than merge_gain below the unsplit plan's (plan_batch: 0.05), at the 128-row tile's fixed cost
MERGE_GAINS = [(f"merge_gain{g}", dict(fixed_cost=512.0, merge_gain=g)) for g in (0.01, 0.0)]


def configs():
    """Kernel configurations compared with the default on the causal cases (``PrefillRunner(config=...)``); the
    environment's ``BENCH_CONFIGS="m,block_n,sub_n,stages,ctas;..."`` replaces the list (experiments)."""
    import os

    from infernb.ops.prefill import PrefillTraits
    spec = os.environ.get("BENCH_CONFIGS")
    if spec is None:
        return [PrefillTraits(D, 64, 1, 32, 3, 3)]
    return [prefill_config(part, D) for part in filter(None, spec.split(";"))]


def wanted(case: str) -> bool:
    """``BENCH_CASES="causal_8192,..."`` runs those cases only (experiments); all by default."""
    import os
    cases = os.environ.get("BENCH_CASES")
    return cases is None or case in cases.split(",")


def main(argv=None) -> int:
    args = parse_args(argv, runs=30, flashinfer=1, flex=1)
    import torch

    import infernb as ib
    from infernb.profile.prefill_cases import prefill_cases

    alibi = ib.variants.alibi(ib.variants.alibi_slopes(HQ).to("cuda"))
    cases = [dict(name="causal_8192", qo=[8192], kv=[8192], rope_cmp=True, tile_cmp=True, plan_variants=FIXED_COSTS,
                  configs=configs(), variants=[("softcap30", ib.variants.softcap(30.0)),
                                               ("softcap30_approx", ib.variants.softcap(30.0, approx=True)),
                                               ("alibi", alibi)]),
             dict(name="causal_16384", qo=[16384], kv=[16384], configs=configs()),
             dict(kind="paged", name="append_16x512_on_8192", qo=[512] * 16, kv=[8192 + 512] * 16),
             dict(name="skewed_1x16384_63x512", qo=[16384] + [512] * 63, kv=[16384] + [512] * 63, naive=True,
                  plan_variants=MERGE_GAINS),
             dict(name="window_1024_on_8192", qo=[8192], kv=[8192], window=1024),
             # a variant's mask_mod: 4 documents in one 8192-token request, by its block structure and densely;
             # the same documents as 4 ragged requests (plain causal) are the bound of what a mask can save
             dict(name="documents_4_in_8192", qo=[8192], kv=[8192],
                  masks=[("document4", ib.variants.document(torch.arange(4, device="cuda").repeat_interleave(2048)))]),
             dict(name="documents_4x2048_ragged", qo=[2048] * 4, kv=[2048] * 4),
             # block-sparse (issue 14): a block-aligned sliding window of 16 blocks of 64 x 64; a token-exact window
             # of 1024 and 16 documents of 512 through their variants' block structure, against FlexAttention
             dict(kind="block_sparse", name="block_window_16x64_on_8192", n=8192, block=(64, 64), blocks_per_row=16),
             dict(name="window_variant_1024_on_8192", qo=[8192], kv=[8192],
                  masks=[("window1024", ib.variants.sliding_window(1024))]),
             dict(name="documents_16_in_8192", qo=[8192], kv=[8192],
                  masks=[("document16", ib.variants.document(torch.arange(16, device="cuda").repeat_interleave(512)))]),
             dict(name="documents_16x512_ragged", qo=[512] * 16, kv=[512] * 16, plan_variants=MERGE_GAINS)]
    result = prefill_cases([c for c in cases if wanted(c["name"])], runs=args.runs, flashinfer=args.flashinfer,
                           flex=bool(args.flex))
    subset = "" if wanted("any-case") else "_subset"
    path = write_result(args.out, f"prefill_{result['device']}_{result['date']}{subset}", result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
