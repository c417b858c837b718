#!/usr/bin/env bash
# The prefill kernel's GPU work in one device call: GPU tests, compute-sanitizer on a representative set, the
# benchmark. Usage on the GPU machine, from the repo root:  bash scripts/gpu_prefill.sh [OUT_DIR]
# PREFILL_PEAK=0 skips the mma.sync ceiling (benchmarks/diag/mma_peak.py), PREFILL_TESTS=0 the tests, PREFILL_SANITIZE=0 the sanitizers, PREFILL_BENCH=0 the benchmark; FI=0|1|2 is bench_prefill's --flashinfer.
set -uo pipefail
source scripts/gpu_env.sh "${1:-}"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv
[ "${PREFILL_PEAK:-1}" = 1 ] && step "mma.sync ceiling" sh -c "python3 benchmarks/diag/mma_peak.py | tee $OUT/mma_peak.txt"
if [ "${PREFILL_TESTS:-1}" = 1 ]; then
  step "GPU tests (prefill)" python3 -m pytest -q -m gpu tests/ops/test_prefill.py -p no:cacheprovider -o addopts="" \
    -n 8 ${PYTEST_K:+-k "$PYTEST_K"}
fi
if [ "${PREFILL_SANITIZE:-1}" = 1 ]; then
  sanitize memcheck tests/ops/test_prefill.py \
    "gpu and (b12-g4-d128-causal or b17-g8-d64-full or (p5-HND-d128 and rope_interleave and True) or split or edge or tile128)"
  sanitize racecheck tests/ops/test_prefill.py \
    "gpu and (b1-g4-d128-causal or b12-g8-d256-full or (p16-NHD-d128 and rope and False) or (split and 3))"
fi
[ "${PREFILL_BENCH:-1}" = 1 ] && step "benchmark: prefill" python3 benchmarks/bench_prefill.py --out "$OUT" \
  --flashinfer "${FI:-1}" --runs "${RUNS:-30}"
exit $status
