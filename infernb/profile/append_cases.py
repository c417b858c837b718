"""Appending new K/V to a paged cache, one decode-style step of a batch end to end (``benchmarks/bench_append.py``
writes the JSON). Paths, each timed with CUDA events (:func:`~infernb.profile.cuda_time`: median, L2 flushed):

- ``infernb``: :meth:`~infernb.layout.PagedKVCache.append` as a user calls it (page allocation and destinations on
  the CPU, an async copy of the destinations, one kernel), CUDA events around one call (the L2 flush before it can
  hide host time); ``infernb_step``: wall time per call over back-to-back appends followed by a synchronize (what a
  serving loop sees per step);
- ``infernb_kernel``: only the append kernel, destinations precomputed on the GPU (what FlashInfer's number measures
  too);
- ``torch_index_put``: the same device write as two torch ``index_put`` calls;
- ``flashinfer``: ``flashinfer.append_paged_kv_cache`` with precomputed batch indices / positions, when installed.

Rates are GB/s of K/V written (bytes = 2 x tokens x heads x dim x 2). The case construction, the correctness check,
the destinations and the index_put path run on any device (the tests run them on the CPU); the timing needs CUDA.
"""
from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

import torch

from ._optional import optional_flashinfer
from .timing import cuda_time, device_name

#: the timed paths, in the order the summary lists them
APPEND_PATHS = ("infernb", "infernb_step", "infernb_kernel", "torch_index_put", "flashinfer")


def append_case(layout: str, *, batch: int = 64, new_tokens: int = 16, kv_heads: int = 8, head_dim: int = 128,
                page_size: int = 16, cached: int = 1000, appends: int = 1, device="cuda", seed: int = 0) -> dict:
    """A bf16 :class:`~infernb.layout.PagedKVCache` in ``layout`` (``"NHD"`` / ``"HND"``) on ``device`` holding
    ``batch`` sequences of ``cached`` random tokens, with pages for ``appends`` more appends of ``new_tokens`` tokens
    each (and one spare page per sequence), and the new tokens' K and V ``[batch * new_tokens, kv_heads, head_dim]``
    (bf16, random, seeded).

    Returns ``dict(cache, ids, k, v, row)``; ``row`` is the case's part of the JSON row: ``{layout, batch,
    new_tokens, kv_heads, head_dim, page_size, bytes}`` (``bytes``: K and V of one append).
    """
    from ..layout import PagedKVCache

    B, T, H, D, P = batch, new_tokens, kv_heads, head_dim, page_size
    pages = B * (-(-(cached + T * appends) // P) + 1)
    cache = PagedKVCache(pages, P, H, D, dtype=torch.bfloat16, device=device, layout=layout)
    ids = cache.add_sequences(B)
    g = torch.Generator(device=device).manual_seed(seed)
    cache.append(ids, torch.randn(B * cached, H, D, device=device, generator=g),
                 torch.randn(B * cached, H, D, device=device, generator=g), [cached] * B)
    k = torch.randn(B * T, H, D, device=device, generator=g, dtype=torch.bfloat16)
    v = torch.randn(B * T, H, D, device=device, generator=g, dtype=torch.bfloat16)
    row = dict(layout=layout, batch=B, new_tokens=T, kv_heads=H, head_dim=D, page_size=P,
               bytes=2 * k.numel() * k.element_size())
    return dict(cache=cache, ids=ids, k=k, v=v, row=row)


def check_append(case: dict, seq: int = 7) -> None:
    """Append the case's ``k`` / ``v`` once and check that sequence ``ids[seq]`` reads them back (gathered) after
    its previous tokens; raises ``AssertionError`` otherwise."""
    cache, ids, k, v, T = case["cache"], case["ids"], case["k"], case["v"], case["row"]["new_tokens"]
    before = cache.lengths(ids)
    cache.append(ids, k, v, [T] * len(ids))
    gk, gv = cache.gather(ids[seq])
    if not (torch.equal(gk[before[seq]:], k[seq * T:(seq + 1) * T])
            and torch.equal(gv[before[seq]:], v[seq * T:(seq + 1) * T])):
        raise AssertionError(f"{cache.layout} append: sequence {ids[seq]} does not read back its new K/V")


def append_destinations(cache, ids, new_tokens: int):
    """Where the last append of ``new_tokens`` tokens per sequence went: ``(page_table, pages, slots)``, ``pages`` and
    ``slots`` int64 ``[len(ids) * new_tokens]`` on the pool's device (sequence-major, as ``k`` / ``v``)."""
    T, P, dev = new_tokens, cache.page_size, cache.device
    table = cache.page_table(ids)
    pos = torch.tensor(cache.lengths(ids), device=dev)[:, None] - T + torch.arange(T, device=dev)[None]
    pages = table.indices.long()[table.indptr[:-1].long()[:, None] + pos // P].flatten()
    return table, pages, (pos % P).flatten()


def index_put_append(cache, pages, slots, k, v) -> Callable[[], None]:
    """A call that writes ``k`` / ``v`` into the cache's pool at ``(pages, slots)`` with two torch ``index_put`` (the
    device write of an append, destinations precomputed)."""
    layout = cache.layout

    def put():
        if layout == "NHD":
            cache.pool[pages, 0, slots] = k
            cache.pool[pages, 1, slots] = v
        else:
            cache.pool[pages, 0, :, slots] = k
            cache.pool[pages, 1, :, slots] = v
    return put


def flashinfer_append(flashinfer, case: dict, table) -> Callable[[], None]:
    """A call of ``flashinfer.append_paged_kv_cache`` writing the case's ``k`` / ``v`` as the last append did (batch
    indices and positions precomputed with ``get_batch_indices_positions`` from the cache's lengths; ``table``: the
    sequences' page table)."""
    cache, ids, k, v = case["cache"], case["ids"], case["k"], case["v"]
    B, T, dev = len(ids), case["row"]["new_tokens"], cache.device
    append_indptr = torch.arange(0, B * T + 1, T, device=dev, dtype=torch.int32)
    seq_lens = torch.tensor(cache.lengths(ids), device=dev, dtype=torch.int32)
    bi, ps = flashinfer.get_batch_indices_positions(append_indptr, seq_lens, B * T)
    pool_k, pool_v = cache.pool[:, 0], cache.pool[:, 1]

    def fi():
        flashinfer.append_paged_kv_cache(k, v, bi, ps, (pool_k, pool_v), table.indices, table.indptr,
                                         table.last_page_len, kv_layout=cache.layout)
    return fi


def add_rates(row: dict) -> dict:
    """``<path>_GBps`` = ``bytes`` / ``<path>_ms`` for each path of :data:`APPEND_PATHS` the row times; returns
    ``row``."""
    for name in APPEND_PATHS:
        if f"{name}_ms" in row:
            row[f"{name}_GBps"] = row["bytes"] / (row[f"{name}_ms"] * 1e-3) / 1e9
    return row


def append_benchmark(*, layouts=("NHD", "HND"), warmup: int = 10, runs: int = 50, step_runs: int = 100,
                     flashinfer: bool = True, device="cuda", timer: Callable = cuda_time, **case) -> dict:
    """Time one append step (:func:`append_case`'s ``case`` keywords: default 64 sequences x 16 new tokens, 8 KV
    heads, head dim 128, page 16, 1000 cached tokens) in each of ``layouts`` on the GPU, after checking it
    (:func:`check_append`). CUDA-event paths: ``warmup`` + ``runs`` calls (:func:`~infernb.profile.cuda_time`);
    ``infernb_step``: ``step_runs`` back-to-back appends between two synchronizes. ``flashinfer``: include it when
    installed (a failure is recorded in ``flashinfer_error``, the other numbers kept). ``device`` and ``timer``
    (called as ``timer(fn, warmup=, runs=)``, returning a :class:`~infernb.profile.Timing`) are for the tests: on
    the CPU with a stand-in timer they run everything but the GPU timing.

    Returns ``{benchmark: "paged_kv_append", device, date, torch, flashinfer, rows}``, one row per layout: the case
    (:func:`append_case`), ``<path>_ms`` (``infernb_p10_ms`` / ``infernb_p90_ms`` too) and ``<path>_GBps``.
    """
    fi = optional_flashinfer() if flashinfer else None
    rows = [_layout_row(layout, fi, warmup=warmup, runs=runs, step_runs=step_runs, device=device, timer=timer,
                        **case) for layout in layouts]
    return dict(benchmark="paged_kv_append", device=device_name(), date=dt.date.today().isoformat(),
                torch=torch.__version__, flashinfer=getattr(fi, "__version__", None), rows=rows)


def _layout_row(layout, fi, *, warmup, runs, step_runs, device, timer, **case) -> dict:
    """:func:`append_benchmark`'s row of one layout."""
    from ..layout.append_kernel import append_paged_kv

    c = append_case(layout, appends=warmup + runs + 2 + step_runs, device=device, **case)
    cache, ids, k, v, row = c["cache"], c["ids"], c["k"], c["v"], c["row"]
    B, T = len(ids), row["new_tokens"]
    cuda = cache.device.type == "cuda"
    check_append(c)                                  # correctness of one step before timing
    t = timer(lambda: cache.append(ids, k, v, [T] * B), warmup=warmup, runs=runs)
    row.update(infernb_ms=t.median_ms, infernb_p10_ms=t.p10_ms, infernb_p90_ms=t.p90_ms)
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(step_runs):
        cache.append(ids, k, v, [T] * B)
    if cuda:
        torch.cuda.synchronize()
    row.update(infernb_step_ms=(time.perf_counter() - t0) / step_runs * 1e3)
    # device-only floor: the same two index_put writes with destinations precomputed
    table, pg, sl = append_destinations(cache, ids, T)
    t = timer(index_put_append(cache, pg, sl, k, v), warmup=warmup, runs=runs)
    row.update(torch_index_put_ms=t.median_ms)
    dest = torch.stack([pg, sl]).to(torch.int32).contiguous()
    t = timer(lambda: append_paged_kv(cache.pool, layout, k, v, dest), warmup=warmup, runs=runs)
    row.update(infernb_kernel_ms=t.median_ms)
    if fi is not None:
        call = flashinfer_append(fi, c, table)
        try:
            call()
            torch.cuda.synchronize()
            t = timer(call, warmup=warmup, runs=runs)
            row.update(flashinfer_ms=t.median_ms)
        except Exception as e:                       # noqa: BLE001  (record why, keep the other numbers)
            row.update(flashinfer_error=f"{type(e).__name__}: {e}"[:300])
            print("flashinfer append failed:", row["flashinfer_error"])
    return add_rates(row)


def append_summary(result: dict) -> str:
    """An :func:`append_benchmark` result as text: per layout, the K/V size and each path's time and GB/s."""
    lines = [f"{r['layout']}: {r['bytes'] / 2**20:.1f} MiB K/V;  " + ",  ".join(
        f"{n} {r[n + '_ms'] * 1e3:.1f} us = {r[n + '_GBps']:.0f} GB/s" for n in APPEND_PATHS if f"{n}_ms" in r)
        for r in result["rows"]]
    lines.append(f"device {result['device']}")
    return "\n".join(lines)
