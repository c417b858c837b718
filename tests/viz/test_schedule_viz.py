"""Plan pictures draw what the plan says; SchedulerExplorer redraws in place."""
import numpy as np

import infernb as ib
from infernb.plan import presets

KW = dict(num_qo_heads=32, num_kv_heads=8, head_dim=128, num_sms=132, ctas_per_sm=1)


def test_gantt_bars_are_the_items():
    qo, kv = presets.batch("one long + many short", 16)
    bal = ib.plan(qo, kv, **KW)
    naive = ib.plan(qo, kv, strategy="naive", **KW)
    fig = ib.viz.plan_gantt(bal, compare=naive)
    bars = [t for t in fig.data if t.type == "bar"]
    assert [len(b.x) for b in bars] == [naive.num_items, bal.num_items]
    # each CTA's bars end at its load
    b = bars[1]
    ends = np.asarray(b.base) + np.asarray(b.x)
    for cta in range(bal.num_ctas):
        sel = np.asarray(b.y) == cta
        if sel.any():
            assert np.isclose(ends[sel].max(), bal.cta_load[cta])
    crit = [t for t in fig.data if t.type == "scatter"][1]
    assert crit.y[0] == int(np.argmax(bal.cta_load))
    assert "imbalance" in fig.layout.annotations[0].text and "naive" in fig.layout.annotations[0].text


def test_merge_map_lists_split_rows():
    qo, kv = presets.batch("one long + many short", 16)
    p = ib.plan(qo, kv, **KW)
    fig = ib.viz.merge_map(p)
    markers = fig.data[1]
    assert len(markers.x) == len(p.merge_slots)
    assert len(fig.layout.yaxis.ticktext) == len(p.merge_unit)
    empty = ib.viz.merge_map(ib.plan([1] * 264, [640] * 264, num_qo_heads=8, num_kv_heads=1, head_dim=64, num_sms=132,
                                       ctas_per_sm=1))
    assert "nothing to merge" in empty.layout.annotations[0].text


def test_scheduler_explorer_updates_in_place():
    e = ib.widgets.SchedulerExplorer(batch_size=32)
    gantt, merges = e.gantt, e.merges
    assert "split rows" in e.status.value
    e.preset.value = "uniform"
    assert e.balanced.stats()["requests"] == 32
    e.gpu.value = "A100 (108 SMs)"
    assert e.balanced.num_ctas == 108
    e.preset.value = "custom"
    e.kv_lens.value = "5000, 10, 10"
    assert e.balanced.batch_size == 3
    e.qo_lens.value = "1, 20, 1"                               # qo > kv is not causal here: allowed
    e.kv_lens.value = "5000, x"
    assert "invalid literal" in e.status.value or "Error" in e.status.value or "color:#b91c1c" in e.status.value
    assert e.gantt is gantt and e.merges is merges
    assert len([t for t in e.gantt.data if t.type == "bar"]) == 2


def test_gantt_subplot_titles_fit_their_half():
    # side by side, each title has half the figure: one ~60-character line was cut in the browser ("131 spli")
    import re
    qo, kv = presets.batch("one long + many short", 64)
    bal = ib.plan(qo, kv, **KW)
    fig = ib.viz.plan_gantt(bal, compare=ib.plan(qo, kv, strategy="naive", **KW))
    titles = [a.text for a in fig.layout.annotations][:2]
    assert len(titles) == 2 and f"{len(bal.merge_unit)} split rows" in titles[1]
    for t in titles:
        for line in re.sub(r"</?b>", "", t).split("<br>"):
            assert len(line) <= 40, f"subplot title line too long for half the figure: {line!r}"
    assert fig.layout.margin.t >= 100                               # two lines under the figure's title
