"""Shared prefixes of a batch, read from its page table (issue 15: cascade attention).

After :meth:`~infernb.layout.PagedKVCache.fork`, sequences reference the same pool pages for their common prefix.
:func:`prefix_tree` finds them in the page table alone, as a tree of any depth: a level is a run of pages that the
same set of sequences (two or more) all hold at the same logical positions; its children are the longer runs that
subsets of them share after it (a system prompt shared by all, a document shared by some, their own tokens). What is
left of each sequence after its deepest shared level is its unique part.

Only full pages are shared: a page that is some sequence's partly filled last page stays in that sequence's unique
part (``fork`` copies such a page anyway).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import InputError
from .page_table import PageTable


@dataclasses.dataclass(frozen=True)
class PrefixLevel:
    """One shared level: ``rows`` (batch rows of the table, two or more) hold ``pages`` at logical pages
    ``[first_page, first_page + len(pages))``: keys ``[start, start + tokens)`` of each of them. ``parent``: the
    index of the level it follows in :attr:`PrefixTree.levels` (``None`` at the root), ``depth`` 0 at the root."""

    rows: tuple[int, ...]
    pages: tuple[int, ...]
    first_page: int
    page_size: int
    parent: int | None
    depth: int

    @property
    def start(self) -> int:
        return self.first_page * self.page_size

    @property
    def tokens(self) -> int:
        return len(self.pages) * self.page_size


@dataclasses.dataclass(frozen=True)
class PrefixTree:
    """The shared levels of a batch (parents before children) and each row's unique part: its pages from
    ``unique_first_page[b]`` on (keys ``[unique_first_page[b] * page_size, kv_len[b])``). ``path[b]``: the levels
    row b reads, root first."""

    levels: tuple[PrefixLevel, ...]
    unique_first_page: tuple[int, ...]
    kv_lens: tuple[int, ...]
    page_size: int
    path: tuple[tuple[int, ...], ...]

    @property
    def batch_size(self) -> int:
        return len(self.kv_lens)

    def unique_start(self, b: int) -> int:
        """Key position where row b's own part starts."""
        return self.unique_first_page[b] * self.page_size

    def unique_tokens(self, b: int) -> int:
        return self.kv_lens[b] - self.unique_start(b)

    def stats(self) -> dict:
        """Key tokens read by plain attention (every row reads all its keys) and by cascade attention (each shared
        level once, each row's unique part), and the levels' count and depth."""
        plain = int(sum(self.kv_lens))
        cascade = int(sum(lv.tokens for lv in self.levels) + sum(self.unique_tokens(b) for b in range(self.batch_size)))
        return dict(levels=len(self.levels), depth=1 + max((lv.depth for lv in self.levels), default=-1),
                    plain_tokens=plain, cascade_tokens=cascade,
                    shared_tokens=int(sum(lv.tokens * len(lv.rows) for lv in self.levels)),
                    read_ratio=plain / cascade if cascade else 1.0)


def prefix_tree(table: PageTable, *, min_pages: int = 1, groups=None, max_pages=None) -> PrefixTree:
    """The shared-prefix tree of ``table`` (:class:`PrefixTree`).

    Args:
        table: the batch's :class:`PageTable` (e.g. ``cache.page_table(seq_ids)``); read on the host.
        min_pages: a run shared by a set of rows becomes a level only when it has at least this many pages (shorter
            runs stay in the rows' own parts; the cascade planner raises it where a level would not pay).
        groups: instead of detecting, an explicit grouping: a list of lists of batch rows; each group's common
            leading full pages (the pages all its rows hold at the same positions) become one root level. Rows in
            no group, or groups sharing no page, have no shared level.
        max_pages: per row, the most leading pages it may share (e.g. the pages wholly before its first new query
            token in an append step, so that a shared level needs no causal mask); default: all its full pages.
    """
    if not isinstance(table, PageTable):
        raise InputError(f"table: expected a PageTable, got {type(table).__name__}")
    if not isinstance(min_pages, int) or min_pages < 1:
        raise InputError(f"min_pages: expected a positive integer, got {min_pages!r}")
    indptr = table.indptr.cpu().numpy().astype(np.int64)
    indices = table.indices.cpu().numpy()
    last = table.last_page_len.cpu().numpy()
    ps = table.page_size
    kv = table.kv_lens()
    n = len(kv)
    pages = [indices[indptr[b]:indptr[b + 1]] for b in range(n)]
    # full pages of each row: all but a partly filled last one
    full = [len(p) - (1 if len(p) and last[b] < ps else 0) for b, p in enumerate(pages)]
    if max_pages is not None:
        if len(max_pages) != n:
            raise InputError(f"max_pages: expected {n} entries (one per row), got {len(max_pages)}")
        full = [max(0, min(f, int(m))) for f, m in zip(full, max_pages)]
    levels: list[PrefixLevel] = []
    unique_first = [0] * n
    path: list[list[int]] = [[] for _ in range(n)]

    def split(rows: list[int], depth_page: int) -> dict[int, list[int]]:
        """Rows that have a full page at logical page depth_page, grouped by its id."""
        by: dict[int, list[int]] = {}
        for b in rows:
            if depth_page < full[b]:
                by.setdefault(int(pages[b][depth_page]), []).append(b)
        return by

    def run_end(rows: list[int], first: int) -> int:
        """The end of the run of pages from `first` that every one of rows holds (full) at the same positions."""
        lim = min(full[b] for b in rows)
        if lim <= first:
            return first
        same = np.ones(lim - first, bool)                # (vectorized: tables of thousands of pages per row)
        ref = pages[rows[0]][first:lim]
        for b in rows[1:]:
            same &= pages[b][first:lim] == ref
        differ = np.flatnonzero(~same)
        return first + int(differ[0]) if len(differ) else lim

    def grow(rows: list[int], first: int, parent: int | None, depth: int) -> None:
        """rows share the page at `first`: extend the run while they all share the next page, then recurse."""
        end = run_end(rows, first)
        if end - first >= min_pages:
            levels.append(PrefixLevel(tuple(rows), tuple(int(x) for x in pages[rows[0]][first:end]), first, ps, parent,
                                      depth))
            me = len(levels) - 1
            for b in rows:
                path[b].append(me)
                unique_first[b] = end
            for sub in split(rows, end).values():
                if len(sub) >= 2:
                    grow(sub, end, me, depth + 1)
        else:
            # a run too short to pay for all of them: the rows that go on sharing past it make it longer together
            # (their level starts at `first` too); the others read it as their own keys
            for sub in split(rows, end).values():
                if len(sub) >= 2:
                    grow(sub, first, parent, depth)

    if groups is None:
        for sub in split(list(range(n)), 0).values():
            if len(sub) >= 2:
                grow(sub, 0, None, 0)
    else:
        seen: set[int] = set()
        for g in groups:
            g = [int(b) for b in g]
            if any(not 0 <= b < n for b in g) or len(set(g)) != len(g) or seen & set(g):
                raise InputError(f"groups: each a list of distinct batch rows in [0, {n}), in one group at most; got {g}")
            seen |= set(g)
            if len(g) < 2:
                continue
            end = run_end(g, 0)
            if end >= min_pages:
                levels.append(PrefixLevel(tuple(g), tuple(int(x) for x in pages[g[0]][:end]), 0, ps, None, 0))
                for b in g:
                    path[b].append(len(levels) - 1)
                    unique_first[b] = end
    return PrefixTree(tuple(levels), tuple(unique_first), tuple(int(x) for x in kv), ps,
                      tuple(tuple(p) for p in path))


__all__ = ["PrefixLevel", "PrefixTree", "prefix_tree"]
