#!/usr/bin/env bash
# Everything that needs the GPU, in one go (for the lent H100; see ../shared/GPU.md):
#   GPU tests, compute-sanitizer memcheck/racecheck on the kernel tests, the benchmarks, the notebooks.
# Usage on the GPU machine, from the repo root:  bash scripts/gpu_check.sh [OUT_DIR]
# Wheels the GPU image lacks (notebook stack, FlashInfer) are taken from .whl/ if present.
set -uo pipefail
OUT=${1:-${OUT:-/tmp/infernb-gpu-out}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 INFERNB_CACHE_DIR=$(mktemp -d)
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=$PWD:/tmp/site PATH=/tmp/site/bin:$PATH
  python3 -m ipykernel install --user --name python3 >/dev/null 2>&1
else
  export PYTHONPATH=$PWD
fi
status=0
step() { echo; echo "=== $1"; shift; "$@" || { echo "!!! FAILED ($?): $*"; status=1; }; }

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
python3 -c "import torch, cupy, infernb; print(torch.__version__, cupy.__version__, infernb.device_info())"
# GPU_TESTS=0 skips the GPU test suite (to split a run across two device calls of at most 10 minutes)
[ "${GPU_TESTS:-1}" = 0 ] || step "GPU tests" python3 -m pytest -q -m gpu tests -p no:cacheprovider -o addopts="" -x
[ "${ONLY_TESTS:-0}" = 1 ] && exit $status
step "compute-sanitizer memcheck" compute-sanitizer --tool memcheck --error-exitcode 1 \
  python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/ops/test_merge.py -k "gpu and (two_way or split or 13-128)"
step "compute-sanitizer racecheck" compute-sanitizer --tool racecheck --error-exitcode 1 \
  python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/ops/test_merge.py -k "gpu_merge_states and 5-128"
step "compute-sanitizer memcheck (paged cache)" compute-sanitizer --tool memcheck --error-exitcode 1 \
  python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/layout -k gpu
step "compute-sanitizer memcheck (variant probes)" compute-sanitizer --tool memcheck --error-exitcode 1 \
  python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/variants -k "gpu_probe_matches_python_for_every_builtin"
step "compute-sanitizer memcheck (decode)" compute-sanitizer --tool memcheck --error-exitcode 1 \
  python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/ops/test_decode.py \
  -k "grid and (32x8-128-NHD-bf16 or 8x1-256-HND-f16 or 32x32-64-NHD-bf16) or rotary_dims or sigmoid or one_call"
step "compute-sanitizer racecheck (decode)" compute-sanitizer --tool racecheck --error-exitcode 1 \
  python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/ops/test_decode.py \
  -k "grid and (32x8-128-NHD-bf16 or 32x8-64-NHD-bf16 or 32x8-256-HND-bf16) or rotary_dims and 128-False or sigmoid or runner_reuse"
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
