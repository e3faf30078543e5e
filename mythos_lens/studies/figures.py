"""The LoRA study's figures (mean over seeds, 95 % intervals), drawn from the study table."""

from __future__ import annotations

from typing import Any

import pandas as pd

from mythos_lens.studies.models import ARMS


def study_figures(study: pd.DataFrame) -> list[tuple[str, Any]]:
    """The study's figures (mean over seeds, 95 % t-interval error bars), from the study table."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    def err(g: pd.DataFrame) -> dict[str, Any]:
        return {"type": "data", "symmetric": False, "array": (g.ci_high - g["mean"]).to_numpy(),
                "arrayminus": (g["mean"] - g.ci_low).to_numpy()}  # fmt: skip

    figs = []
    panels = [("cka_h", "CKA(h_t, h_t+1)"), ("cka_dh", "CKA(Δh_t, Δh_t+1)"),
              ("cka_block_out", "CKA(block_out_t, _t+1)"),
              ("router_overlap", "router overlap@k(t, t+1)")]  # fmt: skip
    fig = make_subplots(rows=1, cols=4, subplot_titles=[p[1] for p in panels])
    for i, (q, _) in enumerate(panels, start=1):
        for arm, color in (("on", "#d62728"), ("off", "#1f77b4")):
            g = study[(study.quantity == q) & (study.arm == arm)].sort_values("x")
            fig.add_trace(go.Scatter(x=g.x, y=g["mean"], error_y=err(g), mode="lines+markers",
                                     name=f"LoRA {arm}", legendgroup=arm, showlegend=i == 1,
                                     line={"color": color}), row=1, col=i)  # fmt: skip
    base = study[study.quantity == "router_overlap_excess"]
    if len(base):
        r = study[(study.quantity == "router_overlap") & (study.arm == "on")]
        e = study[(study.quantity == "router_overlap_excess") & (study.arm == "on")]
        k_over_e = float((r.set_index("x")["mean"] - e.set_index("x")["mean"]).iloc[0])
        fig.add_hline(y=k_over_e, line_dash="dot", row=1, col=4, annotation_text="k/E")
    fig.update_xaxes(title_text="loop t")
    fig.update_layout(title="Adjacent-loop similarity, LoRA on vs off (mean, 95 % CI over seeds)",
                      height=380)  # fmt: skip
    figs.append(("Similarity of loop t and t+1: debiased CKA of h_t, Δh_t and block_out, and "
                 "router overlap@k against k/E (dotted).", fig))  # fmt: skip
    fig = make_subplots(rows=1, cols=2, subplot_titles=["ΔKL (nats)", "Δ accuracy"])
    for i, q in enumerate(("ablate_dkl", "ablate_dacc"), start=1):
        for arm, color in (("on", "#d62728"), ("off", "#1f77b4")):
            g = study[(study.quantity == q) & (study.arm == arm)].sort_values("x")
            fig.add_trace(go.Bar(x=g.x, y=g["mean"], error_y=err(g), name=f"LoRA {arm}",
                                 legendgroup=arm, showlegend=i == 1, marker_color=color),
                          row=1, col=i)  # fmt: skip
    fig.update_xaxes(title_text="loop where LoRA is ablated")
    fig.update_layout(title="Intervention: LoRA delta zeroed at one loop (mean, 95 % CI)",
                      barmode="group", height=380)  # fmt: skip
    figs.append(("Effect at the answer position of zeroing the LoRA delta at one loop; the "
                 "LoRA-off models must (and do) show exactly 0.", fig))  # fmt: skip
    li = study[study.quantity.str.startswith("loop_id_") & study.arm.isin(ARMS)
               & (study.quantity != "loop_id_selectivity")]  # fmt: skip
    fig = go.Figure()
    for (q, arm), g in li.groupby(["quantity", "arm"], sort=True):
        fig.add_trace(go.Bar(x=g.variant, y=g["mean"], error_y=err(g),
                             name=f"{q.removeprefix('loop_id_')} (LoRA {arm})"))  # fmt: skip
    fig.update_layout(title="Loop-identity probe (pooled over loops): task vs control vs majority",
                      barmode="group", yaxis_title="accuracy", height=380)  # fmt: skip
    figs.append(("Which loop is this state from? With all channels the loop-index sinusoid makes "
                 "it trivial; without the first d/8 channels it is the real test.", fig))  # fmt: skip
    hp = study[(study.quantity == "hop_probe_acc") & study.arm.isin(ARMS)]
    if len(hp):
        fig = make_subplots(rows=1, cols=2, subplot_titles=["LoRA on", "LoRA off"])
        for i, arm in enumerate(ARMS, start=1):
            grid = hp[hp.arm == arm].pivot(index="hop", columns="x", values="mean")
            fig.add_trace(go.Heatmap(z=grid.to_numpy(float), x=grid.columns, y=grid.index,
                                     zmin=0, zmax=1, texttemplate="%{z:.2f}",
                                     showscale=i == 2), row=1, col=i)  # fmt: skip
        fig.update_xaxes(title_text="loop")
        fig.update_yaxes(title_text="hop j", autorange="reversed")
        fig.update_layout(title="Hop-entity probe accuracy, loop × hop (mean over seeds)",
                          height=380)  # fmt: skip
        figs.append(("Linear probe for the entity reached after hop j, at each loop (query "
                     "position); selectivity and majority in study.csv.", fig))  # fmt: skip
    acc = study[(study.quantity == "accuracy") & study.arm.isin(ARMS)]
    if len(acc):
        fig = go.Figure()
        for (arm, hop), g in acc.groupby(["arm", "hop"], sort=True):
            g = g.sort_values("x")
            fig.add_trace(go.Scatter(x=g.x, y=g["mean"], error_y=err(g), mode="lines+markers",
                                     name=f"LoRA {arm}, {hop} hop(s)",
                                     line={"dash": "solid" if arm == "on" else "dot"}))  # fmt: skip
        fig.update_layout(title="Accuracy vs loops at test (mean, 95 % CI)", height=380,
                          xaxis_title="loops", yaxis_title="accuracy")  # fmt: skip
        figs.append(("Held-out accuracy per hop count as the loop count grows.", fig))
    return figs
