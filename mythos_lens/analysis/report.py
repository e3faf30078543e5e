"""The HTML report: figures drawn from the tables, summary statements, key tables, run facts."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from mythos_lens.analysis.causal_summary import causal_figures, causal_statements
from mythos_lens.analysis.columns import TABLE_COLUMNS
from mythos_lens.analysis.summary import (
    adjacent_pairs,
    summarize_checkpoint,
)
from mythos_lens.errors import MythosLensError


def report_figures(tables: dict[str, pd.DataFrame]) -> list[tuple[str, Any]]:
    """``(caption, plotly Figure)`` pairs for the report, every one drawn from the tables."""
    import plotly.graph_objects as go

    from probes.plots import loop_loop_heatmap

    figs: list[tuple[str, Any]] = []
    names = list(dict.fromkeys(tables["cka"]["checkpoint"]))
    acc = tables.get("accuracy")
    if acc is not None and len(acc):
        fig = go.Figure()
        for ck, g in acc.groupby("checkpoint", sort=False):
            fig.add_trace(go.Bar(x=g.hops, y=g.accuracy, name=ck))
        g0 = acc.drop_duplicates("hops")
        fig.add_trace(go.Scatter(x=g0.hops, y=g0.chance_ignore_start, mode="lines+markers",
                                 name="chance (knows f, not the start)", line={"dash": "dot"}))  # fmt: skip
        fig.update_layout(title="held-out accuracy per hop count", xaxis_title="hops",
                          yaxis_title="accuracy", yaxis_range=[0, 1.05])  # fmt: skip
        figs.append(("Accuracy per hop count, beside the chance a start-blind guess reaches.", fig))
    dp = tables.get("depth")
    if dp is not None and len(dp):
        for ck, g in dp.groupby("checkpoint", sort=False):
            grid = g.pivot(index="hops", columns="n_loops", values="accuracy")
            fig = go.Figure(go.Heatmap(z=grid.to_numpy(float), x=grid.columns, y=grid.index,
                                       zmin=0, zmax=1, colorbar={"title": "accuracy"},
                                       texttemplate="%{z:.2f}"))  # fmt: skip
            fig.update_layout(title=f"{ck}: accuracy, hops × loops", xaxis_title="loops at test",
                              yaxis_title="hops")  # fmt: skip
            figs.append((f"{ck}: depth extrapolation (held-out accuracy per hop count and loop "
                         "count).", fig))  # fmt: skip
    cka = tables["cka"]
    fig = go.Figure()
    for (ck, site), g in adjacent_pairs(cka, ["checkpoint", "site"]).groupby(["checkpoint", "site"],
                                                                        sort=False):  # fmt: skip
        fig.add_trace(go.Scatter(x=g.loop_a, y=g.value, mode="lines+markers", name=f"{ck} {site}"))
    fig.update_layout(title="CKA(t, t+1) per site", xaxis_title="loop t", yaxis_title="CKA")
    figs.append(("Debiased CKA between adjacent loops for h_t, Δh_t and block_out.", fig))
    for ck in names:
        sub = cka[(cka.checkpoint == ck) & (cka.site == "delta_h")]
        figs.append((f"{ck}: CKA of Δh_t between every pair of loops.",
                     loop_loop_heatmap(sub, title=f"{ck}: CKA of Δh_t")))  # fmt: skip
    ro = tables["router"]
    a = adjacent_pairs(ro[ro.metric == "overlap_at_k"], ["checkpoint"])
    if len(a):  # models without a router have no such table
        fig = go.Figure()
        for ck, g in a.groupby("checkpoint", sort=False):
            fig.add_trace(go.Scatter(x=g.loop_a, y=g.value, mode="lines+markers", name=ck))
        fig.add_hline(y=float(a.random_baseline.iloc[0]), line_dash="dot",
                      annotation_text="random k/E")  # fmt: skip
        fig.update_layout(title="router overlap@k between loops t and t+1",
                          xaxis_title="loop t", yaxis_title="overlap@k",
                          yaxis_range=[0, 1.05])  # fmt: skip
        figs.append(("Experts re-used between adjacent loops, against the random baseline "
                     "k/E.", fig))  # fmt: skip
    pr = tables["probes"]
    if len(pr):
        li = pr[(pr.probe == "loop_index") & pr.metric.isin(["task_acc", "control_acc",
                                                              "majority_acc"])]  # fmt: skip
        fig = go.Figure()
        for m, g in li.groupby("metric", sort=False):
            fig.add_trace(go.Bar(x=[f"{r.checkpoint}<br>{r.site} {r.channels}" for r in
                                    g.itertuples()], y=g["mean"], name=m,
                                 error_y={"type": "data", "array": g["std"]}))  # fmt: skip
        fig.update_layout(title="loop-identity probe", yaxis_title="accuracy", barmode="group")
        figs.append(("Which loop is this state from? Task vs control task vs majority, with and "
                     "without the loop-embedding channels (first d/8).", fig))  # fmt: skip
        hp = pr[pr.probe.str.startswith("hop_") & (pr.metric == "task_acc")]
        for ck, g in hp.groupby("checkpoint", sort=False):
            grid = g.pivot(index="hop", columns="loop", values="mean")
            fig = go.Figure(go.Heatmap(z=grid.to_numpy(float), x=grid.columns, y=grid.index,
                                       zmin=0, zmax=1, texttemplate="%{z:.2f}",
                                       colorbar={"title": "probe acc"}))  # fmt: skip
            fig.update_layout(title=f"{ck}: hop-entity probe, loop × hop", xaxis_title="loop",
                              yaxis_title="hop j (entity after j hops)")  # fmt: skip
            figs.append((f"{ck}: linear-probe accuracy of the entity after hop j at each loop "
                         "(query position; control and selectivity in probes.csv).", fig))  # fmt: skip
    ab = tables["ablation"]
    for metric, label in (("kl", "ΔKL (nats)"), ("delta_acc", "Δ accuracy")):
        g = ab[(ab.intervention == "ablate_lora") & (ab.metric == metric)]
        if not len(g):
            continue
        fig = go.Figure()
        for ck, gg in g.groupby("checkpoint", sort=False):
            fig.add_trace(go.Bar(x=gg.ablated_loop, y=gg.value, name=ck))
        fig.update_layout(title=f"LoRA ablated at one loop: {label}", xaxis_title="ablated loop",
                          yaxis_title=label, barmode="group")  # fmt: skip
        figs.append((f"Intervention: LoRA delta zeroed at one loop — {label} at the query "
                     "position.", fig))  # fmt: skip
    conv = tables["convergence"]
    fig = go.Figure()
    for (ck, m), g in conv[conv.metric.isin(["rel_step", "kl_prev_exit", "spectral_radius"])
                           ].groupby(["checkpoint", "metric"], sort=False):  # fmt: skip
        fig.add_trace(go.Scatter(x=g.loop, y=g.value, mode="lines+markers", name=f"{ck} {m}"))
    fig.update_layout(title="convergence per loop", xaxis_title="loop", yaxis_type="log")
    figs.append(("Relative step size, KL between successive exit-lens readouts, and the loop "
                 "map's Jacobian spectral radius (where the model provides its loop map).", fig))  # fmt: skip
    lens = tables["lens"]
    metric = "target_rank" if (lens.metric == "target_rank").any() else "final_rank"
    fig = go.Figure()
    for (ck, ln), g in lens[lens.metric.isin([metric, "control_rank"])].groupby(
        ["checkpoint", "lens"], sort=False
    ):
        for m, gg in g.groupby("metric", sort=False):
            fig.add_trace(go.Scatter(x=gg.loop, y=gg.value, mode="lines+markers",
                                     name=f"{ck} {ln} {m}",
                                     line={"dash": "dot" if m == "control_rank" else "solid"}))  # fmt: skip
    fig.update_layout(title=f"lens: mean {metric} per loop (control dotted)", xaxis_title="loop",
                      yaxis_title="rank (0 = top-1)")  # fmt: skip
    figs.append((f"Logit and coda lens: mean {metric} at the query position; a random control "
                 "token's rank shows what no information looks like.", fig))  # fmt: skip
    lc = tables["lora_cosine"]
    for ck in names:
        sub = lc[lc.checkpoint == ck]
        if len(sub) and sub["value"].notna().any():
            figs.append((f"{ck}: cosine between per-loop LoRA scale vectors.",
                         loop_loop_heatmap(sub, title=f"{ck}: LoRA scale cosine")))  # fmt: skip
    return figs


def _html_table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, float_format=lambda x: f"{x:.4g}", border=0, classes="t")


def build_report(
    tables: dict[str, pd.DataFrame],
    meta: dict[str, Any],
    *,
    title: str,
    plotlyjs: str = "inline",
    extra_html: str = "",
    summary: list[str] | None = None,
    figures: list[tuple[str, Any]] | None = None,
) -> str:
    """One self-contained HTML page: summary statements, figures, key tables, run facts.

    ``plotlyjs="inline"`` embeds plotly.js (opens offline); ``"cdn"`` links it (small file).
    """
    import html

    if plotlyjs not in ("inline", "cdn"):
        raise MythosLensError(f"plotlyjs={plotlyjs!r}", "'inline' or 'cdn'")
    names = list(dict.fromkeys(tables["cka"]["checkpoint"])) if "cka" in tables else []
    if summary is None:
        summary = []
        for ck in names:
            # which loops matter comes first: it says which per-loop numbers mean anything
            said = causal_statements(tables, ck) + summarize_checkpoint(tables, ck)
            summary += [f"<b>{html.escape(ck)}</b>: {html.escape(s)}" for s in said]
    figs = causal_figures(tables) + report_figures(tables) if figures is None else figures
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
        "table.t{border-collapse:collapse;font-size:12px}table.t td,table.t th{padding:2px 6px;"
        "border-bottom:1px solid #ddd}figure{margin:1.5em 0}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<section id='summary'><h2>Summary</h2><ul>",
        *[f"<li>{s}</li>" for s in summary],
        "</ul></section>",
        extra_html,
        "<section id='figures'><h2>Figures</h2>",
    ]
    for i, (caption, fig) in enumerate(figs):
        inc = ("cdn" if plotlyjs == "cdn" else True) if i == 0 else False
        fig.update_layout(template="plotly_white")
        if fig.layout.height is None:
            fig.update_layout(height=420)
        div = fig.to_html(full_html=False, include_plotlyjs=inc, div_id=f"fig-{i}",
                          config={"displaylogo": False})  # fmt: skip
        parts.append(f"<figure class='fig'>{div}<figcaption>{html.escape(caption)}"
                     "</figcaption></figure>")  # fmt: skip
    parts.append("</section><section id='tables'><h2>Key tables</h2>")
    for name in ("accuracy", "effective_depth", "exit_rules", "ablation"):
        if name in tables and len(tables[name]):
            parts.append(f"<h3>{name}</h3>{_html_table(tables[name])}")
    parts.append("<h3>columns of every table</h3><ul>")
    for name, cols in TABLE_COLUMNS.items():
        if name in tables:
            desc = "; ".join(f"<code>{c}</code>: {html.escape(d)}" for c, d in cols.items())
            parts.append(f"<li><b>{name}</b>.parquet / .csv — {desc}</li>")
    parts.append("</ul></section><section id='run'><h2>Run</h2><pre>")
    facts = {k: meta[k] for k in meta if k not in ("columns", "train_configs")}
    parts.append(html.escape(json.dumps(facts, indent=1, default=str)))
    parts.append("</pre></section></body></html>")
    return "\n".join(parts)
