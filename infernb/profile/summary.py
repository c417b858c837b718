"""A text summary of benchmark rows: every path's time and its speed relative to infernb's, per case."""
from __future__ import annotations

import re

_SKIP = re.compile(r"_p(10|90)_ms$")


def short_lens(lens):
    """Per-request lengths for a result file: the list when short, else ``"16384 + 63 x 512"`` or ``"N requests"``."""
    return lens if len(lens) <= 4 else f"{lens[0]} + {len(lens) - 1} x {lens[1]}" if len(set(lens[1:])) == 1 \
        else f"{len(lens)} requests"


def speed_table(rows: list[dict], *, base: str = "infernb", rate: str | None = None) -> str:
    """One line per (case, path) of rows in the benchmarks' JSON schema (``{case, <path>_ms, ...}``): the median
    time, the rate (``rate``: ``"tflops"`` or ``"TBps"``, when the rows carry ``<path>_<rate>``) and ``base``'s time
    over the path's (``> 1``: the path is faster than ``base``; ``< 1``: slower). Returns the table as text.
    """
    lines = [f"{'case':<26} {'path':<26} {'ms':>8} {rate or '':>8} {'speed vs ' + base:>18}"]
    for r in rows:
        t0 = r.get(f"{base}_ms")
        paths = [k[:-3] for k in r if k.endswith("_ms") and not _SKIP.search(k) and isinstance(r[k], (int, float))
                 and not k.startswith(("target", "read_ref", "copy_same"))]
        for p in paths:
            t = r[f"{p}_ms"]
            rv = r.get(f"{p}_{rate}") if rate else None
            rel = f"{t0 / t:18.2f}" if t0 else f"{'':>18}"
            lines.append(f"{str(r.get('case', '')):<26} {p:<26} {t:8.3f} "
                         f"{(f'{rv:8.1f}' if isinstance(rv, (int, float)) else ' ' * 8)} {rel}")
    return "\n".join(lines)


def compare_table(result: dict, *, base: str = "infernb") -> str:
    """A :func:`infernb.profile.compare` result as text, fastest first: each path's median time, its speed
    relative to ``base`` (``> 1``: faster than ``base``), TFLOP/s, TB/s and error against the float64 reference."""
    lines = [f"{'path':<14} {'ms':>9} {'speed vs ' + base:>18} {'TFLOP/s':>8} {'TB/s':>6} {'error':>9}"]
    t0 = result["paths"].get(base, {}).get("ms")
    for lab, p in sorted(result["paths"].items(), key=lambda kv: kv[1]["ms"]):
        rel = f"{t0 / p['ms']:18.2f}" if t0 else " " * 18
        lines.append(f"{lab:<14} {p['ms']:9.3f} {rel} {p['TFLOPs']:8.1f} {p['TBps']:6.2f} {p['err']:9.1e}")
    return "\n".join(lines)
