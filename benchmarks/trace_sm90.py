"""Warpgroup timelines of the Hopper prefill kernel (issue 16) for notebook 06 and benchmarks/NOTES.md: one launch
per case after an L2 flush with the trace compiled in (``infernb.profile.sm90_trace``), the first CTAs' producer and
consumer warpgroups block by block, written to ``trace_sm90_<device>_<date>.json`` (phases in microseconds and each
phase's share of the span).

    python benchmarks/trace_sm90.py [--out DIR] [--ctas N]

Cases (bf16, 32 query / 8 KV heads, d 128): one causal request of 8192 tokens, plain and with soft-cap 30 (tanhf);
the paged append of 16 x 512 new tokens onto 8192 cached (page 16: the producer's cp.async path).
"""
from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parse_args, write_result  # noqa: E402


def main(argv=None) -> int:
    args = parse_args(argv, ctas=2)
    import torch

    import infernb as ib
    from infernb.ops.prefill import plan_batch
    from infernb.profile import device_name, sm90_trace, sm90_trace_phases, sm90_trace_summary

    HQ, HKV, D, ctas = 32, 8, 128, args.ctas
    g = torch.Generator(device="cuda").manual_seed(0)
    rnd = lambda *s: torch.randn(*s, device="cuda", generator=g, dtype=torch.bfloat16)  # noqa: E731
    cases = {}

    def record(name, raw):
        ph = sm90_trace_phases(raw)
        for c in ph:
            for segs in c["roles"].values():
                for label in segs:
                    segs[label] = [[round(a, 3), round(b, 3)] for a, b in segs[label]]
        summary = sm90_trace_summary(ph)
        print(name, summary, flush=True)
        cases[name] = dict(summary=summary, ctas=ph)

    n = 8192
    q, k, v = rnd(n, HQ, D), rnd(n, HKV, D), rnd(n, HKV, D)
    p = plan_batch([n], [n], num_qo_heads=HQ, num_kv_heads=HKV, head_dim=D, dtype=torch.bfloat16, causal=True,
                   backend="sm90")
    record("causal_8192", sm90_trace(p, q, k, v, ctas=ctas))
    record("causal_8192_softcap30", sm90_trace(p, q, k, v, ctas=ctas, variant=ib.variants.softcap(30.0)))
    del q, k, v
    qo, kv = [512] * 16, [8192 + 512] * 16
    cache = ib.PagedKVCache(sum(kv) // 16 + 16, 16, HKV, D, dtype=torch.bfloat16, device="cuda")
    ids = cache.add_sequences(len(kv))
    for i, L in zip(ids, kv):
        cache.append([i], rnd(L, HKV, D), rnd(L, HKV, D), [L])
    t = cache.page_table(ids)
    q = rnd(sum(qo), HQ, D)
    p = plan_batch(qo, kv, num_qo_heads=HQ, num_kv_heads=HKV, head_dim=D, dtype=torch.bfloat16, causal=True,
                   page_size=16, backend="sm90")
    record("append_16x512_on_8192_paged", sm90_trace(p, q, cache=cache, page_table=t, ctas=ctas))
    from infernb.jit.spec import kernels_digest

    result = dict(benchmark="trace_sm90", device=device_name(), date=dt.date.today().isoformat(),
                  kernels_digest=kernels_digest()[:16], shape=dict(heads=[HQ, HKV], head_dim=D, dtype="bf16"),
                  cases=cases)
    path = write_result(args.out, f"trace_sm90_{device_name()}_{result['date']}", result)
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
