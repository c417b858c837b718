"""Shared-prefix (cascade) attention over fork-shared pages (issue 15), composed of the GPU-tested kernels.

:func:`cascade_attention` reads the batch's shared prefixes from its page table
(:func:`infernb.layout.prefix.prefix_tree`) and computes, for the newest ``qo_lens[b]`` tokens of each sequence
(decode: one):

1. every shared level once, as one prefill launch whose requests are the levels: level L's query rows are all the
   queries of the sequences that share it (rows x GQA group on the tensor cores), its keys the level's pages, no mask
   (the level lies wholly before each of its sequences' new tokens: :func:`prefix_tree`'s ``max_pages``);
2. each sequence's own keys (its pages after its deepest shared level) as decode (one query a sequence) or append
   (bottom-right causal);
3. the partial results merged by their LSE (:func:`~infernb.ops.merge.merge_states`): exactly softmax attention over
   the whole sequence.

The result equals plain decode / append of the same cache (tests: against the float64 reference). This is the
composition the single-launch cascade kernel of issue 15 will be measured against: three launches, one level after
the other. It runs plain softmax attention (no variant, no RoPE: a level's keys sit at other positions in the
launch than in the sequence).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..errors import InputError
from ..layout.page_table import PageTable
from ..layout.prefix import PrefixTree, prefix_tree
from ._common import DTYPES
from .merge import merge_states
from .paged_decode import MAX_GROUP, DecodeRunner, plan_decode
from .prefill import PrefillRunner, plan_batch
from .prefill_sm90 import resolve_backend


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


class CascadeRunner:
    """Cascade attention bound to sequences of a cache (plan once, call per layer): the prefix tree, the levels'
    prefill plan and the own keys' decode / append plan are made here; a call gathers each level's query rows, runs
    the levels (one launch), the own keys (one launch) and the merge.

    Args:
        cache, seq_ids, qo_lens, sm_scale, min_pages, backend, tree: as in :func:`cascade_attention`.

    A call after the bound sequences changed length (an append) or were freed raises ``InputError``: make a new
    runner for the new step.
    """

    def __init__(self, cache, seq_ids: Sequence[int], qo_lens: Sequence[int] | None = None, *,
                 sm_scale: float | None = None, min_pages: int = 1, backend: str = "auto",
                 tree: PrefixTree | None = None):
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
            self._level_rows = torch.from_numpy(np.concatenate(rows)).to(dev)
            # where each level's output rows go: (depth, query row) of the stacked states
            self._level_dst = torch.from_numpy(np.concatenate(
                [np.stack([np.full(len(r), 1 + lv.depth), r], 1) for lv, r in zip(self.tree.levels, rows)])).to(dev)
            self._level_q = [len(r) for r in rows]
            self.depth = 1 + max(lv.depth for lv in self.tree.levels)
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
        level = None
        if self.tree.levels:
            lp = plan_batch(self._level_q, [lv.tokens for lv in self.tree.levels], causal=False,
                            page_table=self._level_table, backend=self.backend, **shape)
            level = PrefillRunner(lp, c, self._level_table, sm_scale=self._sm_scale, backend=self.backend)
        if (self.qo == 1).all() and hq // c.num_kv_heads <= MAX_GROUP:   # (larger groups: the prefill kernel)
            dp = plan_decode(self._own_len, num_qo_heads=hq, num_kv_heads=c.num_kv_heads, head_dim=c.head_dim,
                             page_size=self._ps, dtype=dtype)
            own = DecodeRunner(dp, c, self._own_table, sm_scale=self._sm_scale)
            own_call = lambda q: own(q, c)  # noqa: E731
        else:
            up = plan_batch(self.qo.tolist(), self._own_len, causal=True, page_table=self._own_table,
                            backend=self.backend, **shape)
            own = PrefillRunner(up, c, self._own_table, sm_scale=self._sm_scale, backend=self.backend)
            own_call = lambda q: own(q, cache=c)  # noqa: E731
        self._runners = (level, own_call)
        self._plan_for = (hq, dtype)

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
        level, own_call = self._runners
        q = q.contiguous()
        uo, us = own_call(q)
        if level is None:
            return uo, us
        lo, ls = level(q[self._level_rows], cache=c)
        hq, d = q.shape[1], q.shape[2]
        sv = torch.zeros((1 + self.depth, self.num_q, hq, d), dtype=q.dtype, device=q.device)
        ss = torch.full((1 + self.depth, self.num_q, hq), float("-inf"), dtype=torch.float32, device=q.device)
        sv[0], ss[0] = uo, us
        sv[self._level_dst[:, 0], self._level_dst[:, 1]] = lo
        ss[self._level_dst[:, 0], self._level_dst[:, 1]] = ls
        return merge_states(sv.transpose(0, 1).contiguous(), ss.transpose(0, 1).contiguous())


def cascade_attention(q: torch.Tensor, cache, seq_ids: Sequence[int], qo_lens: Sequence[int] | None = None, *,
                      sm_scale: float | None = None, return_lse: bool = False, tree: PrefixTree | None = None,
                      min_pages: int = 1, backend: str = "auto"):
    """Decode or append attention of sequences that share prefix pages, each shared level computed once (one call:
    a :class:`CascadeRunner` made and run).

    Args:
        q: ``[sum(qo_lens), num_qo_heads, head_dim]`` fp16/bf16: each sequence's newest tokens' queries, in
            ``seq_ids`` order (decode: ``[len(seq_ids), ...]``).
        cache: the :class:`~infernb.layout.PagedKVCache` (the new tokens' K/V appended already).
        seq_ids: live sequences; qo_lens: new tokens of each (default one: decode); causal within each sequence.
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
    out, lse = CascadeRunner(cache, seq_ids, qo_lens, sm_scale=sm_scale, min_pages=min_pages, backend=backend,
                             tree=tree)(q)
    return (out, lse) if return_lse else out


__all__ = ["CascadeRunner", "cascade_attention", "cascade_tree"]
