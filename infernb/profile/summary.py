"""A text summary of benchmark rows: every path's time and its speed relative to infernb's, per case."""
from __future__ import annotations

import re

_SKIP = re.compile(r"_p(10|90)_ms$")


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
