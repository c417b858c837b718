"""``ProfilerPanel``: one attention problem, infernb against PyTorch's paths and FlashInfer, as bars and a roofline."""
from __future__ import annotations

from .. import viz
from ..device import has_gpu
from ..errors import InfernbError
from ._util import figure_widget, replace_figure

#: problems the panel offers on a GPU: label -> (op, qo_lens, kv_lens)
PROBLEMS = {
    "decode 64 x 4096": ("decode", [1] * 64, [4096] * 64),
    "decode 16 x 16384": ("decode", [1] * 16, [16384] * 16),
    "prefill 1 x 8192, causal": ("prefill", [8192], [8192]),
    "prefill 1 x 2048, causal": ("prefill", [2048], [2048]),
    "append 16 x 512 on 8704": ("append", [512] * 16, [8704] * 16),
    "block-sparse 1 x 8192, window of 16 blocks of 64 x 64": ("block_sparse", [8192], [8192]),
}
#: variants the panel offers (built on the GPU when chosen: ALiBi captures its slopes there)
VARIANTS = ("none", "softcap 30 (SFU tanh)", "softcap 30", "ALiBi", "sliding window 1024")


def make_variant(name: str, num_qo_heads: int, device: str):
    from .. import variants as V

    if name == "none":
        return None
    if name.startswith("softcap"):
        return V.softcap(30.0, approx="SFU" in name)
    if name == "ALiBi":
        return V.alibi(V.alibi_slopes(num_qo_heads).to(device))
    if name.startswith("sliding window"):
        return V.sliding_window(1024)
    raise KeyError(name)


class ProfilerPanel:
    """Pick a problem and a variant; on a GPU, "run" times it with :func:`infernb.profile.compare` (infernb,
    FlashInfer, SDPA, FlexAttention compiled with the same mods, the eager fp32 reference) with a progress bar, and
    the bars and the roofline redraw in place. Without a GPU the panel shows the committed runs
    (:func:`infernb.profile.committed_compare`), labelled with their device and date; the problem dropdown then
    lists those.

    Args:
        runs: interleaved rounds per path (GPU).
        num_qo_heads, num_kv_heads, head_dim: the problems' shape (the committed runs: 32 / 8 / 128).
    """

    def __init__(self, *, runs: int = 15, num_qo_heads: int = 32, num_kv_heads: int = 8, head_dim: int = 128):
        import ipywidgets as w

        from .. import profile

        self.gpu = has_gpu()
        self.heads = dict(num_qo_heads=num_qo_heads, num_kv_heads=num_kv_heads, head_dim=head_dim)
        self.committed = profile.committed_compare()
        self.results: dict[str, dict] = {}
        if self.gpu:
            options = list(PROBLEMS)
        else:
            if not self.committed:
                raise InfernbError("no GPU here and no committed compare runs (benchmarks/results/compare_*.json)")
            for r in self.committed["results"]:
                self.results[_label(r)] = r
            options = list(self.results)
        self.problem = w.Dropdown(options=options, value=options[0], description="problem",
                                  layout=w.Layout(width="420px"))
        self.variant = w.Dropdown(options=VARIANTS, value="none", description="variant", disabled=not self.gpu)
        self.runs = w.IntSlider(value=runs, min=3, max=50, description="rounds", disabled=not self.gpu)
        self.run_button = w.Button(description="run", button_style="primary", disabled=not self.gpu,
                                   tooltip="time the problem now" if self.gpu else "no GPU here: committed runs")
        self.progress = w.IntProgress(value=0, min=0, max=1, description="", layout=w.Layout(width="200px"))
        self.status = w.HTML()
        first = self.results.get(self.problem.value) if not self.gpu else None
        if first is None and self.committed:
            first = self.committed["results"][0]
        if first is None:                                  # a GPU and nothing committed: an empty picture until run
            first = _empty(self.problem.value)
        self.bars = figure_widget(viz.compare_bars(first, subtitle=self._source(first)))
        self.roof = figure_widget(viz.roofline(first, subtitle=self._source(first)))
        self._describe(first)
        self.problem.observe(lambda _: self.update(), names="value")
        self.run_button.on_click(lambda _: self.run())
        self.panel = w.VBox([w.HBox([self.problem, self.variant]), w.HBox([self.runs, self.run_button, self.progress]),
                             self.status, self.bars, self.roof])

    def _ipython_display_(self):
        from IPython.display import display

        display(self.panel)

    def _source(self, r: dict) -> str:
        if r.get("measured_now"):
            return f"measured now on {r['device']}"
        if not r.get("paths"):
            return "nothing timed yet: press run"
        return f"committed run: {r['device']}, {r['date']}" + ("" if self.gpu else " (no GPU here)")

    def _describe(self, r: dict) -> None:
        miss = "; ".join(f"{k}: {v[:90]}" for k, v in (r.get("missing") or {}).items())
        self.status.value = (f"<b>{r['case']}</b>" + (f", variant {r['variant']}" if r.get("variant") else "")
                             + f" — {self._source(r)}" + (f"<br><small>not timed: {miss}</small>" if miss else ""))

    def show(self, r: dict) -> None:
        """Draw a compare result (bars and roofline, in place)."""
        replace_figure(self.bars, viz.compare_bars(r, subtitle=self._source(r)))
        replace_figure(self.roof, viz.roofline(r, subtitle=self._source(r)))
        self._describe(r)

    def update(self) -> None:
        """Show the chosen problem's result: committed (no GPU) or the last run of it here."""
        r = self.results.get(self.problem.value) or self.results.get(f"now: {self.problem.value}")
        if r is not None:
            self.show(r)
        else:
            self.status.value = f"<b>{self.problem.value}</b>: press run to time it on this GPU"

    def _progress(self, done: int, total: int) -> None:
        self.progress.max, self.progress.value = total, done

    def run(self) -> dict | None:
        """Time the chosen problem and variant now (GPU)."""
        from .. import profile

        if not self.gpu:
            self.status.value = "no GPU here: the panel shows the committed runs"
            return None
        op, qo, kv = PROBLEMS[self.problem.value]
        self.progress.value = 0
        self.status.value = f"timing {self.problem.value} ({self.variant.value}) ..."
        try:
            variant = make_variant(self.variant.value, self.heads["num_qo_heads"], "cuda")
            r = profile.compare(op, qo, kv, variant=variant, runs=self.runs.value, **self.heads,
                                progress=self._progress)
        except InfernbError as e:
            self.status.value = f"<span style='color:#b91c1c'>{e}</span>"
            return None
        finally:
            self.progress.value = self.progress.max
        r = dict(r, measured_now=True)
        self.results[f"now: {self.problem.value}"] = r
        self.show(r)
        return r


def _label(r: dict) -> str:
    from ..profile import result_label

    return result_label(r["case"], r.get("variant"))


def _empty(case: str) -> dict:
    return dict(case=case, variant=None, device="", date="", flashinfer=None, copy_TBps=1.0, gemm_TFLOPs=1.0,
                flops=1.0, bytes=1.0, paths={}, missing={})
