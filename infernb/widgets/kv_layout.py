"""``KVLayoutExplorer``: play with a paged KV cache and watch the pool and a sequence's page chain update."""
from __future__ import annotations

import torch

from .. import viz
from ..errors import InfernbError
from ..layout import PagedKVCache
from ._util import figure_widget, replace_figure


class KVLayoutExplorer:
    """Controls for page size, pool size and the batch's lengths; buttons to append, fork and free; the pool
    picture and the selected sequence's page chain update in place (plotly ``FigureWidget``).

    Args:
        lengths: initial sequence lengths.
        page_size, num_pages: initial pool geometry.
        seed: seed of the random K/V written on append (the values do not matter for the layout).

    ``explorer.cache`` is the live :class:`~infernb.layout.PagedKVCache`; display ``explorer`` (or
    ``explorer.panel``) in a notebook cell.
    """

    def __init__(self, lengths=(37, 5, 64, 20), *, page_size: int = 16, num_pages: int = 64, seed: int = 0):
        import ipywidgets as w

        self._gen = torch.Generator().manual_seed(seed)
        self.page_size = w.Dropdown(options=[1, 2, 4, 8, 16, 32, 64], value=page_size, description="page size")
        self.num_pages = w.BoundedIntText(value=num_pages, min=1, max=100_000, description="pages")
        # (the lengths apply on enter or when the box loses focus, not on every keystroke)
        self.lengths = w.Text(value=", ".join(map(str, lengths)), description="lengths", continuous_update=False)
        self.reset_button = w.Button(description="rebuild", icon="refresh",
                                     tooltip="a new pool from page size, pages and lengths (they also rebuild it "
                                             "when changed)")
        self.seq = w.Dropdown(options=[], description="sequence")
        self.tokens = w.BoundedIntText(value=8, min=0, max=100_000, description="tokens")
        self.append_button = w.Button(description="append", icon="plus")
        self.fork_button = w.Button(description="fork", icon="code-branch")
        self.free_button = w.Button(description="free", icon="trash")
        self.status = w.HTML()
        self.cache: PagedKVCache | None = None
        self.reset_button.on_click(lambda _: self.rebuild())
        self.append_button.on_click(lambda _: self._act(self.append))
        self.fork_button.on_click(lambda _: self._act(self.fork))
        self.free_button.on_click(lambda _: self._act(self.free))
        # the geometry controls rebuild the pool when they change (they used to wait for "rebuild", silently)
        for c in (self.page_size, self.num_pages, self.lengths):
            c.observe(lambda _: self.rebuild(), names="value")
        self.pool_fig = self.chain_fig = None
        # the figure widgets start from the first pool's figures: a FigureWidget changed before the browser has
        # shown it replays those changes on a model that has none of its traces (the pool table showed no row
        # labels until the first action)
        self.rebuild()
        figs = self._figures() if self.cache is not None else (viz.page_pool(PagedKVCache(1, 1, 1, 1)),) * 2
        self.pool_fig, self.chain_fig = figure_widget(figs[0]), figure_widget(figs[1])
        self.seq.observe(lambda _: self._refresh_chain(), names="value")
        self.panel = w.VBox([
            w.HBox([self.page_size, self.num_pages, self.lengths, self.reset_button]),
            w.HBox([self.seq, self.tokens, self.append_button, self.fork_button, self.free_button]),
            self.status, self.pool_fig, self.chain_fig])

    def _ipython_display_(self):
        from IPython.display import display

        display(self.panel)

    # --------------------------------------------------------------- actions (each calls the cache, then redraws)
    def rebuild(self) -> None:
        """New cache from the controls, with the listed sequences appended in one call."""
        try:
            lens = [int(x) for x in self.lengths.value.replace(",", " ").split()]
            cache = PagedKVCache(self.num_pages.value, self.page_size.value, 1, 8, dtype=torch.float32)
            ids = cache.add_sequences(len(lens))
            k, v = self._kv(sum(lens))
            cache.append(ids, k, v, lens)
        except (InfernbError, ValueError) as e:
            self._say(f"could not build: {e}", error=True)
            return
        self.cache = cache
        self._say(f"built {len(lens)} sequences")
        self._redraw()

    def append(self, seq_id: int, tokens: int) -> None:
        k, v = self._kv(tokens)
        self.cache.append([seq_id], k, v, [tokens])
        self._say(f"appended {tokens} tokens to sequence {seq_id}")

    def fork(self, seq_id: int, tokens: int = 0) -> None:
        child = self.cache.fork(seq_id)
        self._say(f"forked sequence {seq_id} into {child} (full pages shared)")
        self._select = child

    def free(self, seq_id: int, tokens: int = 0) -> None:
        self.cache.free([seq_id])
        self._say(f"freed sequence {seq_id}")

    # --------------------------------------------------------------- wiring
    def _act(self, fn) -> None:
        if self.seq.value is None:
            self._say("no sequence selected", error=True)
            return
        self._select = None
        try:
            fn(self.seq.value, self.tokens.value)
        except InfernbError as e:
            self._say(str(e), error=True)
        self._redraw()

    def _kv(self, n: int):
        return torch.randn(n, 1, 8, generator=self._gen), torch.randn(n, 1, 8, generator=self._gen)

    def _say(self, msg: str, error: bool = False) -> None:
        color = "#b91c1c" if error else "#374151"
        self.status.value = f"<span style='color:{color}'>{msg}</span>"

    def _redraw(self) -> None:
        ids = self.cache.seq_ids
        keep = getattr(self, "_select", None)
        keep = keep if keep in ids else (self.seq.value if self.seq.value in ids else (ids[0] if ids else None))
        self.seq.options = ids
        self.seq.value = keep
        if self.pool_fig is None:                       # (first build: the widgets are made from _figures())
            return
        replace_figure(self.pool_fig, viz.page_pool(self.cache))
        self._refresh_chain()

    def _chain_figure(self):
        if self.seq.value is None:
            return viz.page_pool(self.cache.snapshot(), title="no sequence selected")
        return viz.sequence_pages(self.cache, self.seq.value)

    def _figures(self):
        return viz.page_pool(self.cache), self._chain_figure()

    def _refresh_chain(self) -> None:
        if self.cache is None or self.chain_fig is None:
            return
        replace_figure(self.chain_fig, self._chain_figure())
