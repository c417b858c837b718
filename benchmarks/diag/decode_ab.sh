#!/usr/bin/env bash
# A/B of the decode kernel against a baseline checkout in one device call (see decode_ab.py):
#   bash benchmarks/diag/decode_ab.sh BASELINE_DIR OUT_DIR [pytest -k expr]
# AB_ARGS: options of every run; AB_DEFINE / AB_ALT: a third run (tag def) with these -D defines / options.
# BASELINE_DIR holds infernb/ and kernels/ of the commit to compare with (git archive HEAD infernb kernels).
set -uo pipefail
BASE=$1; OUT=$2; K=${3:-}; EXTRA=${AB_ARGS:-}
export PYTHONUNBUFFERED=1
SITE=/tmp/site
PYTHONPATH=$PWD:$SITE INFERNB_CACHE_DIR=/tmp/ibc_new timeout 300 python3 benchmarks/diag/decode_ab.py --tag new --out $OUT/new.jsonl $EXTRA
[ -z "${AB_DEFINE:-}${AB_ALT:-}" ] || PYTHONPATH=$PWD:$SITE INFERNB_CACHE_DIR=/tmp/ibc_new timeout 300 python3 benchmarks/diag/decode_ab.py --tag def --out $OUT/def.jsonl $(echo "$EXTRA" | sed 's/--trace//') ${AB_DEFINE:+--define $AB_DEFINE} ${AB_ALT:-}
[ "$BASE" = - ] || PYTHONPATH=$BASE:$SITE INFERNB_CACHE_DIR=/tmp/ibc_old timeout 200 python3 benchmarks/diag/decode_ab.py --tag old --out $OUT/old.jsonl $(echo "$EXTRA" | sed 's/--trace//')
PYTHONPATH=$PWD:$SITE python3 - "$OUT" <<'PY'
import json, sys
import os
rows = [json.loads(l) for t in ("old", "new", "def") if os.path.exists(f"{sys.argv[1]}/{t}.jsonl")
        for l in open(f"{sys.argv[1]}/{t}.jsonl")]
for r in rows:
    if "trace" in r:
        print(r["tag"], r["case"], "trace (us)")
        for k, v in r["trace"].items():
            print("   ", k, v)
for r in rows:
    if "trace" not in r:
        print(f'{r["tag"]:4s} {r["case"]:9s} {r.get("layout", r.get("variant", "")):8s} ms {r["ms"]*1e3:7.1f}us '
              + (f'fi {r["fi_ms"]*1e3:7.1f}us ratio {r["ratio"]:.3f} ' if "fi_ms" in r else f'slowdown {r["slowdown"]:.3f} ')
              + (f'ratio {r["ratio"]:.3f} ' if "ratio" in r and "fi_ms" not in r else "")
              + f'err {r["err"]:.2e}' + (f' graph {r["graph_ms"]*1e3:.1f}us' if "graph_ms" in r else ""))
PY
if [ -n "$K" ]; then
  SEL=(); [ "$K" = all ] || SEL=(-k "$K")
  PYTHONPATH=$PWD:$SITE INFERNB_CACHE_DIR=/tmp/ibc_new timeout 240 python3 -m pytest -q -m gpu tests/ops/test_decode.py -p no:cacheprovider -o addopts="" -x "${SEL[@]}" 2>&1 | tail -5
fi
