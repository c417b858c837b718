"""Benchmark pictures: ceilings named in the legend (not written over the bars' labels), room above the bars."""
import infernb as ib


def _check(fig, rows, keys, ceiling, label):
    # the ceiling is a legend entry, not an annotation that sat on the bars' time labels
    assert not [a for a in fig.layout.annotations if label in (a.text or "")]
    assert [t for t in fig.data if t.type == "scatter" and (t.name or "").startswith(label)]
    bars = [float(v) for r in rows for k in keys if isinstance(r.get(k), (int, float)) for v in [r[k]]]
    top = fig.layout.yaxis.range[1]
    assert top >= 1.15 * max(bars + [ceiling]), "no room above the tallest bar for its time label"


def test_bandwidth_bars_name_the_copy_ceiling_in_the_legend():
    run = ib.profile.committed_results("decode")
    fig = ib.viz.bandwidth_bars(run["rows"], run["copy_TBps"])
    _check(fig, run["rows"], [k for k in run["rows"][0] if k.endswith("_TBps")], run["copy_TBps"], "copy ceiling")


def test_tflops_bars_name_the_gemm_ceiling_and_draw_flexattention():
    run = ib.profile.committed_results("prefill")
    fig = ib.viz.tflops_bars(run["cases"], run["gemm_tflops"])
    _check(fig, run["cases"], [k for r in run["cases"] for k in r if k.endswith("_tflops")], run["gemm_tflops"],
           "bf16 GEMM")
    assert "FlexAttention" in [t.name for t in fig.data]


def test_speed_table_lists_every_path_against_infernb():
    run = ib.profile.committed_results("prefill")
    rows = [r for r in run["cases"] if r["case"] == "causal_8192"]
    text = ib.profile.speed_table(rows, rate="tflops")
    lines = text.splitlines()
    assert "speed vs infernb" in lines[0]
    fi = next(line for line in lines if line.split()[1] == "flashinfer_fa2")
    assert abs(float(fi.split()[-1]) - rows[0]["infernb_ms"] / rows[0]["flashinfer_fa2_ms"]) < 0.006
    assert not any("_p10" in line or "_p90" in line for line in lines)


def test_time_bars_draw_every_path_with_its_time():
    rows = [dict(case="a", infernb_ms=0.5, infernb_p10_ms=0.4, flex_ms=0.25), dict(case="b", infernb_ms=2.0)]
    fig = ib.viz.time_bars(rows)
    assert [t.name for t in fig.data] == ["infernb", "flex"]              # the p10 / p90 spreads are not paths
    assert list(fig.data[0].y) == [0.5, 2.0] and fig.data[1].y[1] is None
    assert fig.data[0].text[1] == "2.000 ms"
    assert fig.layout.yaxis.range[1] >= 1.15 * 2.0                         # room for the labels above the bars
    fig = ib.viz.time_bars(rows, [("flex", "FlexAttention")])
    assert [t.name for t in fig.data] == ["FlexAttention"]
