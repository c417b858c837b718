#!/usr/bin/env bash
# The Hopper prefill kernel's GPU work in one device call (an sm_90 GPU): its GPU tests (ragged grid, paged
# grid, variants, schedules), compute-sanitizer memcheck / racecheck on a representative set, its benchmark.
# Usage on the GPU machine, from the repo root:  bash scripts/gpu_sm90.sh [OUT_DIR]
# SM90_TESTS=0 skips the tests, SM90_SANITIZE=0 the sanitizers, SM90_BENCH=0 the benchmark (BENCH_* variables: see
# bench_prefill_sm90.py); SM90_TRACE=1 adds the warpgroup trace, CASCADE_BENCH=1 the cascade benchmark; every step runs under a
# timeout (a hung kernel -- an mbarrier phase or a setmaxnreg that never completes -- must not eat the device call).
set -uo pipefail
source scripts/gpu_env.sh "${1:-}"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv
if [ "${SM90_TESTS:-1}" = 1 ]; then
  step "GPU tests (Hopper prefill, block-sparse and cascade on both backends, the trace)" \
    timeout "${SM90_TEST_TIMEOUT:-420}" python3 -m pytest -q -m gpu -rf --tb=short \
    tests/ops/test_prefill_sm90.py tests/ops/test_block_sparse.py tests/ops/test_cascade.py tests/test_profile.py \
    -p no:cacheprovider -o addopts="" -n 15 ${PYTEST_K:+-k "$PYTEST_K"}
fi
if [ "${SM90_SANITIZE:-1}" = 1 ]; then
  step "memcheck" timeout 240 compute-sanitizer --tool memcheck --error-exitcode 1 python3 -m pytest -q \
    -p no:cacheprovider -o addopts="" tests/ops/test_prefill_sm90.py \
    -k "gpu and (b12-g4-causal or b17-g8-full or p5-HND or edge_rows or window)"
  step "racecheck" timeout 240 compute-sanitizer --tool racecheck --error-exitcode 1 python3 -m pytest -q \
    -p no:cacheprovider -o addopts="" tests/ops/test_prefill_sm90.py \
    -k "gpu and (b1-g4-causal or True-p16-NHD or prompt8192_few_ctas)"
fi
[ "${SM90_TRACE:-0}" = 1 ] && step "trace: Hopper prefill" timeout 120 python3 benchmarks/trace_sm90.py --out "$OUT"
[ "${CASCADE_BENCH:-0}" = 1 ] && step "benchmark: cascade" timeout "${CASCADE_BENCH_TIMEOUT:-300}" \
  python3 benchmarks/bench_cascade.py --out "$OUT" --runs "${RUNS:-20}" --flashinfer "${FI:-1}" --sweep "${SWEEP:-0}"
[ "${SM90_BENCH:-1}" = 1 ] && step "benchmark: Hopper prefill" timeout "${SM90_BENCH_TIMEOUT:-420}" \
  python3 benchmarks/bench_prefill_sm90.py --out "$OUT" --flashinfer "${FI:-1}" --flex "${FLEX:-1}" --runs "${RUNS:-10}"
exit $status
