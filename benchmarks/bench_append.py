"""Appending new K/V to a paged cache: one decode-style step of a batch, end to end.

    python benchmarks/bench_append.py [--out DIR]

Case (issue 3): 64 sequences x 16 new tokens, 8 KV heads, head_dim 128, bf16, page size 16, NHD and HND,
sequences already holding 1000 tokens. Timed paths (CUDA events, median of 50, L2 flushed):

- ``infernb``: ``PagedKVCache.append`` as a user calls it (page allocation and destinations on the CPU,
  an async copy of the destinations, one kernel), timed two ways: CUDA events around one call (L2 flushed
  before it, which can hide host time behind the flush), and ``infernb_step`` = wall time per call over
  100 back-to-back appends followed by a synchronize (what a serving loop sees per step);
- ``infernb_kernel``: only our append kernel, destinations precomputed on the GPU (what FlashInfer's
  number below measures too);
- ``torch_index_put``: the same device write as two torch ``index_put`` calls;
- ``flashinfer``: ``flashinfer.page.append_paged_kv_cache`` with precomputed batch indices/positions,
  when FlashInfer is installed (it also takes its page table as given).

Reports GB/s of K/V written (bytes = 2 x tokens x heads x dim x 2). Writes ``append_<device>_<date>.json``.
"""
from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import optional_flashinfer, parse_args, write_result  # noqa: E402


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    import infernb as ib
    from infernb.profile import cuda_time, device_name

    flashinfer = optional_flashinfer()
    B, T, H, D, P, base = 64, 16, 8, 128, 16, 1000
    warmup, runs = 10, 50
    steps = warmup + runs + 2 + 100
    rows = []
    for layout in ("NHD", "HND"):
        pages = B * (-(-(base + T * steps) // P) + 1)
        cache = ib.PagedKVCache(pages, P, H, D, dtype=torch.bfloat16, device="cuda", layout=layout)
        ids = cache.add_sequences(B)
        g = torch.Generator(device="cuda").manual_seed(0)
        cache.append(ids, torch.randn(B * base, H, D, device="cuda", generator=g),
                     torch.randn(B * base, H, D, device="cuda", generator=g), [base] * B)
        k = torch.randn(B * T, H, D, device="cuda", generator=g, dtype=torch.bfloat16)
        v = torch.randn(B * T, H, D, device="cuda", generator=g, dtype=torch.bfloat16)
        nbytes = 2 * k.numel() * k.element_size()
        # correctness of one step before timing
        before = cache.lengths(ids)
        cache.append(ids, k, v, [T] * B)
        gk, gv = cache.gather(ids[7])
        assert torch.equal(gk[before[7]:], k[7 * T:8 * T]) and torch.equal(gv[before[7]:], v[7 * T:8 * T])
        row = dict(layout=layout, batch=B, new_tokens=T, kv_heads=H, head_dim=D, page_size=P, bytes=nbytes)
        t = cuda_time(lambda: cache.append(ids, k, v, [T] * B), warmup=warmup, runs=runs)
        row.update(infernb_ms=t.median_ms, infernb_p10_ms=t.p10_ms, infernb_p90_ms=t.p90_ms)
        import time
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(100):
            cache.append(ids, k, v, [T] * B)
        torch.cuda.synchronize()
        row.update(infernb_step_ms=(time.perf_counter() - t0) / 100 * 1e3)
        # device-only floor: the same two index_put writes with destinations precomputed
        table = cache.page_table(ids)
        pos = torch.tensor(cache.lengths(ids), device="cuda")[:, None] - T + torch.arange(T, device="cuda")[None]
        pg = table.indices.long()[table.indptr[:-1].long()[:, None] + pos // P].flatten()
        sl = (pos % P).flatten()

        def put():
            if layout == "NHD":
                cache.pool[pg, 0, sl] = k
                cache.pool[pg, 1, sl] = v
            else:
                cache.pool[pg, 0, :, sl] = k
                cache.pool[pg, 1, :, sl] = v
        t = cuda_time(put, warmup=warmup, runs=runs)
        row.update(torch_index_put_ms=t.median_ms)
        from infernb.layout.append_kernel import append_paged_kv
        dest = torch.stack([pg, sl]).to(torch.int32).contiguous()
        t = cuda_time(lambda: append_paged_kv(cache.pool, layout, k, v, dest), warmup=warmup, runs=runs)
        row.update(infernb_kernel_ms=t.median_ms)
        if flashinfer is not None:
            append_indptr = torch.arange(0, B * T + 1, T, device="cuda", dtype=torch.int32)
            seq_lens = torch.tensor(cache.lengths(ids), device="cuda", dtype=torch.int32)
            bi, ps = flashinfer.get_batch_indices_positions(append_indptr, seq_lens, B * T)
            pool_k, pool_v = cache.pool[:, 0], cache.pool[:, 1]

            def fi():
                flashinfer.append_paged_kv_cache(k, v, bi, ps, (pool_k, pool_v), table.indices, table.indptr,
                                                 table.last_page_len, kv_layout=layout)
            try:
                fi()
                torch.cuda.synchronize()
                t = cuda_time(fi, warmup=warmup, runs=runs)
                row.update(flashinfer_ms=t.median_ms)
            except Exception as e:  # record why, keep the other numbers
                row.update(flashinfer_error=f"{type(e).__name__}: {e}"[:300])
                print("flashinfer append failed:", row["flashinfer_error"])
        for name in ("infernb", "infernb_step", "infernb_kernel", "torch_index_put", "flashinfer"):
            if f"{name}_ms" in row:
                row[f"{name}_GBps"] = nbytes / (row[f"{name}_ms"] * 1e-3) / 1e9
        rows.append(row)
    result = dict(benchmark="paged_kv_append", device=device_name(), date=dt.date.today().isoformat(),
                  torch=torch.__version__, flashinfer=getattr(flashinfer, "__version__", None), rows=rows)
    path = write_result(args.out, f"append_{device_name()}_{result['date']}", result)
    for r in rows:
        print(f"{r['layout']}: {r['bytes'] / 2**20:.1f} MiB K/V;  " + ",  ".join(
            f"{n} {r[n + '_ms'] * 1e3:.1f} us = {r[n + '_GBps']:.0f} GB/s"
            for n in ("infernb", "infernb_step", "infernb_kernel", "torch_index_put", "flashinfer") if f"{n}_ms" in r))
    print(f"device {device_name()} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
