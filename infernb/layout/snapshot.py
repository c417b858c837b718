"""``PoolSnapshot``: a picture-ready copy of a paged cache's bookkeeping, and its occupancy figures."""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class PoolSnapshot:
    """A picture-ready copy of the pool's bookkeeping (what :func:`infernb.viz.page_pool` draws).

    Attributes:
        owner: ``[num_pages]`` id of the first sequence holding each page, ``-1`` if free.
        refcount: ``[num_pages]`` number of sequences holding each page.
        fill: ``[num_pages]`` tokens stored in each page.
        seq_pages: ``{seq_id: [page ids in logical order]}``.
        seq_lens: ``{seq_id: tokens}``.
        page_size: tokens per page.
    """

    owner: np.ndarray
    refcount: np.ndarray
    fill: np.ndarray
    seq_pages: dict[int, list[int]]
    seq_lens: dict[int, int]
    page_size: int

    @property
    def num_pages(self) -> int:
        return self.owner.size

    def stats(self) -> dict:
        """Occupancy and fragmentation figures.

        - ``pages_used`` / ``pages_free`` / ``pages_shared`` (held by more than one sequence);
        - ``tokens``: tokens stored, counting a shared page once;
        - ``slot_utilization``: tokens / (pages_used * page_size);
        - ``internal_fragmentation``: empty slots in used pages / (pages_used * page_size);
        - ``free_runs``: number of maximal runs of consecutive free page ids (1 = one contiguous hole);
        - ``sharing_saved_pages``: pages a copy-per-sequence layout would need in addition.
        """
        used = self.refcount > 0
        n_used = int(used.sum())
        tokens = int(self.fill[used].sum())
        slots = n_used * self.page_size
        free = ~used
        runs = int(free[0]) + int(np.sum(free[1:] & ~free[:-1])) if free.size else 0
        return dict(pages_total=self.num_pages, pages_used=n_used, pages_free=self.num_pages - n_used,
                    pages_shared=int((self.refcount > 1).sum()), sequences=len(self.seq_lens), tokens=tokens,
                    slot_utilization=tokens / slots if slots else 0.0,
                    internal_fragmentation=(slots - tokens) / slots if slots else 0.0, free_runs=runs,
                    sharing_saved_pages=int((self.refcount[used] - 1).sum()))
