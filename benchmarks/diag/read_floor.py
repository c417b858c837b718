"""How fast does this GPU *read* N bytes, timed the way the decode benchmark times a kernel (CUDA events, L2
flushed before each call, median)? References for a decode of N KV bytes, measured instead of assumed: a simple
streaming read kernel (16-byte loads, several in flight per thread, no computation) at several grid shapes, the best
shape per size, plus an empty launch (the events' own cost) and torch's device copy of N/2 bytes (N bytes moved).
Neither is a hard floor (a decode streams its bytes as well as these kernels do: the uniform cases of
bench_decode.py run as fast as the read kernel), but a kernel that must also compute cannot be expected to beat
the copy by much.

    python benchmarks/diag/read_floor.py [--out OUT.json] [--runs 50]

Diagnostic (not a benchmark of infernb): prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json

import torch

from infernb.profile import cuda_graph_time, cuda_time
from infernb.profile.read import launcher, read_floor


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()
    rows = []
    empty = launcher("empty")
    t = cuda_time(lambda: empty((1, 1, 1), (32, 1, 1), ()), runs=args.runs)
    rows.append(dict(what="empty launch", bytes=0, ms=t.median_ms))
    tg = cuda_graph_time(lambda: empty((1, 1, 1), (32, 1, 1), ()), runs=args.runs)
    rows.append(dict(what="empty launch (graph)", bytes=0, ms=tg.median_ms))
    for nbytes in (2**26, 2**27, 2**28, 2**30):
        buf = torch.randn(nbytes // 2, dtype=torch.bfloat16, device="cuda")
        best = read_floor(nbytes, args.runs, buf)
        gms = cuda_graph_time(best.pop("fn"), runs=args.runs).median_ms
        rows.append(dict(what="read kernel (best shape)", bytes=nbytes, graph_ms=gms, **best))
        half = buf[: nbytes // 4]
        dst = torch.empty_like(half)
        cms = cuda_time(lambda: dst.copy_(half), runs=args.runs).median_ms
        rows.append(dict(what="torch copy of bytes/2 (bytes moved)", bytes=nbytes, ms=cms, TBps=nbytes / cms / 1e9))
        del buf, dst, half
        torch.cuda.empty_cache()
    print(f"{'what':<38}{'MB':>8}{'us':>9}{'graph us':>10}{'TB/s':>7}  shape")
    for r in rows:
        print(f"{r['what']:<38}{r['bytes'] / 1e6:8.1f}{r['ms'] * 1e3:9.1f}"
              f"{r.get('graph_ms', float('nan')) * 1e3:10.1f}{r.get('TBps', float('nan')):7.2f}  "
              + " ".join(f"{k}={r[k]}" for k in ("unroll", "ctas_per_sm", "threads") if k in r))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(dict(device=torch.cuda.get_device_name(), rows=rows), fh, indent=1)


if __name__ == "__main__":
    main()
