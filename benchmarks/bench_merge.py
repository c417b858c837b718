"""LSE-merge kernel bandwidth: infernb vs torch (eager, fp32) vs FlashInfer (when installed), one run.

    python benchmarks/bench_merge.py [--out DIR]

Bytes counted: every input state read once (v and s) and the merged output written once.
Checks every path against infernb.reference before timing it. Writes ``merge_<device>_<date>.json``.
"""
from __future__ import annotations

import datetime as dt
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import optional_flashinfer, parse_args, write_result  # noqa: E402

CASES = [  # (seq_len, num_states, num_heads, head_dim); the first is latency-bound (launch overhead shows)
    (1, 2, 32, 128),
    (8192, 2, 32, 128),
    (8192, 4, 32, 128),
    (2048, 16, 32, 128),
    (65536, 2, 8, 64),
    (4096, 8, 32, 256),
]


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    import infernb
    from infernb import reference
    from infernb.profile import cuda_time, device_name
    from infernb.testing import assert_close

    flashinfer = optional_flashinfer()
    dtype = torch.bfloat16
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for n, k, h, d in CASES:
        v = torch.randn(n, k, h, d, device="cuda", generator=gen).to(dtype)
        s = torch.randn(n, k, h, device="cuda", generator=gen) * 4
        nbytes = v.numel() * v.element_size() + s.numel() * 4 + n * h * d * v.element_size() + n * h * 4
        ref_v, ref_s = reference.merge_states(v, s, compute_dtype=torch.float64)
        paths = {
            "infernb": lambda: infernb.merge_states(v, s),
            "torch_eager_fp32": lambda: reference.merge_states(v, s, compute_dtype=torch.float32),
        }
        if flashinfer is not None:
            s2 = s * (1 / math.log(2))  # FlashInfer's LSE is base 2
            paths["flashinfer"] = lambda: (lambda o: (o[0], o[1] * math.log(2)))(flashinfer.merge_states(v, s2))
        row = dict(seq_len=n, num_states=k, num_heads=h, head_dim=d, dtype=str(dtype), bytes=nbytes)
        for name, fn in paths.items():
            ov, os_ = fn()
            torch.cuda.synchronize()
            row[f"{name}_err_v"] = assert_close(ov.float(), ref_v, dtype, name=f"{name} v")
            row[f"{name}_err_lse"] = assert_close(os_.float(), ref_s, torch.float32, name=f"{name} lse")
            t = cuda_time(fn, warmup=10, runs=50)
            row[f"{name}_ms"] = t.median_ms
            row[f"{name}_p10_ms"], row[f"{name}_p90_ms"] = t.p10_ms, t.p90_ms
            row[f"{name}_TBps"] = nbytes / (t.median_ms * 1e-3) / 1e12
        rows.append(row)
    result = dict(benchmark="merge_states", device=device_name(), date=dt.date.today().isoformat(),
                  torch=torch.__version__, flashinfer=getattr(flashinfer, "__version__", None), rows=rows)
    path = write_result(args.out, f"merge_{device_name()}_{result['date']}", result)
    names = [p for p in ("infernb", "torch_eager_fp32", "flashinfer") if f"{p}_ms" in rows[0]]
    print(f"{'case (n,k,h,d)':<24}" + "".join(f"{p + ' TB/s':>22}" for p in names) +
          ("  infernb/flashinfer" if "flashinfer" in names else ""))
    for r in rows:
        line = f"{str((r['seq_len'], r['num_states'], r['num_heads'], r['head_dim'])):<24}"
        line += "".join(f"{r[p + '_TBps']:>13.2f} {r[p + '_ms'] * 1e3:>6.1f}us" for p in names)
        if "flashinfer" in names:
            line += f"  {r['flashinfer_ms'] / r['infernb_ms']:>8.2f}x"
        print(line)
    print(f"device {device_name()} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
