#!/usr/bin/env bash
# Everything that needs the GPU, in one go (for the lent H100; see ../shared/GPU.md):
#   GPU tests, compute-sanitizer memcheck/racecheck on the kernel tests, the benchmarks, the notebooks.
# Usage on the GPU machine, from the repo root:  bash scripts/gpu_check.sh [OUT_DIR]
# Wheels the GPU image lacks (notebook stack, FlashInfer) are taken from .whl/ if present.
set -uo pipefail
source scripts/gpu_env.sh "${1:-}"

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
python3 -c "import torch, cupy, infernb; print(torch.__version__, cupy.__version__, infernb.device_info())"
# GPU_TESTS=0 skips the GPU test suite (to split a run across two device calls of at most 10 minutes)
[ "${GPU_TESTS:-1}" = 0 ] || step "GPU tests" python3 -m pytest -q -m gpu tests -p no:cacheprovider -o addopts="" -x
[ "${ONLY_TESTS:-0}" = 1 ] && exit $status
sanitize memcheck tests/ops/test_merge.py "gpu and (two_way or split or 13-128)"
sanitize racecheck tests/ops/test_merge.py "gpu_merge_states and 5-128"
sanitize memcheck tests/layout "gpu"
sanitize memcheck tests/variants "gpu_probe_matches_python_for_every_builtin"
sanitize memcheck tests/ops/test_decode.py \
  "grid and (32x8-128-NHD-bf16 or 8x1-256-HND-f16 or 32x32-64-NHD-bf16) or rotary_dims or sigmoid or one_call"
sanitize racecheck tests/ops/test_decode.py \
  "grid and (32x8-128-NHD-bf16 or 32x8-64-NHD-bf16 or 32x8-256-HND-bf16) or rotary_dims and 128-False or sigmoid or runner_reuse"
step "benchmark: decode" python3 benchmarks/bench_decode.py --out "$OUT"
# prefill: its sanitizer runs and benchmark (its GPU tests ran above)
step "prefill: sanitizers and benchmark" env PREFILL_TESTS=0 bash scripts/gpu_prefill.sh "$OUT"
if [ -z "${DECODE_ONLY:-}" ]; then   # DECODE_ONLY=1: only the decode benchmark (the others' kernels unchanged)
  step "benchmark: jit latency" python3 benchmarks/bench_jit.py --out "$OUT"
  step "benchmark: merge" python3 benchmarks/bench_merge.py --out "$OUT"
  step "benchmark: paged append" python3 benchmarks/bench_append.py --out "$OUT"
  step "benchmark: planning time (this host's CPU)" python3 benchmarks/bench_plan.py --out "$OUT"
fi
step "notebooks (nbval)" python3 -m pytest -q -p no:cacheprovider -o addopts="" --nbval-lax notebooks/
exit $status
