#!/usr/bin/env bash
# The Hopper prefill kernel's GPU work in one device call (an sm_90 GPU): its GPU tests (ragged grid, paged
# grid, variants, schedules), compute-sanitizer memcheck / racecheck on a representative set, its benchmark.
# Usage on the GPU machine, from the repo root:  bash scripts/gpu_sm90.sh [OUT_DIR]
# SM90_TESTS=0 skips the tests, SM90_SANITIZE=0 the sanitizers, SM90_BENCH=0 the benchmark; every step runs under a
# timeout (a hung kernel -- an mbarrier phase or a setmaxnreg that never completes -- must not eat the device call).
set -uo pipefail
source scripts/gpu_env.sh "${1:-}"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv
if [ "${SM90_TESTS:-1}" = 1 ]; then
  step "GPU tests (Hopper prefill)" timeout "${SM90_TEST_TIMEOUT:-300}" python3 -m pytest -q -m gpu \
    tests/ops/test_prefill_sm90.py -p no:cacheprovider -o addopts="" -n 12 ${PYTEST_K:+-k "$PYTEST_K"}
fi
if [ "${SM90_SANITIZE:-1}" = 1 ]; then
  step "memcheck" timeout 240 compute-sanitizer --tool memcheck --error-exitcode 1 python3 -m pytest -q \
    -p no:cacheprovider -o addopts="" tests/ops/test_prefill_sm90.py \
    -k "gpu and (b12-g4-causal or b17-g8-full or p5-HND or edge_rows or window)"
  step "racecheck" timeout 240 compute-sanitizer --tool racecheck --error-exitcode 1 python3 -m pytest -q \
    -p no:cacheprovider -o addopts="" tests/ops/test_prefill_sm90.py \
    -k "gpu and (b1-g4-causal or True-p16-NHD or prompt8192_few_ctas)"
fi
[ "${SM90_BENCH:-1}" = 1 ] && step "benchmark: Hopper prefill" timeout "${SM90_BENCH_TIMEOUT:-420}" \
  python3 benchmarks/bench_prefill_sm90.py --out "$OUT" --flashinfer "${FI:-1}" --flex "${FLEX:-1}" --runs "${RUNS:-10}"
exit $status
