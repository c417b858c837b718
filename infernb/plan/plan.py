"""``Plan``: the work of one attention batch cut into items and spread over CTAs (plain frozen data).

Vocabulary (FlashInfer's plan step, made visible):

- **tile**: a query tile of one request: ``tile_q`` rows of (token x query head of a GQA group) - in decode
  one token's whole group, so each KV byte is read once per group;
- **unit**: (tile, KV head): all the attention work of those rows, over the tile's *visible* keys (after
  causal / sliding-window / block-mask restriction), held as ``segments`` of key positions;
- **item**: a contiguous chunk ``[kv_start, kv_end)`` of a unit's visible keys (counted in the unit's
  *compressed* key coordinate: 0 .. tile_kv_len), run by one CTA;
- a unit cut into several items is **split**: each item writes a partial output + LSE to a slot of a
  scratch buffer, and the **merge map** lists, per split unit, the slots to merge by LSE.

Costs are in *KV-token equivalents*: an item costs ``fixed_cost + weight * (kv_end - kv_start)`` with
``weight = max(1, tile_rows / rows_balance)`` (reading a token's K/V dominates until a tile has enough rows to
be compute-bound), so a CTA's *load* is the sum of its items' costs and the predicted time is the largest load.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import InputError

# fields that are arrays (compared element-wise by Plan.equals, checked by validate)
_ARRAYS = ("qo_lens", "kv_lens", "tile_request", "tile_token_start", "tile_token_end", "tile_rows", "tile_kv_len",
           "tile_weight", "seg_indptr", "seg_start", "seg_end", "seg_full", "item_unit", "item_kv_start", "item_kv_end",
           "item_cta", "item_cost", "item_slot", "merge_indptr", "merge_unit", "merge_slots", "cta_load")


@dataclasses.dataclass(frozen=True, eq=False)
class Plan:
    """See the module docstring. All arrays are NumPy int64 (costs float64); built by :func:`infernb.plan`."""

    # problem
    qo_lens: np.ndarray            # [B]
    kv_lens: np.ndarray            # [B]
    num_qo_heads: int
    num_kv_heads: int
    head_dim: int
    page_size: int
    causal: bool
    window_left: int
    tile_q: int                    # rows per query tile
    dtype: str                     # "bf16" / "f16" / "f32" (for the kernel name and bytes)
    strategy: str                  # "balanced" or "naive"
    num_ctas: int
    fixed_cost: float
    rows_balance: float
    # tiles [T] and their visible key segments (CSR over tiles)
    tile_request: np.ndarray
    tile_token_start: np.ndarray   # first query token of the tile (in its request)
    tile_token_end: np.ndarray     # one past the last
    tile_rows: np.ndarray          # rows = tokens x group heads in the tile
    tile_kv_len: np.ndarray        # visible keys (sum of segment lengths)
    tile_weight: np.ndarray        # cost per key token
    seg_indptr: np.ndarray         # [T + 1]
    seg_start: np.ndarray          # [S] key positions
    seg_end: np.ndarray
    seg_full: np.ndarray           # [S] 1: the block masks show every pair of the segment visible to the tile's rows
    #                                (kernels skip the mask there); 0 everywhere without block masks
    # items [I], ordered by CTA then position; unit = tile * num_kv_heads + kv_head
    item_unit: np.ndarray
    item_kv_start: np.ndarray
    item_kv_end: np.ndarray
    item_cta: np.ndarray
    item_cost: np.ndarray
    item_slot: np.ndarray          # partial-buffer slot, -1 = writes the final output
    # merge map (CSR over split units)
    merge_indptr: np.ndarray       # [M + 1]
    merge_unit: np.ndarray         # [M]
    merge_slots: np.ndarray        # [num partial slots]
    cta_load: np.ndarray           # [num_ctas]
    # where the block masks came from: "" (none), "custom" (BlockSparse masks given), or "variant:<fingerprint>"
    # (a variant's mask_mod, Variant.fingerprint: its kernels mask the partial blocks themselves)
    mask_source: str = ""

    @property
    def block_masked(self) -> bool:
        """Built with block masks: partial blocks need their elements (see ``mask_source``)."""
        return self.mask_source != ""

    def masks_are(self, variant) -> bool:
        """The plan's block masks are ``variant``'s own structure (its ``mask_mod`` masks their partial blocks)."""
        return self.mask_source == variant_source(variant)

    def __post_init__(self):
        for name in _ARRAYS:                       # frozen means frozen: a plan is reused across layers
            getattr(self, name).flags.writeable = False

    # ------------------------------------------------------------------ derived facts
    @property
    def group(self) -> int:
        return self.num_qo_heads // self.num_kv_heads

    @property
    def batch_size(self) -> int:
        return len(self.qo_lens)

    @property
    def num_tiles(self) -> int:
        return len(self.tile_request)

    @property
    def num_units(self) -> int:
        return self.num_tiles * self.num_kv_heads

    @property
    def num_items(self) -> int:
        return len(self.item_unit)

    @property
    def kernel(self) -> str:
        """Name of the kernel specialization this plan needs (readable cache-key style)."""
        family = "decode" if self.tile_q == self.group and int(self.qo_lens.max(initial=0)) <= 1 else "prefill"
        mask = "_causal" if self.causal else ""
        win = f"_window{self.window_left}" if self.window_left >= 0 else ""
        return (f"{family}_{self.dtype}_hd{self.head_dim}_page{self.page_size}_group{self.group}"
                f"_tile{self.tile_q}{mask}{win}")

    def item_offsets(self) -> np.ndarray:
        """``[num_items]`` predicted start of each item within its CTA (cumulative cost of the CTA's earlier items)."""
        if not self.num_items:
            return np.zeros(0)
        csum = np.cumsum(self.item_cost)
        first = np.concatenate(([True], self.item_cta[1:] != self.item_cta[:-1]))
        return csum - self.item_cost - np.maximum.accumulate(np.where(first, csum - self.item_cost, 0))

    def tile_keys(self, tile: int) -> np.ndarray:
        """``[tile_kv_len[tile]]`` int64: the key positions query tile ``tile`` reads (its segments, in order): what
        its causal / window / block-structure cuts leave; divide by the page size for the pages it touches."""
        a, z = int(self.seg_indptr[tile]), int(self.seg_indptr[tile + 1])
        parts = [np.arange(s, e) for s, e in zip(self.seg_start[a:z].tolist(), self.seg_end[a:z].tolist())]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def unit_of(self, unit: int) -> tuple[int, int, int]:
        """``(request, kv_head, tile)`` of a unit id."""
        tile, head = divmod(int(unit), self.num_kv_heads)
        return int(self.tile_request[tile]), head, tile

    def stats(self) -> dict:
        """Numbers that describe the plan: items and splits, per-CTA load, imbalance (largest load over the mean
        load of *all* CTAs, idle ones included), bytes, merge work."""
        busy = self.cta_load[self.cta_load > 0]
        mean = float(self.cta_load.mean()) if self.num_ctas else 0.0     # over ALL CTAs: idle ones count
        elem = {"bf16": 2, "f16": 2, "f32": 4}[self.dtype]
        kv_tokens = int((self.item_kv_end - self.item_kv_start).sum())
        return dict(
            strategy=self.strategy, kernel=self.kernel, requests=self.batch_size, tiles=self.num_tiles,
            units=self.num_units, items=self.num_items, split_units=len(self.merge_unit),
            partial_states=len(self.merge_slots), ctas=self.num_ctas, busy_ctas=int(busy.size),
            max_load=float(self.cta_load.max(initial=0)), mean_load=mean,
            imbalance=float(self.cta_load.max(initial=0)) / mean if mean else 1.0,
            kv_bytes=2 * kv_tokens * self.head_dim * elem,
            merge_bytes=int(self.tile_rows[self.item_unit[self.item_slot >= 0] // self.num_kv_heads].sum())
            * (self.head_dim * 4 + 4) * 2,                               # partial out + LSE, written and read
            predicted_us=self.predicted_us())

    def predicted_us(self, bandwidth: float = 3.0e12) -> float:
        """Makespan turned into time with a bandwidth model: a CTA streams KV at ``bandwidth / num_ctas``
        bytes/s, and one cost unit is one token of one KV head (K and V, ``2 * head_dim`` elements)."""
        elem = {"bf16": 2, "f16": 2, "f32": 4}[self.dtype]
        per_token = 2 * self.head_dim * elem
        return float(self.cta_load.max(initial=0)) * per_token / (bandwidth / self.num_ctas) * 1e6

    def __str__(self) -> str:
        s = self.stats()
        return (f"Plan[{s['strategy']}] {s['requests']} requests -> {s['tiles']} tiles x {self.num_kv_heads} KV heads "
                f"= {s['units']} units -> {s['items']} items on {s['busy_ctas']}/{s['ctas']} CTAs; "
                f"{s['split_units']} split units ({s['partial_states']} partial states to merge); "
                f"load max {s['max_load']:.0f} / mean {s['mean_load']:.0f} = imbalance {s['imbalance']:.3f}; "
                f"KV {s['kv_bytes'] / 2**20:.1f} MiB; predicted {s['predicted_us']:.1f} us; kernel {s['kernel']}")

    __repr__ = __str__

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{k}</td><td>{v:.3f}</td></tr>" if isinstance(v, float) else
                       f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in self.stats().items())
        return f"<b>Plan</b><table>{rows}</table>"

    def equals(self, other: "Plan") -> bool:
        """Field-by-field equality (plans are deterministic: equal inputs give equal plans)."""
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name in _ARRAYS:
                if not np.array_equal(a, b):
                    return False
            elif a != b:
                return False
        return True

    # ------------------------------------------------------------------ invariants
    def validate(self) -> "Plan":
        """Check the invariants every consumer relies on; raise ``InputError`` naming the broken one."""
        U = self.num_units
        if len(self.seg_indptr) != self.num_tiles + 1:
            raise InputError("Plan: seg_indptr must have num_tiles + 1 entries")
        c = np.concatenate(([0], np.cumsum(self.seg_end - self.seg_start)))
        if not np.array_equal(c[self.seg_indptr[1:]] - c[self.seg_indptr[:-1]], self.tile_kv_len):
            raise InputError("Plan: tile_kv_len must equal the total length of the tile's segments")
        if len(self.seg_full) != len(self.seg_start) or not np.isin(self.seg_full, (0, 1)).all():
            raise InputError("Plan: seg_full must hold 0 / 1 for every segment")
        if self.num_items:
            if self.item_unit.min() < 0 or self.item_unit.max() >= U:
                raise InputError("Plan: item_unit out of range")
            if (self.item_cta < 0).any() or (self.item_cta >= self.num_ctas).any():
                raise InputError("Plan: item_cta out of range")
            L = self.tile_kv_len[self.item_unit // self.num_kv_heads]
            if (self.item_kv_start < 0).any() or (self.item_kv_end > L).any() or \
                    (self.item_kv_end < self.item_kv_start).any():
                raise InputError("Plan: an item's KV range falls outside its unit")
        # every unit covered exactly once, in order: per unit, items tile [0, L) without gaps
        in_order = self.num_items < 2 or bool((np.diff(self.item_unit) >= 0).all())   # the balanced plans are
        order = np.arange(self.num_items) if in_order else np.lexsort((self.item_kv_start, self.item_unit))
        u, s0, e0 = self.item_unit[order], self.item_kv_start[order], self.item_kv_end[order]
        first = np.concatenate(([True], u[1:] != u[:-1])) if len(u) else np.zeros(0, bool)
        counts = np.bincount(self.item_unit, minlength=U)
        if (counts == 0).any():
            raise InputError(f"Plan: {int((counts == 0).sum())} units have no item")
        if (s0[first] != 0).any() or (len(u) > 1 and (s0[1:][~first[1:]] != e0[:-1][~first[1:]]).any()):
            raise InputError("Plan: a unit's items leave a gap or overlap")
        last = np.concatenate((u[1:] != u[:-1], [True])) if len(u) else np.zeros(0, bool)
        if not np.array_equal(e0[last], self.tile_kv_len[u[last] // self.num_kv_heads]):
            raise InputError("Plan: a unit's items stop before its last visible key")
        if not np.array_equal(np.flatnonzero(counts > 1), self.merge_unit):
            raise InputError("Plan: merge map must list exactly the split units")
        if ((self.item_slot >= 0) != (counts[self.item_unit] > 1)).any():
            raise InputError("Plan: exactly the items of split units write partial slots")
        if not np.allclose(np.bincount(self.item_cta, weights=self.item_cost, minlength=self.num_ctas), self.cta_load):
            raise InputError("Plan: cta_load must be the sum of its items' costs")
        return self


def variant_source(variant) -> str:
    """``Plan.mask_source`` of block masks that are ``variant``'s (:meth:`~infernb.variants.Variant.fingerprint`)."""
    return "variant:" + variant.fingerprint()


def token_positions(qo_lens, kv_lens) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each packed token's request and position (the append convention: query ``i`` of a request with ``qo_len``
    queries and ``kv_len`` keys sits at ``kv_len - qo_len + i``; key ``j`` at ``j``). Returns int64
    ``(q_request [sum(qo_lens)], q_pos, k_request [sum(kv_lens)], k_pos)``."""
    qo, kv = np.asarray(qo_lens, np.int64), np.asarray(kv_lens, np.int64)
    req = np.arange(len(qo), dtype=np.int64)
    q_req, k_req = np.repeat(req, qo), np.repeat(req, kv)
    q_pos = np.arange(int(qo.sum()), dtype=np.int64) - np.repeat(np.cumsum(qo) - qo, qo) + np.repeat(kv - qo, qo)
    k_pos = np.arange(int(kv.sum()), dtype=np.int64) - np.repeat(np.cumsum(kv) - kv, kv)
    return q_req, q_pos, k_req, k_pos
