"""Shared-prefix (cascade) attention over fork-shared pages (issue 15), composed of the GPU-tested kernels.

:func:`cascade_attention` reads the batch's shared prefixes from its page table
(:func:`infernb.layout.prefix.prefix_tree`) and computes, for the newest ``qo_lens[b]`` tokens of each sequence
(decode: one):

1. every shared level once, as one prefill launch whose requests are the levels: level L's query rows are all the
   queries of the sequences that share it (rows x GQA group on the tensor cores), its keys the level's pages, no mask
   (the level lies wholly before each of its sequences' new tokens: :func:`prefix_tree`'s ``max_pages``);
2. each sequence's own keys (its pages after its deepest shared level) as decode (one query a sequence) or append
   (bottom-right causal);
3. the partial results merged by their LSE in one launch (:func:`~infernb.ops.merge.merge_gather`: each query row's
   own state with the level rows it reads): exactly softmax attention over the whole sequence.

The result equals plain decode / append of the same cache (tests: against the float64 reference): three launches
(four when the levels' query rows must be gathered), one after the other. RoPE rotates every query and key at its
position in its sequence (:class:`~infernb.ops.PrefillRunner`'s ``rope_positions``); variants whose hooks read
neither the request nor the positions run too (:func:`cascade_unsupported`).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch

from ..errors import InputError
from ..layout.page_table import PageTable
from ..layout.prefix import PrefixTree, prefix_tree
from ..reference import RoPE
from ..variants import Variant
from ._common import DTYPES
from .merge import merge_gather
from .paged_decode import MAX_GROUP, DecodeRunner, plain_decode_runner, plan_decode
from .prefill import PrefillRunner, plan_batch
from .prefill_sm90 import resolve_backend


def cascade_unsupported(variant: Variant | None) -> str | None:
    """Why cascade attention cannot run ``variant`` (``None``: it can). It merges by LSE (softmax variants only) and
    computes a shared level once for every query row that reads it, as one request whose keys start at 0: hooks that
    read the request ``b`` or the positions ``q_idx`` / ``kv_idx`` would see the launch's, not the sequences'."""
    if variant is None:
        return None
    if not variant.softmax:
        return "it is not softmax attention (the levels' partial results merge by their LSE)"
    if variant.positional or variant.window_left >= 0:
        return ("its hooks read the request or the positions (b, q_idx, kv_idx) or it promises a window, and a shared "
                "level's launch does not keep the sequences' positions (plain decode / append runs it)")
    return None


def cascade_tree(cache, seq_ids: Sequence[int], qo_lens: Sequence[int] | None = None, *,
                 min_pages: int = 1) -> PrefixTree:
    """The shared-prefix tree :func:`cascade_attention` runs for these sequences: levels end before each of their
    sequences' first new token (``qo_lens``, default one each)."""
    seq_ids = list(seq_ids)
    table = cache.page_table(seq_ids)
    kv = np.asarray(cache.lengths(seq_ids), np.int64)
    qo = np.ones(len(seq_ids), np.int64) if qo_lens is None else np.asarray(list(qo_lens), np.int64)
    if len(qo) != len(seq_ids):
        raise InputError(f"qo_lens has {len(qo)} entries, seq_ids {len(seq_ids)}")
    if (qo < 1).any() or (qo > kv).any():
        b = int(np.argmax((qo < 1) | (qo > kv)))
        raise InputError(f"qo_lens[{b}] = {qo[b]}: expected 1 .. the sequence's length ({kv[b]})")
    return prefix_tree(table, min_pages=min_pages, max_pages=((kv - qo) // cache.page_size).tolist())


#: The estimate :func:`cascade_choice` compares (H200-calibrated, ``benchmarks/results/cascade_*.json``): plain
#: decode streams every sequence's keys (``plain_tb_s``: shared pages read by many CTAs at once partly hit L2);
#: cascade reads the shared levels once and each sequence's own keys, does the levels' FLOPs on tensor cores and
#: pays ``cascade_fixed_us`` for its extra launches (levels, merge). ``margin``: cascade only when estimated at
#: least this much faster.
CASCADE_MODEL = dict(plain_fixed_us=8.0, plain_tb_s=9.0, cascade_fixed_us=45.0, cascade_tb_s=3.5,
                     level_tflops=300.0, margin=0.97)


@dataclasses.dataclass(frozen=True)
class CascadeChoice:
    """What :func:`cascade_choice` decided: ``use`` cascade or plain decode / append, ``reason`` in words, the
    estimates (microseconds) it compared and the prefix ``tree`` it found (``None`` if it did not look)."""

    use: bool
    reason: str
    plain_us: float = float("nan")
    cascade_us: float = float("nan")
    tree: PrefixTree | None = None


def cascade_choice(cache, seq_ids: Sequence[int], qo_lens: Sequence[int] | None = None, *, num_qo_heads: int,
                   variant: Variant | None = None, rope: RoPE | None = None, min_pages: int = 1) -> CascadeChoice:
    """Whether cascade attention pays for these sequences (what ``ib.decode(..., cascade="auto")`` asks): it looks
    for shared pages in their page table and compares the estimates of :data:`CASCADE_MODEL` (calibrated on decode
    steps without RoPE; with ``rope`` the cascade's rotation pass reads, writes and reads again the keys and values
    it gathers, counted as 3x its reads -- an estimate, not yet measured)."""
    seq_ids = list(seq_ids)
    why = cascade_unsupported(variant)
    if why:
        return CascadeChoice(False, f"plain: the variant cannot run on a cascade ({why})")
    if len(seq_ids) < 2:
        return CascadeChoice(False, "plain: one sequence shares nothing")
    tree = cascade_tree(cache, seq_ids, qo_lens, min_pages=min_pages)
    if not tree.levels:
        return CascadeChoice(False, "plain: the sequences share no full page", tree=tree)
    m = CASCADE_MODEL
    st = tree.stats()
    tok_bytes = 2 * cache.num_kv_heads * cache.head_dim * cache.pool.element_size()     # K and V of one token
    plain = m["plain_fixed_us"] + st["plain_tokens"] * tok_bytes / (m["plain_tb_s"] * 1e6)
    qo = np.ones(len(seq_ids), np.int64) if qo_lens is None else np.asarray(list(qo_lens), np.int64)
    flops = 4 * num_qo_heads * cache.head_dim * sum(lv.tokens * int(qo[list(lv.rows)].sum()) for lv in tree.levels)
    reads = st["cascade_tokens"] * tok_bytes * (3 if rope is not None else 1)
    casc = m["cascade_fixed_us"] + reads / (m["cascade_tb_s"] * 1e6) + flops / (m["level_tflops"] * 1e6)
    use = casc <= m["margin"] * plain
    what = (f"{st['levels']} shared level(s) cut the keys read {st['read_ratio']:.1f}x; estimated cascade "
            f"{casc:.0f} us vs plain {plain:.0f} us")
    return CascadeChoice(use, ("cascade: " if use else "plain: ") + what, plain, casc, tree)


class CascadeRunner:
    """Cascade attention bound to sequences of a cache (plan once, call per layer): the prefix tree, the levels'
    prefill plan and the own keys' decode / append plan are made here; a call gathers each level's query rows, runs
    the levels (one launch), the own keys (one launch) and the merge.

    Args:
        cache, seq_ids, qo_lens, variant, rope, sm_scale, min_pages, backend, tree: as in
            :func:`cascade_attention`.
        level_tile_q: the levels' query tile (mma backend: 64 or 128); default 64 while a level has at most 256 query
            rows a KV head (more, smaller tiles: each unit's split has fewer partial states to merge; H200: 0.2112 vs
            0.2381 ms on 64 x (32768 + 512)), the prefill kernel's rule above that (the K/V reads per tile count).
        overlap: run the own keys' launch on a side stream, beside the levels' (GPU; the merge waits for both).
        level_min_keys: cut the levels' (query tile, KV head) units into pieces of at least this many keys: the levels
            then take fewer CTAs (fewer partial states; with ``overlap`` the own keys run on the SMs left); 0: the
            planner's cut over every SM. Defaults measured: ``benchmarks/results/cascade_*_alternatives.json``.
        num_sms: multiprocessors both plans fill (default: the GPU's).
        level_options: extra NVRTC options of the levels' kernel (experiments, e.g. ``-DINFERNB_PREFILL_MERGE_BATCHED``).

    A call after the bound sequences changed length (an append) or were freed raises ``InputError``: make a new
    runner for the new step.
    """

    def __init__(self, cache, seq_ids: Sequence[int], qo_lens: Sequence[int] | None = None, *,
                 variant: Variant | None = None, rope: RoPE | None = None, sm_scale: float | None = None,
                 min_pages: int = 1, backend: str = "auto", tree: PrefixTree | None = None,
                 level_tile_q: int | None = None, overlap: bool = True, level_min_keys: int = 1024,
                 num_sms=None, level_options: tuple[str, ...] = ()):
        why = cascade_unsupported(variant)
        self._level_tile_q, self.overlap, self._level_min_keys = level_tile_q, bool(overlap), int(level_min_keys)
        self._num_sms, self._level_options = num_sms, tuple(level_options)
        self._side = None
        if why:
            raise InputError(f"cascade attention cannot run variant {variant.name!r}: {why}")
        self.variant, self.rope = variant, rope
        self.cache, self.seq_ids = cache, list(seq_ids)
        n = len(self.seq_ids)
        self.qo = np.ones(n, np.int64) if qo_lens is None else np.asarray(list(qo_lens), np.int64)
        self.kv_lens = cache.lengths(self.seq_ids)
        self.tree = cascade_tree(cache, self.seq_ids, self.qo, min_pages=min_pages) if tree is None else tree
        if self.tree.batch_size != n or list(self.tree.kv_lens) != self.kv_lens:
            raise InputError("tree: made for other sequences or lengths (cascade_tree(cache, seq_ids, qo_lens))")
        table = cache.page_table(self.seq_ids)
        ps, dev, d = cache.page_size, cache.pool.device, cache.head_dim
        self.device = dev
        qo_ptr = np.r_[0, np.cumsum(self.qo)]
        self.num_q = int(qo_ptr[-1])
        self.backend = resolve_backend("mma" if backend == "auto" else backend, head_dim=d, dtype=cache.dtype,
                                       paged=True, device=dev if dev.type == "cuda" else None)
        self._sm_scale = sm_scale
        self._ps = ps
        if self.tree.levels:
            rows = [np.concatenate([np.arange(qo_ptr[b], qo_ptr[b + 1]) for b in lv.rows]) for lv in self.tree.levels]
            self._level_table = PageTable.from_lists([list(lv.pages) for lv in self.tree.levels],
                                                     [lv.tokens for lv in self.tree.levels], ps, device=dev)
            level_rows = np.concatenate(rows)
            # q's rows in level order (none gathered when that is q itself: one level over every query row)
            self._level_rows = (None if np.array_equal(level_rows, np.arange(self.num_q)) else
                                torch.from_numpy(level_rows).to(dev))
            self._level_q = [len(r) for r in rows]
            self.depth = 1 + max(lv.depth for lv in self.tree.levels)
            # the merge's index: query row n's state of depth L is row merge_index[n, L] of the levels' output
            index = np.full((self.num_q, self.depth), -1, np.int32)
            start = np.r_[0, np.cumsum(self._level_q)]
            for i, (lv, r) in enumerate(zip(self.tree.levels, rows)):
                index[r, lv.depth] = np.arange(start[i], start[i + 1])
            self._merge_index = torch.from_numpy(index).to(dev)
        # RoPE: each query row at its position in its sequence, a level's keys at the level's start, a row's own
        # keys at its unique part's start (the launches see other requests and positions than the sequences)
        kv = np.asarray(self.kv_lens, np.int64)
        self._q_pos = np.repeat(kv - self.qo, self.qo) + np.arange(self.num_q) - np.repeat(qo_ptr[:-1], self.qo)
        if self.tree.levels:
            self._level_rope = (self._q_pos[level_rows], np.array([lv.start for lv in self.tree.levels], np.int64))
        own = [table.pages_of(b)[self.tree.unique_first_page[b]:] for b in range(n)]
        own_len = [self.tree.unique_tokens(b) for b in range(n)]
        self._own_table = PageTable.from_lists(own, own_len, ps, device=dev)
        self._own_len = own_len
        self._runners = None
        self._plan_for = None

    def _bind(self, hq: int, dtype: torch.dtype) -> None:
        """The runners for q's head count (made on the first call)."""
        c = self.cache
        shape = dict(num_qo_heads=hq, num_kv_heads=c.num_kv_heads, head_dim=c.head_dim, dtype=dtype,
                     page_size=self._ps)
        n_sms = self._num_sms
        level = None
        var, rope = self.variant, self.rope
        if self.tree.levels:
            tq = self._level_tile_q
            if tq is None and self.backend == "mma" and max(self._level_q) * (hq // c.num_kv_heads) <= 256:
                tq = 64
            lk = dict(causal=False, page_table=self._level_table, backend=self.backend, variant=var, rope=rope,
                      tile_q=tq, **shape)
            lp = plan_batch(self._level_q, [lv.tokens for lv in self.tree.levels], num_sms=n_sms, **lk)
            if self._level_min_keys > 0 and lp.num_ctas:
                from ..device import device_info

                all_sms = n_sms or device_info(self.device.index if self.device.type == "cuda" else None).sm_count
                want = int(np.ceil(float(np.sum(lp.tile_kv_len)) * c.num_kv_heads / self._level_min_keys))
                if want < lp.num_ctas:                     # (num_ctas: all_sms x the kernel's CTAs per SM)
                    sms = max(1, int(np.ceil(want * all_sms / lp.num_ctas)))
                    lp = plan_batch(self._level_q, [lv.tokens for lv in self.tree.levels], num_sms=sms, **lk)
            level = PrefillRunner(lp, c, self._level_table, variant=var, rope=rope, sm_scale=self._sm_scale,
                                  backend=self.backend, rope_positions=self._level_rope if rope else None,
                                  extra_options=self._level_options)
        # own keys: the decode kernel (one query a sequence, groups up to MAX_GROUP, RoPE at the sequence's own
        # positions only) or the prefill kernel (appends, larger groups, RoPE at the unique part's positions)
        if (self.qo == 1).all() and hq // c.num_kv_heads <= MAX_GROUP and rope is None:
            dp = plan_decode(self._own_len, num_qo_heads=hq, num_kv_heads=c.num_kv_heads, head_dim=c.head_dim,
                             page_size=self._ps, dtype=dtype, variant=var, num_sms=n_sms)
            own = DecodeRunner(dp, c, self._own_table, variant=var, sm_scale=self._sm_scale)
        else:
            up = plan_batch(self.qo.tolist(), self._own_len, causal=True, page_table=self._own_table,
                            backend=self.backend, variant=var, rope=rope, num_sms=n_sms, **shape)
            starts = np.array([self.tree.unique_start(b) for b in range(len(self.seq_ids))], np.int64)
            own = PrefillRunner(up, c, self._own_table, variant=var, rope=rope, sm_scale=self._sm_scale,
                                backend=self.backend, rope_positions=(self._q_pos, starts) if rope else None)
        self._runners = (level, own)                    # (both called as runner(q, cache=...))
        self._plan_for = (hq, dtype)

    def plans(self, num_qo_heads: int, dtype: torch.dtype | None = None) -> dict:
        """The two plans a call with ``num_qo_heads`` query heads runs (made now if no call made them yet):
        ``{"levels": the shared levels' prefill plan (None without shared levels), "own": each sequence's own keys'
        decode / append plan}``, e.g. for :func:`infernb.viz.plan_gantt`."""
        dtype = self.cache.dtype if dtype is None else dtype
        if self._plan_for != (num_qo_heads, dtype):
            if num_qo_heads % self.cache.num_kv_heads:
                raise InputError(f"num_qo_heads: {num_qo_heads} is not a multiple of the cache's "
                                 f"{self.cache.num_kv_heads} KV heads")
            self._bind(num_qo_heads, dtype)
        level, own = self._runners
        return {"levels": level.plan if level is not None else None, "own": own.plan}

    def __call__(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``q [sum(qo_lens), num_qo_heads, head_dim]`` -> ``(out like q, lse [sum(qo_lens), num_qo_heads] fp32)``."""
        c = self.cache
        if not isinstance(q, torch.Tensor) or q.dim() != 3 or q.shape[0] != self.num_q:
            raise InputError(f"q: expected [sum(qo_lens) = {self.num_q}, num_qo_heads, head_dim], got "
                             f"{list(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__}")
        if q.dtype not in DTYPES or q.dtype != c.dtype or q.shape[2] != c.head_dim or q.device != self.device:
            raise InputError(f"q: expected {c.dtype} on {self.device} with head dim {c.head_dim} (the cache's), got "
                             f"{q.dtype} on {q.device} with {q.shape[2]}")
        if q.shape[1] % c.num_kv_heads:
            raise InputError(f"q has {q.shape[1]} heads, not a multiple of the cache's {c.num_kv_heads} KV heads")
        if c.lengths(self.seq_ids) != self.kv_lens:
            raise InputError("the bound sequences changed length since this cascade runner was made (an append): "
                             "make a new one (CascadeRunner / cascade_attention) for this step")
        if self._plan_for != (q.shape[1], q.dtype):
            self._bind(q.shape[1], q.dtype)
        level, own = self._runners
        q = q.contiguous()
        if level is None:
            return own(q, cache=c)
        side = self.overlap and q.device.type == "cuda"
        if side:
            main = torch.cuda.current_stream(q.device)
            if self._side is None:
                self._side = torch.cuda.Stream(q.device)
            self._side.wait_stream(main)                  # q is ready
            with torch.cuda.stream(self._side):
                uo, us = own(q, cache=c)
        else:
            uo, us = own(q, cache=c)
        lo, ls = level(q if self._level_rows is None else q[self._level_rows], cache=c)
        if side:
            main.wait_stream(self._side)
            uo.record_stream(main)
            us.record_stream(main)
        return merge_gather(uo, us, lo, ls, self._merge_index, check_index=False)


class DecodeStep:
    """One decode step of some sequences, bound once and called per layer (:func:`decode_runner`): ``step(q)`` ->
    ``(out, lse)``. ``choice`` (:class:`CascadeChoice`) says whether it runs cascade attention or plain decode and
    why; ``runner`` is the :class:`CascadeRunner`, :class:`~infernb.ops.DecodeRunner` or (GQA groups above 16)
    :class:`~infernb.ops.PrefillRunner` it calls."""

    def __init__(self, runner, choice: CascadeChoice, call, num_qo_heads: int):
        self.runner, self.choice, self._call, self.num_qo_heads = runner, choice, call, num_qo_heads

    def __call__(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``q [len(seq_ids), num_qo_heads, head_dim]`` -> ``(out like q, lse [len(seq_ids), num_qo_heads] fp32)``."""
        if isinstance(q, torch.Tensor) and q.dim() == 3 and q.shape[1] != self.num_qo_heads:
            raise InputError(f"q has {q.shape[1]} heads; this decode step was made for num_qo_heads="
                             f"{self.num_qo_heads}")
        return self._call(q)

    def __repr__(self) -> str:
        return f"DecodeStep({type(self.runner).__name__}: {self.choice.reason})"


def decode_runner(cache, seq_ids: Sequence[int], *, num_qo_heads: int, dtype: torch.dtype | None = None,
                  variant: Variant | None = None, rope: RoPE | None = None, sm_scale: float | None = None,
                  cascade: bool | str = "auto", num_sms=None) -> DecodeStep:
    """The runner of one decode step of ``seq_ids`` (one new token each, appended already), made once and called per
    layer: cascade attention when the sequences share prefix pages and :func:`cascade_choice` estimates that it pays
    (``cascade="auto"``), or always (``True``), or plain decode (``False``) -- what :func:`infernb.decode` runs, without
    re-planning per call. A call after the sequences changed (an append, a free) raises ``InputError``: make the
    next step's runner.

    Args:
        cache, seq_ids: the :class:`~infernb.layout.PagedKVCache` and live sequences, in q's row order.
        num_qo_heads: q's heads; dtype: q's dtype (default the cache's).
        variant, rope, sm_scale, num_sms: as in :func:`infernb.decode` (``num_sms``: plain decode's plan).
    Returns:
        a :class:`DecodeStep` (``step(q) -> (out, lse)``, ``step.choice``).
    """
    seq_ids = list(seq_ids)
    dtype = cache.dtype if dtype is None else dtype
    if cascade not in (True, False, "auto"):
        raise InputError(f"cascade: expected True, False or 'auto', got {cascade!r}")
    if num_qo_heads % cache.num_kv_heads:
        raise InputError(f"num_qo_heads: {num_qo_heads} is not a multiple of the cache's {cache.num_kv_heads} KV heads")
    if cascade == "auto":
        choice = cascade_choice(cache, seq_ids, num_qo_heads=num_qo_heads, variant=variant, rope=rope)
    elif cascade:
        choice = CascadeChoice(True, "cascade: asked for (cascade=True)")
    else:
        choice = CascadeChoice(False, "plain: asked for (cascade=False)")
    if choice.use:
        r = CascadeRunner(cache, seq_ids, variant=variant, rope=rope, sm_scale=sm_scale, tree=choice.tree,
                          num_sms=num_sms)
        return DecodeStep(r, choice, r, num_qo_heads)
    runner, call = plain_decode_runner(cache, seq_ids, num_qo_heads=num_qo_heads, dtype=dtype, variant=variant,
                                       rope=rope, sm_scale=sm_scale, num_sms=num_sms)
    kv = cache.lengths(seq_ids)

    def plain(q):
        if cache.lengths(seq_ids) != kv:
            raise InputError("the bound sequences changed length since this decode step's runner was made (an "
                             "append): make a new one (ib.decode_runner) for this step")
        return call(q)

    return DecodeStep(runner, choice, plain, num_qo_heads)


def cascade_attention(q: torch.Tensor, cache, seq_ids: Sequence[int], qo_lens: Sequence[int] | None = None, *,
                      variant: Variant | None = None, rope: RoPE | None = None, sm_scale: float | None = None,
                      return_lse: bool = False, tree: PrefixTree | None = None, min_pages: int = 1,
                      backend: str = "auto"):
    """Decode or append attention of sequences that share prefix pages, each shared level computed once (one call:
    a :class:`CascadeRunner` made and run).

    Args:
        q: ``[sum(qo_lens), num_qo_heads, head_dim]`` fp16/bf16: each sequence's newest tokens' queries, in
            ``seq_ids`` order (decode: ``[len(seq_ids), ...]``).
        cache: the :class:`~infernb.layout.PagedKVCache` (the new tokens' K/V appended already).
        seq_ids: live sequences; qo_lens: new tokens of each (default one: decode); causal within each sequence.
        variant: a softmax :class:`~infernb.variants.Variant` whose hooks read neither the request nor the positions
            (soft-cap, a per-head score_mod; :func:`cascade_unsupported` says why another cannot run: a level's
            keys and queries sit at other requests and positions in its launch than in their sequences).
        rope: :class:`~infernb.reference.RoPE`: q and the (un-rotated) cached keys rotated at their positions in
            their sequences (the rotation pass, rounded once from fp32), as plain decode / append does.
        sm_scale: logit scale (default ``1 / sqrt(head_dim)``); return_lse: also return the natural-log LSE.
        tree: the :class:`~infernb.layout.prefix.PrefixTree` to use (default :func:`cascade_tree`);
            min_pages: the shortest run of shared pages made a level.
        backend: the prefill kernel of the shared levels and the append part (``"mma"``, ``"sm90"``); ``"auto"``:
            the mma.sync kernel, whose plans split a level's long key range over CTAs (the Hopper kernel's do not:
            a level of few query tiles would run on few SMs).
    Returns:
        ``out [sum(qo_lens), num_qo_heads, head_dim]`` q.dtype (and ``lse [sum(qo_lens), num_qo_heads]``).
    """
    if qo_lens is not None and len(list(qo_lens)) != len(list(seq_ids)):
        raise InputError(f"qo_lens has {len(list(qo_lens))} entries, seq_ids {len(list(seq_ids))}")
    out, lse = CascadeRunner(cache, seq_ids, qo_lens, variant=variant, rope=rope, sm_scale=sm_scale,
                             min_pages=min_pages, backend=backend, tree=tree)(q)
    return (out, lse) if return_lse else out


__all__ = ["CASCADE_MODEL", "CascadeChoice", "CascadeRunner", "DecodeStep", "cascade_attention", "cascade_choice",
           "cascade_tree", "cascade_unsupported", "decode_runner"]
