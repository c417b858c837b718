"""Per-CTA timelines of the decode kernel on the benchmark's cases (bf16, 32 q / 8 KV heads, d 128, page 16), for
notebook 05 and benchmarks/NOTES.md: one launch per case after an L2 flush, with the trace compiled in
(``infernb.profile.decode_trace``), written as phases in microseconds to ``trace_decode_<device>_<date>.json``.

    python benchmarks/trace_decode.py [--out DIR]
"""
from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parse_args, write_result  # noqa: E402

from bench_decode import CASES, SHAPE  # noqa: E402


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np

    import infernb as ib
    from infernb.profile import decode_trace, device_name, random_decode_batch, trace_phases, trace_summary

    cases = {}
    for name, lens in CASES.items():
        cache, ids, q = random_decode_batch(lens, **SHAPE)
        table = cache.page_table(ids)
        p = ib.plan([1] * len(lens), lens, page_table=table, **SHAPE)
        ph = trace_phases(decode_trace(p, cache, table, q))
        summary = trace_summary(ph)
        print(name, summary)
        cases[name] = dict(summary=summary, phases={k: (np.round(v, 3).tolist() if isinstance(v, np.ndarray) else v)
                                                    for k, v in ph.items()})
        del cache, q
    from infernb.jit.spec import kernels_digest   # which kernel sources ran (a copied checkout may lack git)

    result = dict(benchmark="trace_decode", device=device_name(), date=dt.date.today().isoformat(),
                  kernels_digest=kernels_digest()[:16],
                  shape=dict(SHAPE, dtype="bf16"), cases=cases)
    path = write_result(args.out, f"trace_decode_{device_name()}_{result['date']}", result)
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
