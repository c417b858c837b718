"""The block table of a :class:`~infernb.layout.PagedKVCache`: each row's page ids, stored ragged.

Row ``r``'s entries live in ``flat[start[r]:start[r] + cap[r]]``, a vector per row inside one buffer, so memory
follows the pages actually held: one million-token sequence among thousands of short ones costs its own pages, not
``rows x max_pages`` (a dense table would be gigabytes). A row that outgrows its room moves to the end of the
buffer with twice the room; the abandoned space is reclaimed by compacting when it outweighs the live room.
Reads and writes are vectorized over (row, column) pairs.
"""
from __future__ import annotations

import numpy as np


class BlockTable:
    def __init__(self, rows: int = 16):
        self.start = np.zeros(rows, np.int64)
        self.cap = np.zeros(rows, np.int64)
        self.flat = np.full(64, -1, np.int64)
        self.end = 0

    @property
    def rows(self) -> int:
        return len(self.start)

    def copy(self) -> "BlockTable":
        t = BlockTable.__new__(BlockTable)
        t.start, t.cap, t.flat, t.end = self.start.copy(), self.cap.copy(), self.flat.copy(), self.end
        return t

    def grow_rows(self, rows: int) -> None:
        """At least ``rows`` rows (new rows hold no room yet)."""
        if rows > len(self.start):
            extra = rows - len(self.start)
            self.start = np.concatenate([self.start, np.zeros(extra, np.int64)])
            self.cap = np.concatenate([self.cap, np.zeros(extra, np.int64)])

    def reserve(self, rows: np.ndarray, need: np.ndarray, held: np.ndarray) -> None:
        """Room for ``need`` entries in each of ``rows`` (which hold ``held`` entries now, kept)."""
        short = need > self.cap[rows]
        if not short.any():
            return
        rows, need, held = rows[short], need[short], held[short]
        new_cap = np.maximum(np.maximum(need, 2 * self.cap[rows]), 8)
        if self.end + int(new_cap.sum()) > len(self.flat):
            live = int(self.cap.sum()) + int(new_cap.sum())
            if self.end > 2 * live:
                self._compact()
            size = max(2 * len(self.flat), self.end + int(new_cap.sum()))
            flat = np.full(size, -1, np.int64)
            flat[:self.end] = self.flat[:self.end]
            self.flat = flat
        new_start = self.end + np.cumsum(new_cap) - new_cap
        for r, s, n in zip(rows.tolist(), new_start.tolist(), held.tolist()):   # rows that moved: few, amortized
            self.flat[s:s + n] = self.flat[self.start[r]:self.start[r] + n]
        self.start[rows], self.cap[rows] = new_start, new_cap
        self.end += int(new_cap.sum())

    def _compact(self) -> None:
        """Rows packed at the start of a fresh buffer, in row order (the abandoned space freed)."""
        flat = np.full(max(64, 2 * int(self.cap.sum())), -1, np.int64)
        start = np.cumsum(self.cap) - self.cap
        for r in np.flatnonzero(self.cap).tolist():
            flat[start[r]:start[r] + self.cap[r]] = self.flat[self.start[r]:self.start[r] + self.cap[r]]
        self.flat, self.start, self.end = flat, start, int(self.cap.sum())

    def get(self, rows, cols) -> np.ndarray:
        return self.flat[self.start[rows] + cols]

    def set(self, rows, cols, values) -> None:
        self.flat[self.start[rows] + cols] = values

    def row(self, r: int, n: int) -> np.ndarray:
        """The first ``n`` entries of row ``r`` (a view)."""
        s = int(self.start[r])
        return self.flat[s:s + n]

    def release(self, r: int) -> None:
        """Row ``r`` holds nothing (its room is abandoned; a later compaction reclaims it)."""
        self.cap[r] = 0

    def nbytes(self) -> int:
        return self.flat.nbytes + self.start.nbytes + self.cap.nbytes
