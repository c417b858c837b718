"""``VariantEditor``: write or pick a variant, see its CUDA, compile report, errors, mask/score pictures, move its
parameters without recompiling, and run it through the attention kernel (on the GPU when there is one)."""
from __future__ import annotations

import html

import torch

from .. import variants as V
from .. import viz
from ..device import device_info, has_gpu
from ..errors import CompileError, InfernbError
from ..jit import build
from ._util import figure_widget, replace_figure

TEMPLATE = '''import torch
# A soft-capped sliding window with a per-head bias: edit me, then press "compile".
head_bias = torch.linspace(-1.0, 1.0, 8, device=device)

def score_mod(score, b, h, q_idx, kv_idx, cap):
    return cap * torch.tanh(score / cap) + head_bias[h]

def mask_mod(b, h, q_idx, kv_idx, window):
    return (kv_idx <= q_idx) & (kv_idx >= q_idx - window)

variant = ib.Variant("my_softcap_window", score_mod=score_mod, mask_mod=mask_mod,
                     params={"cap": 20.0, "window": 24}, runtime={"cap", "window"})
'''


class VariantEditor:
    """Code box (or a built-in from the dropdown) -> :class:`~infernb.Variant` -> generated CUDA, NVRTC compile
    report of its probe kernel, compile errors pointing at the Python line, heatmaps of the mask and modified
    scores on a small grid, and the block-sparse picture at a chosen block size. Runtime parameters get
    sliders: moving one redraws from the Python reference without recompiling (the report says "cache hit").
    "run" sends the variant through the prefill kernel on a small random batch (the GPU when there is one, the CPU
    emulator otherwise) and checks it against the float64 reference (:meth:`run`).

    ``editor.variant`` is the current variant. The code runs in a namespace with ``ib`` (infernb) and ``torch``.
    """

    def __init__(self, code: str = TEMPLATE, *, grid: tuple[int, int] = (64, 64), heads: int = 8, arch: str | None = None):
        import ipywidgets as w

        self.grid, self.heads, self.arch = grid, heads, arch
        self.variant: V.Variant | None = None
        self.report = self.kernel = None
        self.recompiled = False
        self._builtins = V.example_code()     # picked: its code goes into the box
        self.pick = w.Dropdown(options=["(code below)", *self._builtins], value="(code below)", description="built-in")
        self.code = w.Textarea(value=code, layout=w.Layout(width="100%", height="220px"))
        self.compile_button = w.Button(description="compile", icon="play", button_style="primary")
        self.run_button = w.Button(description="run", icon="bolt", tooltip="run it through the attention kernel")
        self.run_view = w.HTML()
        self.head = w.BoundedIntText(value=0, min=0, max=heads - 1, description="head")
        self.block = w.Dropdown(options=[8, 16, 32, 64], value=16, description="block")
        self.sliders = w.VBox()
        self.status = w.HTML()
        self.cuda_view = w.HTML()
        self.report_view = w.HTML()
        self.grid_fig = figure_widget(viz.variant_grid(*V.causal().evaluate(torch.zeros(1, 1, 2, 2))))
        self.block_fig = figure_widget(viz.block_sparse(V.causal().block_mask(16, 16, (8, 8))))
        self.compile_button.on_click(lambda _: self.compile())
        self.run_button.on_click(lambda _: self.run())
        self.pick.observe(lambda ch: self._pick(ch["new"]), names="value")
        for c in (self.head, self.block):
            c.observe(lambda _: self.redraw(), names="value")
        self.panel = w.VBox([w.HBox([self.pick, self.compile_button, self.run_button, self.head, self.block]),
                             self.code, self.status, self.run_view, self.sliders, self.grid_fig, self.block_fig,
                             w.Accordion(children=[self.cuda_view, self.report_view],
                                         titles=("generated CUDA", "compile report"))])
        self.compile()

    def _ipython_display_(self):
        from IPython.display import display

        display(self.panel)

    # ------------------------------------------------------------------ actions
    def define(self) -> V.Variant:
        """The variant the code box describes (its ``variant``; a built-in picked in the dropdown is written into
        the box first, so an edit of it is what compiles)."""
        return V.variant_from_code(self.code.value, filename="<variant editor>")

    def _pick(self, name: str) -> None:
        if name in self._builtins:
            self.code.value = self._builtins[name]
        self.compile()

    def compile(self) -> None:
        """Define the variant, compile its probe kernel with NVRTC (no GPU needed), redraw."""
        import linecache

        linecache.cache["<variant editor>"] = (len(self.code.value), None, self.code.value.splitlines(True),
                                               "<variant editor>")
        try:
            v = self.define()
            self.kernel = build(V.probe_spec(v), self.arch)
            self.report = self.kernel.report
        except CompileError as e:
            self._error(f"CUDA compile error:\n{e}")
            return
        except (InfernbError, SyntaxError, NameError, TypeError, ValueError) as e:
            self._error(f"{type(e).__name__}: {e}")
            return
        self.variant = v
        self._make_sliders()
        self.cuda_view.value = f"<pre>{html.escape(v.cuda)}</pre>"
        self.report_view.value = self.report._repr_html_()
        self.status.value = (f"<span style='color:#065f46'>{html.escape(repr(v))}: compiled for {self.report.arch} "
                             f"({'cache hit' if self.report.cache_hit else f'{self.report.compile_seconds:.2f} s'}, "
                             f"{max(k.registers for k in self.report.kernels)} registers, "
                             f"{'spills' if self.report.spills else 'no spills'})</span>")
        self.redraw()

    def set_param(self, name: str, value) -> None:
        """Change a runtime parameter: no recompilation (the generated code does not contain it)."""
        self.variant = self.variant.with_params(**{name: value})
        kernel = build(V.probe_spec(self.variant), self.arch)
        self.recompiled = kernel is not self.kernel
        self.kernel = kernel
        self.status.value = (f"<span style='color:#065f46'>{html.escape(name)} = {value}: "
                             f"{'recompiled' if self.recompiled else 'same compiled kernel, no recompilation'}</span>")
        self.redraw()

    def run(self) -> dict | None:
        """Run the current variant through the prefill kernel (:func:`infernb.ops.prefill.variant_error`: the GPU's
        when there is one, else the CPU emulator) on a random batch of the grid's size, ``heads`` query heads on one
        KV head, and show its error against the float64 reference. Returns ``{device, error}``, or None after an
        error. On the GPU the code runs again with ``device = "cuda"``, so tensors it captures must be created on
        ``device``."""
        from ..ops.prefill import variant_error

        if self.variant is None:
            return None
        dev = "cuda" if has_gpu() else "cpu"
        try:
            v = self.variant
            if dev != "cpu":
                v = V.variant_from_code(self.code.value, filename="<variant editor>", device=dev)
                v = v.with_params(**{n: self.variant.params[n] for n in self.variant.runtime})
            res = variant_error(v, *self.grid, num_qo_heads=self.heads, device=dev)
        except (InfernbError, RuntimeError, ValueError, TypeError) as e:
            self._error(f"run: {type(e).__name__}: {e}")
            return None
        err = res["error"]
        where = f"the prefill kernel on {device_info().name}" if dev != "cpu" else "the CPU emulator (no GPU here)"
        self.run_view.value = (f"<span style='color:{'#065f46' if err < 1e-2 else '#b91c1c'}'>{html.escape(v.name)} "
                               f"through {html.escape(where)}: ||out - ref|| / ||ref|| = {err:.1e} (bf16 tolerance "
                               "1e-2)</span>")
        return res

    def redraw(self) -> None:
        if self.variant is None:
            return
        Q, K = self.grid
        g = torch.Generator().manual_seed(0)
        scores = torch.randn(1, self.heads, Q, K, generator=g) * 4
        s, m = self.variant.evaluate(scores)
        replace_figure(self.grid_fig, viz.variant_grid(s, m, head=min(self.head.value, self.heads - 1),
                                                       title=f"{self.variant.name} on a {Q}x{K} grid"))
        blk = self.block.value
        replace_figure(self.block_fig, viz.block_sparse(self.variant.block_mask(Q, K, (blk, blk))))

    # ------------------------------------------------------------------ helpers
    def _make_sliders(self) -> None:
        import ipywidgets as w

        sliders = []
        for name in sorted(self.variant.runtime):
            val = self.variant.params[name]
            span = max(4 * abs(val), 64 if isinstance(val, int) else 1.0)
            lo = 0 if val >= 0 else -span                      # the slider always contains the value
            if isinstance(val, bool):
                s = w.Checkbox(value=val, description=name)
            elif isinstance(val, int):
                s = w.IntSlider(value=val, min=int(lo), max=int(span), description=name)
            else:
                s = w.FloatSlider(value=float(val), min=float(lo) if val < 0 else 0.0, max=float(span),
                                  step=float(span) / 200, description=name)
            s.observe(lambda ch, n=name: self.set_param(n, ch["new"]), names="value")
            sliders.append(s)
        self.sliders.children = sliders

    def _error(self, msg: str) -> None:
        self.status.value = f"<pre style='color:#b91c1c'>{html.escape(msg)}</pre>"
