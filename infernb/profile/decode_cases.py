"""The decode benchmark as library code (``benchmarks/bench_decode.py`` lists the cases and writes the JSON): the
comparison of :func:`~infernb.profile.profile_decode` (infernb, FlashInfer's best decode path, SDPA on contiguous KV,
timed in interleaved rounds), and around it

- the device's copy ceiling (:func:`~infernb.profile.copy_ceiling_tbps`), measured first;
- on the variant case: the tuning alternatives (the decode kernel with other ``(stages, CTAs per SM)``, on a plan
  for those CTAs) and the variants (:data:`DECODE_VARIANTS`: soft-cap 30, ALiBi, RoPE, sliding window 1024), each
  checked against the float64 reference (:func:`decode_reference`) and then timed in the same rounds as plain
  decode (the ``time_interleaved`` of ``profile_decode``'s ``extra`` hook);
- per case, after all cases: references for the case's KV bytes (:func:`infernb.profile.read.read_references`: a
  streaming read that computes nothing and torch's device copy moving them), the target (x FlashInfer) and the
  derived fields (:func:`finish_row`).

The reference, the variant / tuning rows (on a CPU cache the runners run the emulator) and the row assembly run on
any device; the timing needs CUDA (the tests pass stand-ins for ``profile``, ``read_refs`` and ``copy_ceiling``).
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence

import torch

from ._optional import optional_flashinfer
from .timing import device_name

#: the benchmark's attention shape (bf16): 32 query / 8 KV heads, head dim 128, page 16
SHAPE = dict(num_qo_heads=32, num_kv_heads=8, head_dim=128, page_size=16)
#: the variants timed beside plain decode on the variant case, in the order of the JSON's ``variants`` list
DECODE_VARIANTS = ("softcap_30", "alibi", "rope", "sliding_window_1024")
#: the fields :func:`finish_row` adds to a row of :func:`~infernb.profile.profile_decode`
FINISH_FIELDS = ("target", "copy_fraction", "read_ref_ms", "copy_same_bytes_ms", "read_ref_shape", "read_ref_TBps",
                 "copy_same_bytes_TBps", "target_ms", "meets_target")


def decode_reference(cache, table, q: torch.Tensor, *, rope=None, variant=None) -> torch.Tensor:
    """The float64 reference output ``[batch, num_qo_heads, head_dim]`` of a decode batch (one query per sequence of
    ``table``) over ``cache`` (a :class:`~infernb.layout.PagedKVCache`, either layout), with ``rope`` and a
    ``variant``'s mods: :func:`infernb.reference.paged_attention` on the tensors' device."""
    from .. import reference

    kw = {} if variant is None else variant.reference_kwargs()
    return reference.paged_attention(q, cache.pool, table.indptr, table.indices, table.last_page_len,
                                     layout=cache.layout, rope=rope, **kw)[0]


def decode_variants(num_qo_heads: int, device) -> dict[str, dict]:
    """``{name: DecodeRunner keywords}`` of :data:`DECODE_VARIANTS`: soft-cap 30, ALiBi (the paper's slopes for
    ``num_qo_heads``, on ``device``), RoPE (Llama's defaults) and a sliding window of 1024 keys."""
    from .. import variants
    from ..reference import RoPE

    slopes = variants.alibi_slopes(num_qo_heads).to(device)
    return {"softcap_30": dict(variant=variants.softcap(30.0)), "alibi": dict(variant=variants.alibi(slopes)),
            "rope": dict(rope=RoPE()), "sliding_window_1024": dict(variant=variants.sliding_window(1024))}


def variant_extra(*, variant_case: str | None, tuning: Sequence[tuple[int, int]], shape: Mapping,
                  variant_rows: list) -> Callable:
    """The ``extra(name, ctx, row)`` hook of :func:`~infernb.profile.profile_decode` that, on case ``variant_case``
    only, builds the tuning runners (per ``(stages, ctas_per_sm)`` of ``tuning``: a plan for those CTAs per SM and a
    :class:`~infernb.ops.paged_decode.DecodeRunner` with those stages / CTAs) and the variant runners
    (:func:`decode_variants`), checks each (tuning: against plain decode's output ``ctx["out"]``; variants: against
    :func:`decode_reference` with the same variant / RoPE) with ``ctx["rel"]``, then times plain decode
    (``ctx["runner"]``), the tuning runners and the variants in the same interleaved rounds
    (``ctx["time_interleaved"]``, in that order).

    Adds to the case's row ``tuning_s<stages>_c<ctas>_err``, ``_ms`` and ``_vs_plain`` (time over plain decode's in
    the same rounds), and appends one dict per variant to ``variant_rows``: ``{case, variant, ms, plain_ms,
    slowdown, err_vs_reference}``."""
    def extra(name, ctx, row):
        if name != variant_case:
            return
        from .. import plan as make_plan
        from ..ops.paged_decode import DecodeRunner

        cache, table, q, p = ctx["cache"], ctx["table"], ctx["q"], ctx["plan"]
        # occupancy / pipeline alternatives and the variants, each checked against the reference, then timed in the
        # same rounds as plain decode
        runners = {"plain": ctx["runner"]}
        for stages, ctas in tuning:                  # (plans for the same CTAs)
            pt = make_plan([1] * p.batch_size, p.kv_lens, page_table=table, ctas_per_sm=ctas, **shape)
            r = runners[f"tuning_s{stages}_c{ctas}"] = DecodeRunner(pt, cache, table, stages=stages, ctas_per_sm=ctas)
            row[f"tuning_s{stages}_c{ctas}_err"] = ctx["rel"](r(q)[0], ctx["out"])
        variants = decode_variants(shape["num_qo_heads"], q.device)
        errs = {}
        for vname, kw in variants.items():
            r = runners[vname] = DecodeRunner(p, cache, table, **kw)
            errs[vname] = ctx["rel"](r(q)[0], decode_reference(cache, table, q, **kw))
        t = ctx["time_interleaved"]({k: (lambda r: lambda: r(q))(r) for k, r in runners.items()})
        pm = t["plain"].median_ms
        for k in runners:
            if k.startswith("tuning_"):
                row[f"{k}_ms"], row[f"{k}_vs_plain"] = t[k].median_ms, t[k].median_ms / pm
        for vname in variants:
            vm = t[vname].median_ms
            variant_rows.append(dict(case=name, variant=vname, ms=vm, plain_ms=pm, slowdown=vm / pm,
                                     err_vs_reference=errs[vname]))
    return extra


def finish_row(row: dict, *, target: float, copy_tbps: float, ref: Mapping) -> dict:
    """Add to a :func:`~infernb.profile.profile_decode` row (in place; returns it) the case's ``target`` (x
    FlashInfer), ``copy_fraction`` (``infernb_TBps`` over the copy ceiling ``copy_tbps``), the read references of its
    KV bytes ``ref`` (:func:`~infernb.profile.read.read_references`: ``read_ref_ms``, ``copy_same_bytes_ms``,
    ``read_ref_shape``, and ``read_ref_TBps`` / ``copy_same_bytes_TBps`` = ``kv_bytes`` over those times), and, when
    FlashInfer ran, ``target_ms`` (FlashInfer's time over the target) and ``meets_target`` (``speedup_vs_flashinfer
    >= target``)."""
    row["target"] = target
    row["copy_fraction"] = row["infernb_TBps"] / copy_tbps
    # references for the same bytes (not floors: a decode can beat a simple kernel): a streaming read that computes
    # nothing (the best of 24 grid shapes in a short search, then timed in rounds with the next one) and torch's
    # device copy of half of them (the same bytes moved)
    row.update(read_ref_ms=ref["read_ms"], copy_same_bytes_ms=ref["copy_ms"], read_ref_shape=ref["shape"])
    for k in ("read_ref", "copy_same_bytes"):
        row[f"{k}_TBps"] = row["kv_bytes"] / (row[f"{k}_ms"] * 1e-3) / 1e12
    if "flashinfer_ms" in row:
        row["target_ms"] = row["flashinfer_ms"] / row["target"]
    if "speedup_vs_flashinfer" in row:
        row["meets_target"] = row["speedup_vs_flashinfer"] >= row["target"]
    return row


def decode_benchmark(cases: Mapping[str, Sequence[int]], *, targets: Mapping[str, float],
                     variant_case: str | None = "64x4096", tuning: Sequence[tuple[int, int]] = ((3, 2),),
                     runs: int = 50, shape: Mapping | None = None, flashinfer: bool = True, progress: bool = False,
                     profile: Callable | None = None, read_refs: Callable | None = None,
                     copy_ceiling: Callable | None = None) -> dict:
    """The decode benchmark on the GPU: ``cases`` (``{name: kv_lens}``, bf16, ``shape``: default :data:`SHAPE`),
    each case's ``targets[name]`` (x FlashInfer's time), the tuning alternatives ``tuning`` (``[(stages,
    ctas_per_sm)]``) and the variants on case ``variant_case`` (:func:`variant_extra`), ``runs`` timed calls per
    path (also for the read references).

    In order: the copy ceiling (``copy_ceiling()``, default :func:`~infernb.profile.copy_ceiling_tbps`), the cases
    (``profile(cases, runs=, extra=, progress=, flashinfer=, **shape)``, default
    :func:`~infernb.profile.profile_decode`), then per row the read references (``read_refs(kv_bytes, runs=)``,
    default :func:`~infernb.profile.read.read_references`) and :func:`finish_row`. The three hooks are for the tests:
    with stand-ins they run the assembly (and the variant rows on a CPU batch) without a GPU.

    Returns ``{benchmark: "decode", device, date, torch, flashinfer, copy_TBps, shape (with dtype "bf16"), rows,
    variants}``: ``rows`` as :func:`~infernb.profile.profile_decode`'s with :func:`variant_extra`'s and
    :func:`finish_row`'s fields, ``variants`` as :func:`variant_extra` appends them.
    """
    shape = dict(SHAPE if shape is None else shape)
    missing = [name for name in cases if name not in targets]
    if missing:
        raise KeyError(f"targets: no target for case(s) {missing}")
    if profile is None:
        from .decode import profile_decode as profile
    if read_refs is None:
        from .read import read_references as read_refs
    if copy_ceiling is None:
        from .decode import copy_ceiling_tbps as copy_ceiling

    variant_rows: list[dict] = []
    extra = variant_extra(variant_case=variant_case, tuning=tuning, shape=shape, variant_rows=variant_rows)
    copy_tbps = copy_ceiling()
    rows = profile(cases, runs=runs, extra=extra, progress=progress, flashinfer=flashinfer, **shape)
    for r in rows:
        finish_row(r, target=targets[r["case"]], copy_tbps=copy_tbps, ref=read_refs(r["kv_bytes"], runs=runs))
    fi = optional_flashinfer() if flashinfer else None
    return dict(benchmark="decode", device=device_name(), date=dt.date.today().isoformat(), torch=torch.__version__,
                flashinfer=getattr(fi, "__version__", None), copy_TBps=copy_tbps, shape=dict(shape, dtype="bf16"),
                rows=rows, variants=variant_rows)


def decode_summary(result: Mapping) -> str:
    """A :func:`decode_benchmark` result as text: the copy ceiling; per case infernb / FlashInfer / SDPA (us and
    TB/s), the speedup over FlashInfer and its target, the fraction of the copy ceiling, the read and copy
    references and the target time; the tuning alternatives and the variants against plain decode (with their
    errors)."""
    lines = [f"copy ceiling {result['copy_TBps']:.2f} TB/s",
             f"{'case':<24}{'infernb':>18}{'flashinfer':>18}{'sdpa':>18}{'speedup':>9}{'target':>8}{'of copy':>9}"
             f"{'read ref':>10}{'copy':>9}{'target':>10}"]
    for r in result["rows"]:
        def f(k, r=r):                               # a path's time and bandwidth, or "-" where it did not run
            return f"{r[k + '_ms'] * 1e3:8.1f}us {r[k + '_TBps']:4.2f}TB/s" if k + "_ms" in r else f"{'-':>18}"
        lines.append(f"{r['case']:<24}{f('infernb')}{f('flashinfer')}{f('sdpa')}"
                     f"{r.get('speedup_vs_flashinfer', float('nan')):8.2f}x{r['target']:7.2f}x"
                     f"{r['copy_fraction']:8.0%}{r['read_ref_ms'] * 1e3:8.1f}us{r['copy_same_bytes_ms'] * 1e3:7.1f}us"
                     f"{r.get('target_ms', float('nan')) * 1e3:8.1f}us")
        for k in [k for k in r if k.startswith("tuning_") and k.endswith("_ms")]:
            lines.append(f"  {r['case']} {k[7:-3]:<24} {r[k] * 1e3:8.1f}us  x{r[k[:-3] + '_vs_plain']:.3f} of plain"
                         f"  (err {r[k[:-3] + '_err']:.1e})")
    for v in result["variants"]:
        lines.append(f"  {v['case']} {v['variant']:<22} {v['ms'] * 1e3:8.1f}us  x{v['slowdown']:.3f} of plain"
                     f"  (err {v['err_vs_reference']:.1e})")
    return "\n".join(lines)
