"""Pictures of a :class:`~infernb.plan.Plan`: who works on what, and which partial results merge where."""
from __future__ import annotations

import numpy as np

from ._style import base_layout, seq_color


def _gantt_traces(plan, go, showlegend=True):
    """One horizontal bar per item: row = CTA, x = the item's cost interval within its CTA, colour = request."""
    start = plan.item_offsets()
    tiles = plan.item_unit // plan.num_kv_heads
    req = plan.tile_request[tiles]
    head = plan.item_unit % plan.num_kv_heads
    colors = [seq_color(int(r)) for r in req]
    split = plan.item_slot >= 0
    hover = [f"CTA {c}: request {r}, KV head {h}, tile {t}<br>keys [{a}, {b}) of {int(plan.tile_kv_len[t])}"
             f"{' (split: partial -> merge)' if s else ''}<br>cost {cost:.0f}"
             for c, r, h, t, a, b, s, cost in zip(plan.item_cta, req, head, tiles, plan.item_kv_start,
                                                  plan.item_kv_end, split, plan.item_cost)]
    bars = go.Bar(x=plan.item_cost, y=plan.item_cta, base=start, orientation="h", marker=dict(
        color=colors, line=dict(width=np.where(split, 1.5, 0.3).tolist(), color="#111827")),
        hovertext=hover, hoverinfo="text", name="items", showlegend=False)
    crit = int(np.argmax(plan.cta_load)) if plan.num_ctas else 0
    mark = go.Scatter(x=[0, float(plan.cta_load.max(initial=0))], y=[crit, crit], mode="lines",
                      line=dict(color="#dc2626", width=3), name="critical path (most loaded CTA)",
                      showlegend=showlegend, hoverinfo="skip")
    return bars, mark


def plan_gantt(plan, compare=None, *, title: str | None = None):
    """Gantt picture: one row per CTA, its work items as bars coloured by request (outlined: a chunk of a
    split row), the critical path in red. With ``compare`` (e.g. the naive plan of the same batch) the two
    are drawn side by side on one time axis, each titled with its imbalance and predicted time."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    plans = [compare, plan] if compare is not None else [plan]
    # two short lines per title: side by side, one long line overran its half of the figure and was cut
    titles = [f"<b>{p.strategy}</b>: imbalance {p.stats()['imbalance']:.2f}<br>predicted {p.predicted_us():.0f} us, "
              f"{len(p.merge_unit)} split rows" for p in plans]
    fig = make_subplots(rows=1, cols=len(plans), shared_xaxes=True, shared_yaxes=True, subplot_titles=titles,
                        horizontal_spacing=0.04)
    fig.update_annotations(font_size=12)
    xmax = max(float(p.cta_load.max(initial=0)) for p in plans) * 1.02 or 1.0
    for i, p in enumerate(plans):
        bars, mark = _gantt_traces(p, go, showlegend=(i == 0))
        fig.add_trace(bars, 1, i + 1)
        fig.add_trace(mark, 1, i + 1)
        fig.update_xaxes(range=[0, xmax], title="predicted load (KV-token equivalents)", row=1, col=i + 1)
    fig.update_yaxes(autorange="reversed", title="CTA", row=1, col=1)
    s = plan.stats()
    fig.update_layout(**base_layout(title or f"{s['requests']} requests on {plan.num_ctas} CTAs "
                                    f"({plan.num_qo_heads} q / {plan.num_kv_heads} KV heads, d={plan.head_dim})"),
                      bargap=0.15, height=min(900, max(380, 120 + 4 * plan.num_ctas)),
                      legend=dict(orientation="h", y=-0.12))
    fig.update_layout(margin=dict(t=110))           # the figure's title, then the two-line subplot titles
    return fig


def merge_map(plan, *, title: str | None = None, max_units: int = 200):
    """Which partial results feed which output rows: one row per split unit (request, KV head, tile), a marker
    on each CTA that computes a chunk of it, joined by a line; the merge kernel combines them by LSE."""
    import plotly.graph_objects as go

    fig = go.Figure()
    units = plan.merge_unit[:max_units]
    xs, ys, text, colors = [], [], [], []
    lx, ly = [], []
    for m, u in enumerate(units.tolist()):
        items = np.flatnonzero(plan.item_unit == u)
        r, h, t = plan.unit_of(u)
        ctas = plan.item_cta[items]
        lx += [*ctas.tolist(), None]
        ly += [m] * len(items) + [None]
        for i in items:
            xs.append(int(plan.item_cta[i]))
            ys.append(m)
            colors.append(seq_color(r))
            text.append(f"request {r}, KV head {h}, tile {t}: keys [{plan.item_kv_start[i]}, {plan.item_kv_end[i]})"
                        f" on CTA {plan.item_cta[i]} -> partial slot {plan.item_slot[i]}")
    fig.add_trace(go.Scatter(x=lx, y=ly, mode="lines", line=dict(color="#9ca3af", width=1), hoverinfo="skip",
                             showlegend=False))
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", marker=dict(size=8, color=colors), hovertext=text,
                             hoverinfo="text", showlegend=False))
    labels = [f"req {plan.unit_of(u)[0]} · h{plan.unit_of(u)[1]} · t{plan.unit_of(u)[2]}" for u in units.tolist()]
    fig.update_yaxes(tickvals=list(range(len(units))), ticktext=labels, autorange="reversed", title="split output rows")
    fig.update_xaxes(title="CTA computing a partial result", range=[-1, plan.num_ctas])
    more = f" (first {max_units} of {len(plan.merge_unit)})" if len(plan.merge_unit) > max_units else ""
    fig.update_layout(**base_layout(title or f"Merge map: {len(plan.merge_unit)} split rows, "
                                    f"{len(plan.merge_slots)} partial states{more}"),
                      height=min(900, max(300, 100 + 14 * len(units))))
    if not len(units):
        fig.add_annotation(text="no row was split: nothing to merge", showarrow=False, x=0.5, y=0.5,
                           xref="paper", yref="paper")
    return fig
