"""``SchedulerExplorer``: pick a batch and a GPU, see how the planner cuts and spreads the work."""
from __future__ import annotations

from .. import viz
from ..errors import InfernbError
from ..plan import plan, presets
from ._util import figure_widget, replace_figure

GPUS = {"H100 (132 SMs)": 132, "A100 (108 SMs)": 108, "L40S (142 SMs)": 142}


class SchedulerExplorer:
    """Presets (uniform, one long + many short, Zipf, mixed prefill + decode) or free-form lengths, the SM
    count and the query tile; the naive and balanced plans redraw side by side in place, with the merge map.

    Args:
        preset: initial preset name (see :data:`infernb.plan.presets.PRESETS`).
        batch_size, num_qo_heads, num_kv_heads, head_dim: the batch's shape.
    """

    def __init__(self, preset: str = "one long + many short", *, batch_size: int = 64, num_qo_heads: int = 32,
                 num_kv_heads: int = 8, head_dim: int = 128):
        import ipywidgets as w

        self.heads = dict(num_qo_heads=num_qo_heads, num_kv_heads=num_kv_heads, head_dim=head_dim)
        self.preset = w.Dropdown(options=[*presets.PRESETS, "custom"], value=preset, description="batch")
        self.batch_size = w.BoundedIntText(value=batch_size, min=1, max=4096, description="requests")
        self.kv_lens = w.Text(value="", description="kv lens", placeholder="custom: e.g. 65536, 512, 512, ...")
        self.qo_lens = w.Text(value="", description="qo lens", placeholder="custom: default 1 each (decode)")
        self.gpu = w.Dropdown(options=[*GPUS, "custom"], value="H100 (132 SMs)", description="GPU")
        self.sms = w.BoundedIntText(value=132, min=1, max=1024, description="SMs")
        self.tile_q = w.Dropdown(options=[("auto", 0)] + [(str(t), t) for t in (1, 4, 8, 16, 32, 64, 128)], value=0, description="tile rows")
        self.status = w.HTML()
        self.balanced = self.naive = None
        # the figure widgets start from the first plans' figures: a FigureWidget changed before the browser has
        # shown it replays those changes on a model that has no traces yet (plotly.js: "Cannot use 'in' operator
        # to search for 'line' in undefined"; the merge map never appeared)
        figs = self._replan() or (viz.plan_gantt(plan([1], [16], **self.heads, num_sms=1, ctas_per_sm=1)),
                                  viz.merge_map(plan([1], [16], **self.heads, num_sms=1, ctas_per_sm=1)))
        self.gantt, self.merges = figure_widget(figs[0]), figure_widget(figs[1])
        for c in (self.preset, self.batch_size, self.gpu, self.sms, self.tile_q):
            c.observe(lambda _: self.update(), names="value")
        for c in (self.kv_lens, self.qo_lens):
            c.observe(lambda _: self.update(), names="value")
        self.panel = w.VBox([w.HBox([self.preset, self.batch_size, self.gpu, self.sms, self.tile_q]),
                             w.HBox([self.kv_lens, self.qo_lens]), self.status, self.gantt, self.merges])

    def _ipython_display_(self):
        from IPython.display import display

        display(self.panel)

    def lengths(self) -> tuple[list[int], list[int]]:
        """The batch the controls describe: ``(qo_lens, kv_lens)``."""
        if self.preset.value != "custom":
            return presets.batch(self.preset.value, self.batch_size.value)
        kv = [int(x) for x in self.kv_lens.value.replace(",", " ").split()]
        qo = [int(x) for x in self.qo_lens.value.replace(",", " ").split()] or [1] * len(kv)
        return qo, kv

    def update(self) -> None:
        """Re-plan from the controls and redraw (called by every control)."""
        if self.gpu.value in GPUS and self.sms.value != GPUS[self.gpu.value]:
            self.sms.value = GPUS[self.gpu.value]          # triggers update() again with the new count
            return
        figs = self._replan()
        if figs is not None:
            replace_figure(self.gantt, figs[0])
            replace_figure(self.merges, figs[1])

    def _replan(self):
        """Plan from the controls, write the status line; the (Gantt, merge map) figures, or None on bad input."""
        try:
            qo, kv = self.lengths()
            # one CTA per SM keeps the picture readable (the decode kernel runs 3 per SM: ib.plan's default)
            kw = dict(**self.heads, num_sms=self.sms.value, ctas_per_sm=1, tile_q=self.tile_q.value or None)
            self.balanced = plan(qo, kv, **kw)
            self.naive = plan(qo, kv, strategy="naive", **kw)
        except (InfernbError, ValueError) as e:
            self.status.value = f"<span style='color:#b91c1c'>{e}</span>"
            return None
        b, n = self.balanced.stats(), self.naive.stats()
        self.status.value = (f"{len(kv)} requests, {sum(kv)} KV tokens &rarr; balanced: {b['items']} items, "
                             f"{b['split_units']} split rows, imbalance {b['imbalance']:.2f}, predicted "
                             f"{b['predicted_us']:.0f} us; naive: imbalance {n['imbalance']:.2f}, predicted "
                             f"{n['predicted_us']:.0f} us (<b>{n['predicted_us'] / max(b['predicted_us'], 1e-9):.1f}x</b>)")
        return viz.plan_gantt(self.balanced, compare=self.naive), viz.merge_map(self.balanced)
