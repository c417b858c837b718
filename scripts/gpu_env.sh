# Sourced by the GPU scripts (gpu_check.sh, gpu_prefill.sh), from the repo root, with the output folder as $1:
# OUT, the environment (the wheels the GPU image lacks, from .whl/ if present), `step NAME CMD...` (runs CMD, records
# a failure in $status and goes on) and `sanitize TOOL TEST_FILE K_EXPR` (compute-sanitizer over a pytest selection).
OUT=${1:-${OUT:-/tmp/infernb-gpu-out}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 INFERNB_CACHE_DIR=${INFERNB_CACHE_DIR:-$(mktemp -d)}
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=$PWD:/tmp/site PATH=/tmp/site/bin:$PATH
  python3 -m ipykernel install --user --name python3 >/dev/null 2>&1
else
  export PYTHONPATH=$PWD
fi
status=0
step() { echo; echo "=== $1"; shift; "$@" || { echo "!!! FAILED ($?): $*"; status=1; }; }
sanitize() {
  step "compute-sanitizer $1 ($2)" compute-sanitizer --tool "$1" --error-exitcode 1 \
    python3 -m pytest -q -p no:cacheprovider -o addopts="" "$2" -k "$3"
}
