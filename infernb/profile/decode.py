"""Decode attention side by side, in one run on one GPU: infernb's kernel, FlashInfer (when installed, best of its
tensor-core and CUDA-core decode) and torch SDPA on contiguous (unpaged) KV; the device's copy ceiling measured
in the same run; and the committed benchmark results, for machines without a GPU.

KV bytes of a batch = 2 (K and V) x sum(kv_len) x num_kv_heads x head_dim x element size: what a decode step
must read at least once, so ``bytes / time`` is the bandwidth it achieved.
"""
from __future__ import annotations

import glob
import json
import re
from pathlib import Path

import torch

from ..testing import rel_error
from ._optional import optional_flashinfer
from .prefill import flashinfer_decode
from .timing import cuda_time, cuda_time_interleaved

RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def copy_ceiling_tbps(nbytes: int = 2**30, runs: int = 20) -> float:
    """Device-to-device copy bandwidth in TB/s (read + write bytes), the roof a memory-bound kernel is held to."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    ms = cuda_time(lambda: dst.copy_(src), runs=runs).median_ms
    return 2 * nbytes / (ms * 1e-3) / 1e12


def random_decode_batch(lens, *, num_qo_heads: int, num_kv_heads: int, head_dim: int, page_size: int,
                        dtype=torch.bfloat16, device="cuda", seed: int = 0):
    """A :class:`~infernb.layout.PagedKVCache` holding ``len(lens)`` sequences of random K/V (lengths ``lens``,
    generated on ``device``) and ``q [len(lens), num_qo_heads, head_dim]``. Returns ``(cache, seq_ids, q)``."""
    from ..layout import PagedKVCache

    cache = PagedKVCache(num_pages=max(1, sum(-(-n // page_size) for n in lens)), page_size=page_size,
                         num_kv_heads=num_kv_heads, head_dim=head_dim, dtype=dtype, device=device)
    ids = cache.add_sequences(len(lens))
    g = torch.Generator(device=device).manual_seed(seed)
    k = torch.randn(sum(lens), num_kv_heads, head_dim, device=device, dtype=dtype, generator=g)
    v = torch.randn(sum(lens), num_kv_heads, head_dim, device=device, dtype=dtype, generator=g)
    cache.append(ids, k, v, lengths=lens)
    q = torch.randn(len(lens), num_qo_heads, head_dim, device=device, dtype=dtype, generator=g)
    return cache, ids, q


def profile_decode(cases: dict, *, num_qo_heads: int = 32, num_kv_heads: int = 8, head_dim: int = 128,
                   page_size: int = 16, runs: int = 30, flashinfer: bool = True, sdpa: bool = True,
                   progress: bool = True, extra=None) -> list[dict]:
    """Time decode of each batch of ``cases`` (``{name: kv_lens}``), bf16, on the GPU.

    Every path's output is compared with infernb's before it is timed (``*_err_vs_infernb``); the paths of a case are
    timed in interleaved rounds (:func:`~infernb.profile.cuda_time_interleaved`), so none of them gets the machine's
    better or worse minutes alone. ``extra(name,
    ctx, row)``, if given, runs after the case's timings with ``ctx`` = dict(cache, table, q, plan, runner, out,
    time=..., time_interleaved=...) to add rows of its own (variants, tuning).

    Returns one dict per case: ``infernb_ms``, ``flashinfer_ms`` (best of its two decode paths, with each path's
    time), ``sdpa_ms`` (uniform batches only), the matching ``*_TBps``, ``speedup_vs_flashinfer`` and the plan's
    stats.
    """
    from tqdm.auto import tqdm

    from .. import plan as make_plan
    from ..ops.paged_decode import DecodeRunner

    fi = optional_flashinfer() if flashinfer else None

    def ms(fn):
        t = cuda_time(fn, warmup=10, runs=runs)
        return t.median_ms, t.p10_ms, t.p90_ms

    shape = dict(num_qo_heads=num_qo_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, page_size=page_size)
    rows = []
    for name, lens in tqdm(list(cases.items()), desc="decode cases", disable=not progress):
        cache, ids, q = random_decode_batch(lens, **shape)
        table = cache.page_table(ids)
        nbytes = 2 * sum(lens) * num_kv_heads * head_dim * q.element_size()
        p = make_plan([1] * len(lens), lens, page_table=table, **shape)
        runner = DecodeRunner(p, cache, table)
        out = runner(q)[0]
        tbps = lambda t: nbytes / (t * 1e-3) / 1e12  # noqa: E731
        row = dict(case=name, batch=len(lens), kv_lens_sum=sum(lens), kv_bytes=nbytes, plan=p.stats())
        fns = {"infernb": lambda: runner(q)}
        if fi is not None:
            for tc in (True, False):                 # each path its own workspace, zeroed (as FlashInfer asks)
                path = "flashinfer_tc" if tc else "flashinfer_cc"
                fns[path] = flashinfer_decode(fi, q, cache.pool, table, use_tensor_cores=tc)
                row[f"{path}_err_vs_infernb"] = rel_error(fns[path](), out)
        k = v = None
        if sdpa and len(set(lens)) == 1:             # contiguous [batch, heads, len, dim] K/V, GQA
            pages = table.indices.long()
            kv = cache.pool[pages].reshape(len(lens), -1, 2, page_size, num_kv_heads, head_dim)
            kv = kv.transpose(2, 1).reshape(len(lens), 2, -1, num_kv_heads, head_dim)[:, :, :lens[0]]
            k, v = kv[:, 0].transpose(1, 2).contiguous(), kv[:, 1].transpose(1, 2).contiguous()
            del kv
            sd = lambda: torch.nn.functional.scaled_dot_product_attention(q[:, :, None], k, v, enable_gqa=True)  # noqa
            row["sdpa_err_vs_infernb"] = rel_error(sd()[:, :, 0], out)
            fns["sdpa"] = sd
        t = cuda_time_interleaved(fns, warmup=10, runs=runs)
        m = t["infernb"].median_ms
        row.update(infernb_ms=m, infernb_p10_ms=t["infernb"].p10_ms, infernb_p90_ms=t["infernb"].p90_ms,
                   infernb_TBps=tbps(m))
        if fi is not None:
            for path in ("flashinfer_tc", "flashinfer_cc"):
                row[f"{path}_ms"] = t[path].median_ms
            best = min(row["flashinfer_tc_ms"], row["flashinfer_cc_ms"])
            row.update(flashinfer_ms=best, flashinfer_TBps=tbps(best), speedup_vs_flashinfer=best / m)
        if "sdpa" in t:
            row["sdpa_ms"] = t["sdpa"].median_ms
            row["sdpa_TBps"] = tbps(row["sdpa_ms"])
        del k, v, fns
        if extra is not None:
            extra(name, dict(cache=cache, table=table, q=q, plan=p, runner=runner, out=out, time=ms, rel=rel_error,
                             time_interleaved=lambda fns: cuda_time_interleaved(fns, warmup=10, runs=runs)), row)
        rows.append(row)
        del cache, runner, q, out
        torch.cuda.empty_cache()
    return rows


def committed_results(benchmark: str = "decode", tag: str | None = None) -> dict | None:
    """The newest complete committed run ``benchmarks/results/<benchmark>_<device>_<date>.json`` (a run on the lent
    GPU), or ``None``. Partial runs (a suffix after the date, e.g. ``_subset``: some cases only) are picked only by
    their ``tag`` (``committed_results("prefill", tag="block_sparse_subset")``)."""
    end = r"_(\d{4}-\d{2}-\d{2})" + ("_" + re.escape(tag) if tag else "") + "$"
    dated = [(m.group(1), f) for f in glob.glob(str(RESULTS_DIR / f"{benchmark}_*.json"))
             if (m := re.search(end, Path(f).stem))]
    return json.loads(Path(max(dated)[1]).read_text()) if dated else None
