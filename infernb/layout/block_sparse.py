"""``BlockSparse``: a block-sparse row (BSR) matrix over (query tokens x key tokens).

Rows are cut into blocks of ``R`` query tokens, columns into blocks of ``C`` key tokens. Block row ``i``
lists its non-empty block columns in ``indices[indptr[i]:indptr[i+1]]``; each listed block is *full* (every
in-range element visible: kernels skip mask evaluation there) or *partial* (some elements masked: the
kernel evaluates the mask; ``partial_masks`` keeps the exact elements). Unlisted blocks are empty and
skipped. The same structure represents a paged KV cache (a page is a block column, the partly filled
last page a partial block) and a sparse attention mask.

Positions: a mask evaluated here sees ``q_idx = q_offset + row`` (default ``q_offset = N - M``, the append
convention of :mod:`infernb.reference`) and ``kv_idx = column``.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import torch

from ..errors import InputError, is_int

#: Elements evaluated per chunk by :meth:`BlockSparse.from_mask_mod` (bounds memory, not work).
CHUNK_ELEMENTS = 1 << 24


@dataclasses.dataclass(frozen=True, eq=False)
class BlockSparse:
    """BSR structure.

    Attributes:
        shape: ``(M, N)`` query and key tokens.
        block: ``(R, C)`` block size.
        indptr: ``[num_block_rows + 1]`` int32.
        indices: ``[nnz_blocks]`` int32 block-column ids, increasing within a row.
        is_full: ``[nnz_blocks]`` bool.
        partial_masks: ``[num_partial, R, C]`` bool: the elements of each partial block, in the order the
            partial blocks appear in ``indices`` (out-of-range elements of edge blocks are False).
    """

    shape: tuple[int, int]
    block: tuple[int, int]
    indptr: torch.Tensor
    indices: torch.Tensor
    is_full: torch.Tensor
    partial_masks: torch.Tensor

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_dense(cls, mask: torch.Tensor, block: tuple[int, int]) -> "BlockSparse":
        """From a dense boolean ``[M, N]`` mask (``True`` = visible). Additive float masks (0 / -inf) are refused:
        ``.bool()`` would read -inf as visible; pass ``mask == 0`` for one."""
        if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
            raise InputError(f"mask: expected a 2-D boolean tensor [M, N], got "
                             f"{list(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}")
        if mask.dtype != torch.bool:
            raise InputError(f"mask: expected torch.bool (True = visible), got {mask.dtype}; for an additive mask "
                             "(0 = visible, -inf = hidden) pass `mask == 0`")
        mask = mask.cpu()
        return cls._build(lambda r0, r1, c0, c1: mask[r0:r1, c0:c1], tuple(mask.shape), _check_block(block))

    @classmethod
    def from_mask_mod(cls, mask_mod: Callable, M: int, N: int, block: tuple[int, int], *, b: int = 0, h: int = 0,
                      q_offset: int | None = None, heads: int | None = None, device=None) -> "BlockSparse":
        """Evaluate ``mask_mod(b, h, q_idx, kv_idx)`` over whole block rows, at most ``CHUNK_ELEMENTS`` elements
        at a time, on ``device`` (default the CPU; where the tensors ``mask_mod`` captures live): the dense
        ``[M, N]`` mask is never materialized. ``q_idx`` is ``q_offset + row`` (default ``N - M``, the append
        convention). ``heads``: evaluate for every head ``0 .. heads - 1`` instead of head ``h`` (only when the
        result depends on ``h``): a block is listed if some head sees a pair in it, full if every head sees every
        pair, and ``partial_masks`` hold the union over heads."""
        R, C = _check_block(block)
        if M < 0 or N < 0:
            raise InputError(f"M, N: expected non-negative sizes, got {M}, {N}")
        off = N - M if q_offset is None else q_offset
        dev = torch.device("cpu" if device is None else device)
        bt = torch.tensor(b, device=dev)
        ht = torch.tensor(h, device=dev)
        if heads is not None and M > 0 and N > 0:
            hs = torch.arange(int(heads), device=dev)[:, None, None]
            probe = torch.as_tensor(mask_mod(bt, hs, torch.zeros(1, 1, 1, dtype=torch.long, device=dev) + off,
                                             torch.zeros(1, 1, 1, dtype=torch.long, device=dev)), device=dev)
            ht = hs if probe.dim() == 3 and probe.shape[0] > 1 else torch.tensor(0, device=dev)
        H = ht.shape[0] if ht.dim() == 3 else 1

        def ev(r0, r1, c0, c1):
            # [rows, 1] x [1, cols] index grids, with a leading heads axis only when the heads are evaluated
            lead = (None,) if H > 1 else ()
            q_idx = torch.arange(r0, r1, device=dev)[(*lead, slice(None), None)] + off
            kv_idx = torch.arange(c0, c1, device=dev)[(*lead, None, slice(None))]
            x = torch.as_tensor(mask_mod(bt, ht, q_idx, kv_idx), device=dev).bool()
            return x.expand((H,) * (H > 1) + (r1 - r0, c1 - c0))

        return cls._build(ev, (M, N), (R, C), heads=H, device=dev)

    @classmethod
    def from_variable_blocks(cls, block_mask: torch.Tensor, row_sizes, col_sizes,
                             block: tuple[int, int] | None = None) -> "BlockSparse":
        """Blocks of variable sizes (FlashInfer's ``VariableBlockSparseAttentionWrapper`` case): block row ``i``
        holds ``row_sizes[i]`` query tokens, block column ``j`` ``col_sizes[j]`` keys, and ``block_mask[i, j]`` says
        whether that whole block is visible. Represented exactly on a uniform grid of ``block`` (default: the
        sizes' greatest common divisors, each raised to 16 rows / 64 keys when it is smaller): grid blocks inside
        one variable block are full or empty, those across a variable block's edge partial (their elements kept in
        ``partial_masks``), so the kernel reads the same keys the variable blocks list.

        Args:
            block_mask: ``[len(row_sizes), len(col_sizes)]`` bool.
            row_sizes, col_sizes: positive ints; ``M = sum(row_sizes)``, ``N = sum(col_sizes)``.
        """
        rs = torch.as_tensor(list(row_sizes), dtype=torch.int64)
        cs = torch.as_tensor(list(col_sizes), dtype=torch.int64)
        if rs.dim() != 1 or cs.dim() != 1 or not len(rs) or not len(cs) or (rs <= 0).any() or (cs <= 0).any():
            raise InputError(f"row_sizes and col_sizes: non-empty lists of positive ints, got {rs.tolist()[:8]} and "
                             f"{cs.tolist()[:8]}")
        if not isinstance(block_mask, torch.Tensor) or block_mask.dtype != torch.bool \
                or tuple(block_mask.shape) != (len(rs), len(cs)):
            got = (f"{block_mask.dtype} {list(block_mask.shape)}" if isinstance(block_mask, torch.Tensor)
                   else type(block_mask).__name__)
            raise InputError(f"block_mask: expected a bool tensor [{len(rs)}, {len(cs)}] (one entry per variable "
                             f"block), got {got}")
        if block is None:
            gr, gc = int(np.gcd.reduce(rs.numpy())), int(np.gcd.reduce(cs.numpy()))
            block = (gr if gr >= 16 else 16, gc if gc >= 64 else 64)
        bm = block_mask.cpu()
        rb = torch.repeat_interleave(torch.arange(len(rs)), rs)                # each token's block row / column
        cb = torch.repeat_interleave(torch.arange(len(cs)), cs)
        return cls._build(lambda r0, r1, c0, c1: bm[rb[r0:r1]][:, cb[c0:c1]], (int(rs.sum()), int(cs.sum())),
                          _check_block(block))

    @classmethod
    def from_page_table(cls, table, *, rows_per_request: int = 1) -> "BlockSparse":
        """The paged KV cache as BSR: block row ``b`` = request ``b`` (``rows_per_request`` query tokens),
        block column = page id (``C = page_size``, ``N = num_pages * page_size``). A request's last page is a
        partial block when it holds fewer than ``page_size`` tokens."""
        from .page_table import PageTable

        if not isinstance(table, PageTable):
            raise InputError(f"table: expected a PageTable, got {type(table).__name__}")
        table.validate()                     # (a table on a GPU is not checked when made; a repeated page is refused)
        P, R = table.page_size, int(rows_per_request)
        num_pages = table.num_pages if table.num_pages is not None else int(table.indices.max()) + 1 if table.num_used_pages else 0
        ptr = table.indptr.cpu().numpy().astype(np.int64)
        idx = table.indices.cpu().numpy().astype(np.int64)
        last = table.last_page_len.cpu().numpy()
        indptr, indices, full, partial = [0], [], [], []
        for bi in range(table.batch_size):
            pages = idx[ptr[bi]:ptr[bi + 1]]
            # BSR needs increasing columns within a row: sort pages (a permutation of the logical order)
            order = np.argsort(pages, kind="stable")
            for j in order:
                is_last = j == len(pages) - 1
                indices.append(pages[j])
                f = not is_last or last[bi] == P
                full.append(f)
                if not f:
                    pm = torch.zeros(R, P, dtype=torch.bool)
                    pm[:, :last[bi]] = True
                    partial.append(pm)
            indptr.append(len(indices))
        return cls((table.batch_size * R, num_pages * P), (R, P), torch.tensor(indptr, dtype=torch.int32),
                   torch.tensor(indices, dtype=torch.int32), torch.tensor(full, dtype=torch.bool),
                   torch.stack(partial) if partial else torch.zeros(0, R, P, dtype=torch.bool))

    @classmethod
    def _build(cls, ev, shape, block, *, heads: int = 1, device=None) -> "BlockSparse":
        """Classify every block using ``ev(r0, r1, c0, c1) -> bool [r1 - r0, c1 - c0]`` or ``[heads, r1 - r0,
        c1 - c0]`` (a block is listed if some head sees a pair, full if every head sees every in-range pair; partial
        masks are the union over heads), on ``device``: as many whole block rows per call as ``CHUNK_ELEMENTS``
        allows, or one block row in column chunks when a block row alone is larger."""
        M, N = shape
        R, C = block
        nbr, nbc = -(-M // R), -(-N // C)
        dev = torch.device("cpu" if device is None else device)
        row_elems = heads * R * nbc * C                                            # one block row, every column
        rows_per = max(1, CHUNK_ELEMENTS // max(1, row_elems))
        cols_per = nbc * C if row_elems <= CHUNK_ELEMENTS else max(C, (CHUNK_ELEMENTS // (heads * R)) // C * C)
        indptr, indices, full, partial = [0], [], [], []
        for br0 in range(0, nbr, rows_per):
            br1 = min(nbr, br0 + rows_per)
            r0, r1, nb_r = br0 * R, min(M, br1 * R), br1 - br0
            row_parts = [([], [], []) for _ in range(nb_r)]                       # per block row: cols, full, partial
            for c0 in range(0, nbc * C, max(cols_per, C)):
                c1 = min(N, c0 + cols_per)
                nb_c = -(-(c1 - c0) // C)
                x = ev(r0, r1, c0, c1)
                x = x.reshape((1,) * (3 - x.dim()) + tuple(x.shape))
                pad = torch.zeros(x.shape[0], nb_r * R, nb_c * C, dtype=torch.bool, device=dev)
                pad[:, :r1 - r0, :c1 - c0] = x
                valid = torch.zeros(nb_r * R, nb_c * C, dtype=torch.bool, device=dev)
                valid[:r1 - r0, :c1 - c0] = True
                blk = pad.reshape(-1, nb_r, R, nb_c, C).permute(1, 3, 0, 2, 4)      # [nb_r, nb_c, heads, R, C]
                vblk = valid.reshape(nb_r, R, nb_c, C).permute(0, 2, 1, 3)[:, :, None]
                nonempty = blk.flatten(2).any(2)
                is_full = ((blk | ~vblk).flatten(2).all(2) & nonempty).cpu()
                nonempty = nonempty.cpu()
                for i in range(nb_r):
                    cols = torch.nonzero(nonempty[i]).flatten()
                    row_parts[i][0].append(cols + c0 // C)
                    row_parts[i][1].append(is_full[i, cols])
                    part = cols[~is_full[i, cols]]
                    if part.numel():
                        row_parts[i][2].append(blk[i, part.to(dev)].any(1).cpu())
            for cols, fl, pm in row_parts:
                indices.extend(cols)
                full.extend(fl)
                partial.extend(pm)
                indptr.append(indptr[-1] + sum(c.numel() for c in cols))
        cat = lambda xs, dt: torch.cat(xs).to(dt) if xs else torch.zeros(0, dtype=dt)  # noqa: E731
        return cls((M, N), (R, C), torch.tensor(indptr, dtype=torch.int32), cat(indices, torch.int32),
                   cat(full, torch.bool), torch.cat(partial) if partial else torch.zeros(0, R, C, dtype=torch.bool))

    # ------------------------------------------------------------------ queries
    @property
    def num_block_rows(self) -> int:
        return self.indptr.numel() - 1

    @property
    def num_block_cols(self) -> int:
        return -(-self.shape[1] // self.block[1])

    @property
    def nnz_blocks(self) -> int:
        return self.indices.numel()

    def to_dense(self) -> torch.Tensor:
        """The ``[M, N]`` boolean mask this structure represents."""
        M, N = self.shape
        R, C = self.block
        out = torch.zeros(self.num_block_rows * R, self.num_block_cols * C, dtype=torch.bool)
        ptr = self.indptr.tolist()
        idx = self.indices.tolist()
        full = self.is_full.tolist()
        k = 0
        for i in range(self.num_block_rows):
            for j in range(ptr[i], ptr[i + 1]):
                c = idx[j]
                if full[j]:
                    out[i * R:(i + 1) * R, c * C:(c + 1) * C] = True
                else:
                    out[i * R:(i + 1) * R, c * C:(c + 1) * C] = self.partial_masks[k]
                    k += 1
        return out[:M, :N]

    def block_rows(self) -> torch.Tensor:
        """``[nnz_blocks]`` int64: the block row of each listed block (``indices``' rows)."""
        return torch.repeat_interleave(torch.arange(self.num_block_rows), torch.diff(self.indptr.long()))

    def validate(self) -> "BlockSparse":
        """Check the structure kernels rely on (``InputError`` naming the broken part): one ``indptr`` entry per
        block row plus one, non-decreasing from 0 to ``nnz_blocks``; block columns in range and increasing within a
        row; ``is_full`` for every listed block and one partial mask per partial block."""
        (M, N), (R, C) = self.shape, self.block
        nbr, nbc = -(-M // R), -(-N // C)
        ptr, idx = self.indptr.long(), self.indices.long()
        if len(ptr) != nbr + 1 or int(ptr[0]) != 0 or (torch.diff(ptr) < 0).any() or int(ptr[-1]) != len(idx):
            raise InputError(f"mask.indptr: expected {nbr + 1} non-decreasing entries from 0 to {len(idx)}")
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= nbc):
            raise InputError(f"mask.indices: block columns must lie in [0, {nbc}), got {int(idx.min())}..{int(idx.max())}")
        rows = self.block_rows()
        if len(idx) > 1 and ((rows[1:] == rows[:-1]) & (idx[1:] <= idx[:-1])).any():
            raise InputError("mask.indices: block columns must increase within a row")
        if len(self.is_full) != len(idx) or len(self.partial_masks) != int((~self.is_full).sum()):
            raise InputError("mask: is_full must flag every listed block, partial_masks hold one mask per partial block")
        return self

    def block_grid(self) -> torch.Tensor:
        """``[num_block_rows, num_block_cols]`` int8: 0 empty, 1 partial, 2 full (for pictures)."""
        g = torch.zeros(self.num_block_rows, self.num_block_cols, dtype=torch.int8)
        g[self.block_rows(), self.indices.long()] = torch.where(self.is_full, 2, 1).to(torch.int8)
        return g

    def stats(self) -> dict:
        """Block counts and densities: ``visible`` = visible elements; ``block_density`` = listed blocks / all
        blocks; ``density`` = visible / (M * N); ``sparsity`` = 1 - density; ``work_saved`` = 1 - listed blocks / all blocks."""
        M, N = self.shape
        total_blocks = self.num_block_rows * self.num_block_cols
        R, C = self.block
        visible = 0
        # full blocks count their in-range area; partial blocks their True elements
        h = torch.clamp(M - self.block_rows() * R, max=R)
        w = torch.clamp(N - self.indices.long() * C, max=C)
        visible = int((h * w)[self.is_full].sum()) + int(self.partial_masks.sum())
        return dict(shape=self.shape, block=self.block, blocks=total_blocks, nnz_blocks=self.nnz_blocks,
                    full_blocks=int(self.is_full.sum()), partial_blocks=int((~self.is_full).sum()), visible=visible,
                    block_density=self.nnz_blocks / total_blocks if total_blocks else 0.0,
                    density=visible / (M * N) if M * N else 0.0,
                    sparsity=1 - visible / (M * N) if M * N else 1.0,
                    work_saved=1 - self.nnz_blocks / total_blocks if total_blocks else 0.0)

    def __str__(self) -> str:
        s = self.stats()
        return (f"BlockSparse(shape={self.shape}, block={self.block}, {s['nnz_blocks']}/{s['blocks']} blocks "
                f"({s['full_blocks']} full, {s['partial_blocks']} partial), density {s['density']:.3f})")

    __repr__ = __str__


def _check_block(block) -> tuple[int, int]:
    try:
        R, C = block
    except Exception:
        raise InputError(f"block: expected (R, C), got {block!r}") from None
    for x in (R, C):
        if not is_int(x):
            raise InputError(f"block: expected two integers (R, C), got {block!r}")
    R, C = int(R), int(C)
    if R < 1 or C < 1:
        raise InputError(f"block: expected positive sizes, got {(R, C)}")
    return R, C
