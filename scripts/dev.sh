#!/usr/bin/env bash
# infernb developer entry point: sets up a virtual environment, then runs one job.
#
#   scripts/dev.sh lab     set up, then open the tutorials (notebooks/) in JupyterLab   [main job]
#   scripts/dev.sh test    set up, then run the test suite (CPU tests + notebooks under nbval)
#   scripts/dev.sh setup   set up only
#
# Environment: INFERNB_VENV (default .venv), PYTHON (default python3),
#   INFERNB_TORCH: pip requirement for torch, installed *before* the project so that pip never
#   resolves torch to the multi-GB CUDA build on a CPU machine (default: torch==2.13.0, the CPU build
#   provided on our machines). On a GPU machine set it to the CUDA build you want.
set -euo pipefail
cd "$(dirname "$0")/.."
job=${1:-test}
shift || true
VENV=${INFERNB_VENV:-.venv}
PY=${PYTHON:-python3}

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "[infernb] creating $VENV"
    "$PY" -m venv "$VENV"
  fi
  local vpy="$VENV/bin/python"
  "$vpy" -m pip install -q --upgrade pip
  if ! "$vpy" -c "import torch" >/dev/null 2>&1; then
    echo "[infernb] installing ${INFERNB_TORCH:-torch==2.13.0}"
    "$vpy" -m pip install -q "${INFERNB_TORCH:-torch==2.13.0}"
  fi
  echo "[infernb] installing infernb[dev] (CuPy + NVRTC wheels, notebook stack, test tools)"
  "$vpy" -m pip install -q -e ".[dev]"
  "$vpy" -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (infernb)" >/dev/null
  "$vpy" -c "import infernb; print(infernb.device_info())"
}

case "$job" in
  setup) setup ;;
  lab)   setup
         root=(); [ "$(id -u)" = 0 ] && root=(--allow-root)    # JupyterLab refuses to start as root without it
         exec "$VENV/bin/jupyter" lab "${root[@]}" notebooks/ "$@" ;;
  test)  setup; exec "$VENV/bin/python" -m pytest "$@" ;;
  *) echo "usage: $0 {lab|test|setup} [args...]" >&2; exit 2 ;;
esac
