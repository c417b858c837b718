#!/usr/bin/env bash
# infernb developer entry point: sets up a virtual environment, then runs one job.
#
#   scripts/dev.sh lab     set up, then open the tutorials (notebooks/) in JupyterLab   [main job]
#   scripts/dev.sh test    set up, then run the test suite (CPU tests + notebooks under nbval)
#   scripts/dev.sh setup   set up only
#
# Environment: INFERNB_VENV (default .venv), PYTHON (default python3),
#   INFERNB_TORCH: pip arguments for torch (split into words), installed *before* the project so that the
#   project's dependencies never pick a torch build (default: torch==2.13.0, a local CPU wheel on the team's
#   machines). Elsewhere, PyPI's Linux torch is the multi-GB CUDA build: on a CPU-only machine use
#   INFERNB_TORCH="torch --index-url https://download.pytorch.org/whl/cpu"; on a GPU machine INFERNB_TORCH=torch.
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
    # shellcheck disable=SC2086  (word splitting intended: a requirement plus pip options)
    "$vpy" -m pip install -q ${INFERNB_TORCH:-torch==2.13.0}
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
