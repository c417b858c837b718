"""What every benchmark script shares: the --out argument, FlashInfer when installed, writing the JSON."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from infernb.profile import optional_flashinfer  # noqa: F401  (the scripts import it from here)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def parse_args(argv=None, **extra) -> argparse.Namespace:
    """``--out DIR`` (default ``benchmarks/results``) plus ``extra`` ``{flag: default}`` integer options."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    for flag, default in extra.items():
        ap.add_argument(f"--{flag}", type=int, default=default)
    return ap.parse_args(argv)


def write_result(out_dir: str, stem: str, result: dict) -> Path:
    """Write ``result`` as ``<out_dir>/<stem>.json`` (device name and date belong in ``stem``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem.replace(' ', '_')}.json"
    path.write_text(json.dumps(result, indent=1))
    return path


def prefill_config(text: str, head_dim: int, **kw):
    """A prefill kernel configuration from ``"m,block_n,sub_n,stages,ctas"`` (experiments:
    ``bench_prefill.py``'s ``BENCH_CONFIGS``, ``diag/prefill_ncu.py --config``); ``kw``: other traits fields. The
    planner's fixed cost is the default tile's (``TRAITS``) unless ``kw`` gives one: a configuration is compared
    with the default under the same plan."""
    from infernb.ops.prefill import TRAITS, PrefillTraits

    m, bn, sn, st, c = (int(x) for x in text.split(","))
    default = TRAITS.get((head_dim, 64 * m))
    if default is not None:
        kw.setdefault("fixed_cost", default.fixed_cost)
    return PrefillTraits(head_dim, 64 * m, m, bn, st, c, sub_n=sn, **kw)

