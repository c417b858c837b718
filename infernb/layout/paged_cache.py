"""``PagedKVCache``: a page pool of K/V on any device, with the bookkeeping of a serving engine.

The pool is one tensor (FlashInfer's layout): ``[num_pages, 2, page_size, num_kv_heads, head_dim]`` for
``NHD`` or ``[num_pages, 2, num_kv_heads, page_size, head_dim]`` for ``HND`` (index 0 = K, 1 = V).
Bookkeeping lives on the CPU in NumPy arrays, vectorized over sequences and tokens (no Python loop over
either in ``append``): a *block table* of page ids per sequence (vLLM's name for it; ragged, ``block_table.py``),
page counts and lengths per row, reference counts per page, and a stack of free pages. Data moves in one
CUDA kernel on a GPU pool, or in vectorized torch indexing on a CPU pool.

Invariants: a page with reference count > 1 (shared after :meth:`fork`) is always full, so no write ever
lands in a shared page; a page is free iff its reference count is 0.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

from ..errors import InputError, OutOfPagesError, is_int
from . import append_kernel
from .convert import LAYOUTS, convert_pool_layout
from .block_table import BlockTable
from .page_table import PageTable
from .snapshot import PoolSnapshot

#: Pinned staging buffers cycled by appends to a CUDA pool.
PINNED_RING = 8
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class PagedKVCache:
    """A paged K/V cache.

    Args:
        num_pages: pages in the pool.
        page_size: tokens per page (1..any; kernels support 1..64).
        num_kv_heads, head_dim: K/V shape per token.
        dtype: ``torch.float16``, ``torch.bfloat16`` or ``torch.float32``.
        device: where the pool lives.
        layout: ``"NHD"`` (``[pages, 2, page_size, heads, dim]``) or ``"HND"`` (``[pages, 2, heads, page_size, dim]``).

    Example::

        cache = PagedKVCache(num_pages=64, page_size=16, num_kv_heads=2, head_dim=64)
        ids = cache.add_sequences(3)
        cache.append(ids, k, v, lengths=[40, 3, 17])     # k, v: [60, 2, 64]
        table = cache.page_table(ids)                     # PageTable for the kernels
    """

    def __init__(self, num_pages: int, page_size: int, num_kv_heads: int, head_dim: int, *,
                 dtype: torch.dtype = torch.float16, device="cpu", layout: str = "NHD"):
        for name, val in (("num_pages", num_pages), ("page_size", page_size), ("num_kv_heads", num_kv_heads),
                          ("head_dim", head_dim)):
            if not is_int(val) or val < 1:
                raise InputError(f"{name}: expected a positive integer, got {val!r}")
        if layout not in LAYOUTS:
            raise InputError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
        if dtype not in DTYPES:
            raise InputError(f"dtype: expected one of {[str(d) for d in DTYPES]}, got {dtype}")
        self.num_pages, self.page_size = int(num_pages), int(page_size)
        self.num_kv_heads, self.head_dim = int(num_kv_heads), int(head_dim)
        self.dtype, self.layout = dtype, layout
        shape = ((num_pages, 2, page_size, num_kv_heads, head_dim) if layout == "NHD"
                 else (num_pages, 2, num_kv_heads, page_size, head_dim))
        self.pool = torch.zeros(shape, dtype=dtype, device=device)
        self._refcount = np.zeros(num_pages, dtype=np.int32)
        self._free = np.arange(num_pages - 1, -1, -1, dtype=np.int64)   # stack: pops give 0, 1, 2, ... first
        self._nfree = num_pages
        self._table = BlockTable(16)                                    # block table: row -> page ids (ragged)
        self._npages = np.zeros(16, dtype=np.int64)                     # pages held per row
        self._len = np.zeros(16, dtype=np.int64)                        # tokens per row
        self._row: dict[int, int] = {}                                  # live seq id -> row (creation order)
        self._free_rows: list[int] = list(range(15, -1, -1))
        self._freed: set[int] = set()
        self._next_id = 0
        self._ring: list = []          # pinned staging buffers for append destinations (CUDA pools)
        self._ring_pos = 0

    # ------------------------------------------------------------------ introspection
    @property
    def device(self) -> torch.device:
        return self.pool.device

    @property
    def num_free_pages(self) -> int:
        return self._nfree

    @property
    def seq_ids(self) -> list[int]:
        """Live sequence ids, in creation order."""
        return list(self._row)

    def lengths(self, seq_ids: Iterable[int] | None = None) -> list[int]:
        """Token counts of ``seq_ids`` (default: all live sequences)."""
        return self._len[self._rows(self.seq_ids if seq_ids is None else seq_ids)].tolist()

    def pages(self, seq_id: int) -> list[int]:
        """Page ids of a sequence, in logical order."""
        r = self._rows([seq_id])[0]
        return self._table.row(r, int(self._npages[r])).tolist()

    def snapshot(self) -> PoolSnapshot:
        """Copy of the bookkeeping for pictures and statistics."""
        owner = np.full(self.num_pages, -1, dtype=np.int64)
        fill = np.zeros(self.num_pages, dtype=np.int64)
        seq_pages, seq_lens = {}, {}
        for sid, r in reversed(self._row.items()):           # the first creator of a shared page wins
            n, length = int(self._npages[r]), int(self._len[r])
            pages = self._table.row(r, n)
            owner[pages] = sid
            fill[pages] = np.minimum(self.page_size, length - np.arange(n) * self.page_size)
        for sid, r in self._row.items():
            seq_pages[sid] = self._table.row(r, int(self._npages[r])).tolist()
            seq_lens[sid] = int(self._len[r])
        return PoolSnapshot(owner, self._refcount.copy(), fill, seq_pages, seq_lens, self.page_size)

    def stats(self) -> dict:
        """See :meth:`PoolSnapshot.stats`."""
        return self.snapshot().stats()

    def __repr__(self) -> str:
        s = self.stats()
        return (f"PagedKVCache({self.layout}, pool {list(self.pool.shape)} {self.dtype} on {self.device}; "
                f"{s['sequences']} sequences, {s['tokens']} tokens, {s['pages_used']}/{self.num_pages} pages used, "
                f"{s['pages_shared']} shared)")

    # ------------------------------------------------------------------ lifecycle
    def add_sequences(self, num: int = 1) -> list[int]:
        """Create ``num`` empty sequences; return their ids (never reused)."""
        if not is_int(num) or num < 0:
            raise InputError(f"num: expected a non-negative integer, got {num!r}")
        if num > len(self._free_rows):
            self._grow(len(self._row) + num)
        ids = list(range(self._next_id, self._next_id + num))
        self._next_id += num
        for i in ids:
            r = self._free_rows.pop()
            self._row[i] = r
            self._npages[r] = self._len[r] = 0
        return ids

    def free(self, seq_ids: int | Iterable[int]) -> None:
        """Release sequences; pages no other sequence shares return to the pool. Freeing twice is an error."""
        ids = _seq_ids(seq_ids, scalar_ok=True)
        if len(set(ids)) != len(ids):
            raise InputError(f"seq_ids: each sequence may appear once, got {ids}")
        rows = self._rows(ids)
        for i, r in zip(ids, rows):
            pages = self._table.row(r, int(self._npages[r])).copy()     # distinct within a row
            self._refcount[pages] -= 1
            self._push(pages[self._refcount[pages] == 0])
            self._table.release(r)
            self._npages[r] = self._len[r] = 0
            del self._row[i]
            self._free_rows.append(int(r))
            self._freed.add(i)

    def fork(self, seq_id: int) -> int:
        """New sequence sharing ``seq_id``'s full pages (shared prefix); a partly filled last page is copied
        into a page of its own. Returns the child's id. Raises :class:`OutOfPagesError` (changing nothing)
        if that copy needs a page and none is free."""
        if not is_int(seq_id):
            raise InputError(f"seq_id: expected one integer sequence id, got {seq_id!r}")
        pr = self._rows([seq_id])[0]
        n, length = int(self._npages[pr]), int(self._len[pr])
        partial = length % self.page_size != 0
        if partial and self._nfree == 0:
            raise OutOfPagesError(f"fork({seq_id}): the partly filled last page must be copied, but the pool "
                                  f"has no free page (0 of {self.num_pages}); nothing was changed")
        (child,) = self.add_sequences(1)
        cr = self._row[child]
        pages = self._table.row(pr, n).copy()
        if partial:
            (new,) = self._pop(1)
            self.pool[new] = self.pool[pages[-1]]
            pages[-1] = new
        self._refcount[pages] += 1
        self._table.reserve(np.array([cr]), np.array([n]), np.array([0]))
        self._table.set(np.full(n, cr), np.arange(n), pages)
        self._npages[cr], self._len[cr] = n, length
        return child

    # ------------------------------------------------------------------ data
    def append(self, seq_ids: Sequence[int], k: torch.Tensor, v: torch.Tensor,
               lengths: Sequence[int] | None = None) -> None:
        """Append new tokens' K/V to several sequences in one call.

        Args:
            seq_ids: distinct live sequence ids.
            k, v: ``[total_new_tokens, num_kv_heads, head_dim]``, the new tokens of ``seq_ids[0]`` first, then
                ``seq_ids[1]``'s, ...; cast to the pool dtype; moved to the pool's device if needed.
            lengths: new tokens per sequence; default one token each (decode).

        All-or-nothing: if the pool lacks the pages, :class:`OutOfPagesError` is raised before anything changes.
        Page allocation is CPU bookkeeping (one pass over sequences); the data moves in one CUDA kernel launch
        on a GPU pool (``kernels/include/infernb/paged_append.cuh``), or two vectorized ``index_put`` calls on
        a CPU pool. No loop over tokens either way.
        """
        ids = _seq_ids(seq_ids)
        self._rows(ids)
        if len(set(ids)) != len(ids):
            raise InputError(f"seq_ids: each sequence may appear once per append, got {ids}")
        if lengths is None:
            lengths = [1] * len(ids)
        if isinstance(lengths, torch.Tensor):
            lengths = lengths.tolist()
        lengths = list(lengths) if isinstance(lengths, (list, tuple, np.ndarray)) else lengths
        if not isinstance(lengths, list) or not all(is_int(x) for x in lengths):
            raise InputError(f"lengths: expected a sequence of integer token counts, got {lengths!r}")
        lengths = [int(x) for x in lengths]
        if len(lengths) != len(ids):
            raise InputError(f"lengths: expected {len(ids)} entries (one per sequence), got {len(lengths)}")
        if any(n < 0 for n in lengths):
            raise InputError(f"lengths: expected non-negative counts, got {lengths}")
        total = sum(lengths)
        want = (total, self.num_kv_heads, self.head_dim)
        for name, t in (("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != want:
                raise InputError(f"{name}: expected shape {list(want)} [sum(lengths), num_kv_heads, head_dim], got "
                                 f"{list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
            if not t.is_floating_point():
                raise InputError(f"{name}: expected a floating dtype, got {t.dtype}")
            if t.layout != torch.strided or t.device.type == "meta":
                raise InputError(f"{name}: expected a dense tensor holding data, got a {t.layout} tensor on "
                                 f"{t.device}")
        # the data the pool will receive, converted (and detached: a cache stores values, never an autograd
        # graph) before any bookkeeping, so a tensor that cannot be read fails here and changes nothing
        try:
            kk = k.detach().to(self.device, self.dtype).contiguous()
            vv = v.detach().to(self.device, self.dtype).contiguous()
        except (RuntimeError, NotImplementedError, TypeError) as e:
            raise InputError(f"k / v: cannot be copied to the pool's device {self.device} as {self.dtype} "
                             f"({type(e).__name__}: {e}); nothing was changed") from e

        # 1. plan the pages (vectorized over sequences) and check capacity before touching anything.
        #    Invariant: a row of length L holds exactly ceil(L / page_size) pages.
        P = self.page_size
        rows = self._rows(ids)
        lens = np.asarray(lengths, dtype=np.int64)
        old = self._len[rows]
        new_len = old + lens
        need = -(-new_len // P) - self._npages[rows]
        total_need = int(need.sum())
        if total_need > self._nfree:
            raise OutOfPagesError(f"append needs {total_need} new pages for {total} tokens but only "
                                  f"{self._nfree} of {self.num_pages} are free; nothing was changed")
        # a write into an existing partly filled page must not hit a shared page (fork keeps this true)
        into_old = (lens > 0) & (old % P != 0)
        if into_old.any() and (self._refcount[self._table.get(rows[into_old], old[into_old] // P)] > 1).any():
            raise AssertionError("internal: an append would write into a page shared by a fork")
        # 2. the pages the new tokens go to: existing ones from the table, new ones peeked off the free stack (a pop
        #    takes them in this order); the data is written before any bookkeeping changes, so a write that fails
        #    leaves the cache as it was (all-or-nothing)
        new = self._peek(total_need)
        if total:
            tok_row = np.repeat(rows, lens)
            pos = np.repeat(old - (np.cumsum(lens) - lens), lens) + np.arange(total)
            j = pos // P
            held = np.repeat(self._npages[rows], lens)
            inside = j < held
            dest = np.empty((2, total), dtype=np.int32)
            dest[0, inside] = self._table.get(tok_row[inside], j[inside])
            first_new = np.repeat(np.cumsum(need) - need, lens)         # the row's first new page in `new`
            dest[0, ~inside] = new[(first_new + j - held)[~inside]]
            dest[1] = pos % P
            self._write(dest, kk, vv)
        # 3. commit the bookkeeping (plain NumPy: cannot fail halfway)
        if total_need:
            self._table.reserve(rows, -(-new_len // P), self._npages[rows])
            self._pop(total_need)
            first = np.repeat(np.cumsum(need) - need, need)
            self._table.set(np.repeat(rows, need), np.repeat(self._npages[rows], need) + np.arange(total_need) - first,
                            new)
            self._refcount[new] = 1
            self._npages[rows] += need
        self._len[rows] = new_len

    def _write(self, dest: np.ndarray, kk: torch.Tensor, vv: torch.Tensor) -> None:
        """K/V rows to their (page, slot): one CUDA kernel on a GPU pool, two indexed writes on a CPU pool."""
        if self.device.type == "cuda" and self.head_dim in append_kernel.APPEND_HEAD_DIMS:
            append_kernel.append_paged_kv(self.pool, self.layout, kk, vv, self._to_device(dest))
            return
        d = torch.from_numpy(dest).to(self.device).long()
        if self.layout == "NHD":
            self.pool[d[0], 0, d[1]] = kk
            self.pool[d[0], 1, d[1]] = vv
        else:
            self.pool[d[0], 0, :, d[1]] = kk
            self.pool[d[0], 1, :, d[1]] = vv

    def _to_device(self, arr: np.ndarray) -> torch.Tensor:
        """Copy a small int32 array to the GPU without blocking the host: through a ring of pinned staging
        buffers, each reused only once the copy out of it has completed (checked with an event, so the host
        waits only if the GPU is a whole ring of appends behind)."""
        n = arr.size
        slot = self._ring_pos % PINNED_RING
        self._ring_pos += 1
        buf, done = self._ring[slot] if slot < len(self._ring) else (None, None)
        if buf is None or buf.numel() < n:
            buf, done = torch.empty(max(n, 4096), dtype=torch.int32, pin_memory=True), None
        if done is not None and not done.query():
            done.synchronize()
        view = buf[:n]
        view.numpy()[:] = arr.ravel()
        out = view.to(self.device, non_blocking=True).view(arr.shape)
        done = torch.cuda.Event()
        done.record()
        if slot < len(self._ring):
            self._ring[slot] = (buf, done)
        else:
            self._ring.append((buf, done))
        return out

    def gather(self, seq_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A sequence's K and V as contiguous ``[length, num_kv_heads, head_dim]`` tensors (copies)."""
        r = self._rows([seq_id])[0]
        pages = torch.from_numpy(self._table.row(r, int(self._npages[r])).copy()).to(self.device)
        kv = self.pool[pages]                                                # [n, 2, P, H, D] or [n, 2, H, P, D]
        if self.layout == "HND":
            kv = kv.transpose(2, 3)
        kv = kv.transpose(0, 1).reshape(2, -1, self.num_kv_heads, self.head_dim)[:, :self._len[r]]
        return kv[0].contiguous(), kv[1].contiguous()

    def page_table(self, seq_ids: Sequence[int] | None = None) -> PageTable:
        """The :class:`PageTable` of ``seq_ids`` (default: all live sequences), int32 on the pool's device."""
        rows = self._rows(self.seq_ids if seq_ids is None else list(seq_ids))
        n = self._npages[rows]
        indptr = np.zeros(len(rows) + 1, dtype=np.int32)
        np.cumsum(n, out=indptr[1:])
        # the pages of each row, gathered entry by entry (no [rows, max pages] copy of the block table: one long
        # sequence among thousands of short ones would make it gigabytes)
        total = int(indptr[-1])
        col = np.arange(total, dtype=np.int64) - np.repeat(indptr[:-1].astype(np.int64), n)
        indices = self._table.get(np.repeat(rows, n), col).astype(np.int32)
        lens = self._len[rows]
        last = np.where(n > 0, lens - (n - 1) * self.page_size, 0).astype(np.int32)
        t = PageTable(torch.from_numpy(indptr).to(self.device), torch.from_numpy(indices).to(self.device),
                      torch.from_numpy(last).to(self.device), self.page_size, self.num_pages)
        return t

    def to_layout(self, layout: str) -> "PagedKVCache":
        """A copy of this cache (pool and bookkeeping) in ``layout``."""
        if layout not in LAYOUTS:
            raise InputError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
        new = PagedKVCache.__new__(PagedKVCache)
        new.__dict__.update({k: v for k, v in self.__dict__.items() if k != "pool"})
        for name in ("_refcount", "_free", "_table", "_npages", "_len"):
            setattr(new, name, getattr(self, name).copy())      # (BlockTable.copy too)
        new._row, new._free_rows, new._freed = dict(self._row), list(self._free_rows), set(self._freed)
        new.layout = layout
        new._ring, new._ring_pos = [], 0
        new.pool = convert_pool_layout(self.pool, self.layout, layout)
        return new

    # ------------------------------------------------------------------ helpers
    def _rows(self, seq_ids) -> np.ndarray:
        """Rows of live sequence ids (``InputError`` naming a freed or unknown id, or ids that are not integers)."""
        seq_ids = _seq_ids(seq_ids)
        try:
            return np.fromiter((self._row[i] for i in seq_ids), dtype=np.int64)
        except KeyError:
            for i in seq_ids:
                if i not in self._row:
                    raise InputError(f"seq_ids: {self._unknown(i)}") from None
            raise

    def _peek(self, n: int) -> np.ndarray:
        """The ``n`` pages the next pop returns, in its order (a copy; the stack is unchanged)."""
        return self._free[self._nfree - n:self._nfree][::-1].copy()

    def _pop(self, n: int) -> np.ndarray:
        out = self._peek(n)
        self._nfree -= n
        return out

    def _push(self, pages: np.ndarray) -> None:
        self._free[self._nfree:self._nfree + len(pages)] = pages[::-1]
        self._nfree += len(pages)

    def _grow(self, rows: int) -> None:
        """At least ``rows`` rows of bookkeeping (doubling)."""
        R = self._table.rows
        if rows <= R:
            return
        nr = max(rows, 2 * R)
        self._table.grow_rows(nr)
        self._npages = np.concatenate([self._npages, np.zeros(nr - R, dtype=np.int64)])
        self._len = np.concatenate([self._len, np.zeros(nr - R, dtype=np.int64)])
        self._free_rows = list(range(nr - 1, R - 1, -1)) + self._free_rows

    def _unknown(self, i) -> str:
        if i in self._freed:
            return f"sequence {i} was already freed"
        live = self.seq_ids
        return f"sequence {i} does not exist (live ids: {live[:16]}{'...' if len(live) > 16 else ''})"


def _seq_ids(seq_ids, scalar_ok: bool = False) -> list[int]:
    """``seq_ids`` as a list of ints, or ``InputError`` naming it (a scalar where a sequence is expected, nested
    lists, floats, bools)."""
    if scalar_ok and is_int(seq_ids):
        return [int(seq_ids)]
    if isinstance(seq_ids, torch.Tensor):
        seq_ids = seq_ids.tolist()
    if isinstance(seq_ids, (str, bytes)) or not isinstance(seq_ids, Iterable):
        raise InputError(f"seq_ids: expected a sequence of integer ids{' or one id' if scalar_ok else ''}, got "
                         f"{seq_ids!r}")
    ids = list(seq_ids)
    bad = [i for i in ids if not is_int(i)]
    if bad:
        raise InputError(f"seq_ids: expected integer ids, got {bad[0]!r} in {ids}")
    return [int(i) for i in ids]
