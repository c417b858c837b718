"""``PageTable``: FlashInfer's paged-KV index format for a batch of sequences.

Request ``b`` owns pages ``indices[indptr[b]:indptr[b+1]]`` of the pool, in logical order. Every page is
full except the last, which holds ``last_page_len[b]`` tokens (``1..page_size``); a request with no pages
has ``last_page_len[b] == 0``. All three arrays are int32 tensors on the pool's device.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..errors import InputError, is_int


@dataclasses.dataclass(frozen=True, eq=False)
class PageTable:
    """Page table of a batch.

    Attributes:
        indptr: ``[batch_size + 1]`` int32.
        indices: ``[num_used_pages]`` int32 page ids.
        last_page_len: ``[batch_size]`` int32, tokens in each request's last page.
        page_size: tokens per page.
        num_pages: size of the pool the ids point into (``None``: unknown, range not checked).
    """

    indptr: torch.Tensor
    indices: torch.Tensor
    last_page_len: torch.Tensor
    page_size: int
    num_pages: int | None = None

    def __post_init__(self):
        if not is_int(self.page_size) or self.page_size < 1:
            raise InputError(f"PageTable.page_size: expected a positive integer, got {self.page_size!r}")
        if self.num_pages is not None and (not is_int(self.num_pages) or self.num_pages < 0):
            raise InputError(f"PageTable.num_pages: expected a non-negative integer or None, got {self.num_pages!r}")
        # tables on the CPU are checked as they are made (cheap); a table on a GPU is checked by the kernels'
        # runners (validate() reads it back to the host)
        if all(isinstance(t, torch.Tensor) and t.device.type == "cpu"
               for t in (self.indptr, self.indices, self.last_page_len)):
            self.validate()

    @classmethod
    def from_lists(cls, pages: list[list[int]], lengths: list[int], page_size: int, *, num_pages: int | None = None,
                   device="cpu", validate: bool = True) -> "PageTable":
        """Build from per-request page lists and token counts."""
        indptr = np.zeros(len(pages) + 1, dtype=np.int32)
        indptr[1:] = np.cumsum([len(p) for p in pages])
        flat = np.fromiter((x for p in pages for x in p), dtype=np.int32, count=int(indptr[-1]))
        last = np.array([0 if n == 0 else n - (len(p) - 1) * page_size for p, n in zip(pages, lengths)], dtype=np.int32)
        t = cls(torch.from_numpy(indptr).to(device), torch.from_numpy(flat).to(device),
                torch.from_numpy(last).to(device), page_size, num_pages)
        if validate:
            t.validate()
        return t

    # ------------------------------------------------------------------ queries
    @property
    def batch_size(self) -> int:
        return self.indptr.numel() - 1

    @property
    def num_used_pages(self) -> int:
        return self.indices.numel()

    @property
    def device(self) -> torch.device:
        return self.indptr.device

    def kv_lens(self) -> list[int]:
        """Tokens per request: ``(num_pages - 1) * page_size + last_page_len`` (0 for no pages)."""
        n = np.diff(self.indptr.cpu().numpy())
        last = self.last_page_len.cpu().numpy()
        return [int(x) for x in np.where(n > 0, (n - 1) * self.page_size + last, 0)]

    def pages_of(self, b: int) -> list[int]:
        """Page ids of request ``b`` in logical order."""
        ptr = self.indptr.cpu()
        return self.indices[int(ptr[b]):int(ptr[b + 1])].cpu().tolist()

    def to(self, device) -> "PageTable":
        return dataclasses.replace(self, indptr=self.indptr.to(device), indices=self.indices.to(device),
                                   last_page_len=self.last_page_len.to(device))

    def to_dense(self) -> torch.Tensor:
        """``[batch_size, max_pages]`` int32 matrix of page ids, ``-1`` where a request has fewer pages."""
        ptr = self.indptr.cpu().numpy()
        n = np.diff(ptr)
        out = np.full((self.batch_size, int(n.max()) if n.size else 0), -1, dtype=np.int32)
        idx = self.indices.cpu().numpy()
        for b in range(self.batch_size):
            out[b, :n[b]] = idx[ptr[b]:ptr[b + 1]]
        return torch.from_numpy(out)

    def validate(self) -> "PageTable":
        """Check the format; raise :class:`InputError` naming the offending request. Returns ``self``."""
        for name, t, dims in (("indptr", self.indptr, "[batch_size + 1]"), ("indices", self.indices, "[num_used_pages]"),
                              ("last_page_len", self.last_page_len, "[batch_size]")):
            if not isinstance(t, torch.Tensor) or t.dim() != 1:
                raise InputError(f"PageTable.{name}: expected a 1-D tensor {dims}, got "
                                 f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
            if t.dtype != torch.int32:
                raise InputError(f"PageTable.{name}: expected int32, got {t.dtype}")
        if len({self.indptr.device, self.indices.device, self.last_page_len.device}) != 1:
            raise InputError("PageTable: indptr, indices and last_page_len must be on one device")
        if self.page_size < 1:
            raise InputError(f"PageTable.page_size: expected >= 1, got {self.page_size}")
        ptr = self.indptr.cpu().numpy()
        if ptr.size < 1 or ptr[0] != 0:
            raise InputError(f"PageTable.indptr: must start at 0, got {ptr[:1].tolist()}")
        d = np.diff(ptr)
        if (d < 0).any():
            b = int(np.argmax(d < 0))
            raise InputError(f"PageTable.indptr: not monotonic at request {b}: indptr[{b}] = {ptr[b]} > "
                             f"indptr[{b + 1}] = {ptr[b + 1]}")
        if ptr[-1] != self.indices.numel():
            raise InputError(f"PageTable.indptr: last element {ptr[-1]} must equal len(indices) = {self.indices.numel()}")
        if self.last_page_len.numel() != self.batch_size:
            raise InputError(f"PageTable.last_page_len: expected {self.batch_size} entries (one per request), "
                             f"got {self.last_page_len.numel()}")
        last = self.last_page_len.cpu().numpy()
        for b in range(self.batch_size):
            if d[b] == 0 and last[b] != 0:
                raise InputError(f"PageTable: request {b} has no pages but last_page_len[{b}] = {last[b]} (expected 0)")
            if d[b] > 0 and not 1 <= last[b] <= self.page_size:
                raise InputError(f"PageTable: request {b} has last_page_len {last[b]}, outside 1..page_size "
                                 f"({self.page_size})")
        idx = self.indices.cpu().numpy()
        if idx.size:
            bad = (idx < 0) | ((idx >= self.num_pages) if self.num_pages is not None else False)
            if bad.any():
                j = int(np.argmax(bad))
                b = int(np.searchsorted(ptr, j, side="right") - 1)
                raise InputError(f"PageTable: request {b} refers to page {idx[j]}, outside the pool "
                                 f"[0, {self.num_pages if self.num_pages is not None else 'inf'})")
            # a page twice in one request would hold two positions' keys at once (pages are shared only across
            # requests, by forks)
            req = np.repeat(np.arange(self.batch_size), d)
            key = req * (int(idx.max()) + 1) + idx.astype(np.int64)
            srt = np.sort(key)
            dup = srt[1:] == srt[:-1]
            if dup.any():
                k = int(srt[1:][dup][0])
                b, page = divmod(k, int(idx.max()) + 1)
                raise InputError(f"PageTable: request {b} lists page {page} more than once")
        return self

    def __str__(self) -> str:
        lens = self.kv_lens()
        return (f"PageTable(batch_size={self.batch_size}, page_size={self.page_size}, pages={self.num_used_pages}, "
                f"tokens={sum(lens)}, kv_lens={lens if len(lens) <= 8 else lens[:8] + ['...']}, device={self.device})")

    __repr__ = __str__
