"""VariantEditor: from code to compiled variant in the panel; errors shown; sliders do not recompile."""
import torch

import infernb as ib
from infernb.widgets.variant_editor import TEMPLATE


def test_editor_compiles_the_template_and_draws():
    e = ib.widgets.VariantEditor()
    assert e.variant.name == "my_softcap_window" and "no spills" in e.status.value
    assert "struct variant_my_softcap_window" in e.cuda_view.value and "registers" in e.report_view.value
    grid_fig, block_fig = e.grid_fig, e.block_fig
    z = grid_fig.data[0].z
    assert len(z) == 64 and z[10][10] == 1 and z[10][11] == 0 and z[40][10] == 0   # window 24, causal
    assert [s.description for s in e.sliders.children] == ["cap", "window"]
    e.sliders.children[1].value = 4                                               # window 24 -> 4
    assert not e.recompiled and "no recompilation" in e.status.value
    assert e.grid_fig is grid_fig and e.grid_fig.data[0].z[40][30] == 0 and e.grid_fig.data[0].z[40][37] == 1
    assert e.block_fig is block_fig


def test_editor_errors_point_at_the_users_line():
    e = ib.widgets.VariantEditor(TEMPLATE.replace("return (kv_idx <= q_idx)", "if q_idx > 3:\n        pass\n    return (kv_idx <= q_idx)"))
    assert "data-dependent Python control flow" in e.status.value and "&lt;variant editor&gt;:9" in e.status.value
    assert e.variant is None
    e.code.value = TEMPLATE.replace("return cap * torch.tanh(score / cap)", "return torch.softmax(score, 0)")
    e.compile()
    assert "torch.softmax is not supported" in e.status.value and "&lt;variant editor&gt;:6" in e.status.value
    e.code.value = TEMPLATE
    e.compile()
    assert e.variant is not None


def test_editor_builtins_and_raw_cuda_errors():
    e = ib.widgets.VariantEditor()
    e.pick.value = "alibi_h8"
    assert e.variant.name == "alibi_h8" and e.sliders.children == ()
    e.pick.value = "(code below)"
    e.code.value = ('variant = ib.Variant("raw", score_mod=lambda s, b, h, q, k: s, '
                    'cuda_score_mod="return scor * 2.f;")')
    e.compile()
    assert "CUDA compile error" in e.status.value and "generated from: raw CUDA" in e.status.value


def test_editor_a_builtin_shows_its_code_and_an_edit_of_it_compiles():
    """Picking a built-in writes the code that makes it into the box; editing that code and pressing "compile"
    builds the edit (compile used to ignore the box once a built-in was chosen, and the box kept the template)."""
    e = ib.widgets.VariantEditor()
    e.pick.value = "softcap_30"
    assert "ib.variants.softcap(30.0)" in e.code.value and e.variant.name == "softcap_30"
    e.code.value = e.code.value.replace("softcap(30.0)", "softcap(12.0)")
    e.compile()
    assert e.variant.name == "softcap_12", e.status.value
    e.pick.value = "document_4docs"                     # a built-in with setup lines (a captured tensor)
    assert "doc = torch.tensor(" in e.code.value and e.variant.name == "document_4docs"


def test_variant_grid_figure():
    s, m = ib.variants.sliding_window(3).evaluate(torch.randn(1, 2, 10, 10))
    fig = ib.viz.variant_grid(s, m, head=1)
    assert fig.data[0].z[5][2] == 1 and fig.data[0].z[5][1] == 0


def test_editor_runs_the_variant_through_the_kernel():
    """"run": the prefill kernel (here the CPU emulator) on the grid's batch, against the float64 reference."""
    e = ib.widgets.VariantEditor()
    res = e.run()
    assert res == dict(device="cuda" if ib.has_gpu() else "cpu", error=res["error"]) and res["error"] < 1e-2
    assert "my_softcap_window through" in e.run_view.value and "1e-2" in e.run_view.value
    e.sliders.children[1].value = 4                                 # a runtime parameter moved: the run follows it
    assert e.run()["error"] < 1e-2
    e.pick.value = next(n for n in e._builtins if n.startswith("document"))   # a builtin that captures a tensor
    assert e.run()["error"] < 1e-2
