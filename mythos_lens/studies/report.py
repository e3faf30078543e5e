"""Figures and the HTML report of the LoRA study, drawn from its tables only."""

from __future__ import annotations

import html
from typing import Any

import pandas as pd

from mythos_lens.analysis.report import build_report

COLORS = {"on": "#d62728", "off": "#1f77b4"}


def paired_figure(models: pd.DataFrame, names: list[str]) -> Any:
    """One panel per endpoint in `names`: each seed's on and off value joined by a line."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    cols = 3
    fig = make_subplots(rows=-(-len(names) // cols), cols=cols, subplot_titles=names)
    for i, e in enumerate(names):
        w = models[models.measure == e].pivot(index="seed", columns="arm", values="value")
        r, c = divmod(i, cols)
        for seed, row in w.iterrows():
            fig.add_trace(go.Scatter(x=["off", "on"], y=[row.get("off"), row.get("on")],
                                     mode="lines+markers", line={"color": "#999", "width": 1},
                                     marker={"color": [COLORS["off"], COLORS["on"]]},
                                     name=f"seed {seed}", showlegend=False),
                          row=r + 1, col=c + 1)  # fmt: skip
    fig.update_layout(title="Every endpoint per seed pair: LoRA off → on", height=260 * (r + 1))
    return fig


def nulls_figure(nulls: pd.DataFrame) -> Any:
    """Each LoRA-on model's observed intervention effect beside its null (mean and 95th pct)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    on = nulls[nulls.arm == "on"]
    tests = list(dict.fromkeys(on.test))
    fig = make_subplots(rows=1, cols=max(1, len(tests)), subplot_titles=tests)
    for i, t in enumerate(tests, start=1):
        g = on[on.test == t].sort_values("seed")
        x = [f"s{s}" for s in g.seed]
        fig.add_trace(go.Scatter(x=x, y=g.observed, mode="markers", name="observed",
                                 marker={"color": COLORS["on"], "size": 9},
                                 showlegend=i == 1), row=1, col=i)  # fmt: skip
        fig.add_trace(go.Scatter(x=x, y=g.null_mean, mode="markers", name="null mean",
                                 marker={"color": "#777", "symbol": "line-ew-open", "size": 14},
                                 showlegend=i == 1), row=1, col=i)  # fmt: skip
        fig.add_trace(go.Scatter(x=x, y=g.null_q95, mode="markers", name="null 95th pct",
                                 marker={"color": "#bbb", "symbol": "triangle-up-open"},
                                 showlegend=i == 1), row=1, col=i)  # fmt: skip
    fig.update_layout(title="Within-model nulls (LoRA-on models): observed vs random rows",
                      height=380)  # fmt: skip
    return fig


def control_figure(control: pd.DataFrame, endpoint: str) -> Any:
    """The positive control on `endpoint`: planted distinct vs same rows, per size and seed."""
    import plotly.graph_objects as go

    fig = go.Figure()
    g = control[control.endpoint == endpoint]
    for size, gs in g.groupby("size"):
        w = gs.pivot(index="seed", columns="variant", values="value")
        for seed, row in w.iterrows():
            fig.add_trace(go.Scatter(x=[f"same ×{size:g}", f"distinct ×{size:g}"],
                                     y=[row.get("same"), row.get("distinct")],
                                     mode="lines+markers", line={"color": "#999", "width": 1},
                                     showlegend=False, name=f"seed {seed}"))  # fmt: skip
    fig.update_layout(title=f"Positive control on {endpoint}: LoRA-off models with planted rows",
                      yaxis_title=endpoint, height=380)  # fmt: skip
    return fig


def loops_figure(loops: pd.DataFrame) -> Any:
    """Accuracy of a run stopped after loop t, per model (which loops matter)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for ck, g in loops.groupby("checkpoint", sort=True):
        arm = g.arm.iloc[0]
        fig.add_trace(go.Scatter(x=g.loop, y=g.exit_accuracy, mode="lines+markers", name=ck,
                                 line={"color": COLORS[arm], "width": 1}))  # fmt: skip
    fig.update_layout(title="Which loops matter: accuracy of a run stopped after loop t",
                      xaxis_title="loop t", yaxis_title="accuracy", height=380)  # fmt: skip
    return fig


def lora_report(
    tables: dict[str, pd.DataFrame], verdict: dict[str, Any], meta: dict[str, Any], plotlyjs: str
) -> str:
    """The study's HTML page: verdict, endpoint table, figures, the other tables."""
    from probes.sensitivity_plots import seed_dots_figure, sensitivity_figure

    ep = tables["endpoints"]
    primary = verdict["primary"]["endpoint"]
    summary = [f"<b>Verdict</b>: {html.escape(verdict['statement'])}"]
    if "uses" in tables:  # design v2: the control is a dose curve in the on models
        ct = tables["control_tests"].rename(columns={"size": "dose"})
        control = ("Positive control: the primary against the on models' own learned row "
                   "differences scaled by k (x: the dose's effect on the output).",
                   sensitivity_figure(ct))  # fmt: skip
    else:
        control = ("Positive control (planted differentiation) on the primary endpoint.",
                   control_figure(tables["control"], primary))  # fmt: skip
    figs = [
        ("Each endpoint per seed pair (off → on).",
         paired_figure(tables["models"], list(ep.endpoint))),
        ("Within-model nulls: the observed effect of each LoRA-on model against its random "
         "permutations / equal-norm rows / equal-size moves.", nulls_figure(tables["nulls"])),
        control,
        ("Effective depth of every model.", loops_figure(tables["loops"])),
    ]  # fmt: skip
    if "uses" in tables:
        figs.insert(0, ("Which models use loop-specific LoRA (filled: material and beyond the "
                        "example-level null).", seed_dots_figure(
                            tables["uses"], threshold=verdict.get("materiality_kl"))))  # fmt: skip
    extra = "".join(
        f"<section id='{name}'><h2>{name}</h2>"
        + df.to_html(index=False, float_format=lambda x: f"{x:.4g}", border=0, classes="t")
        + "</section>"
        for name, df in (("endpoints", ep), ("control_tests", tables["control_tests"]),
                         ("pairs", tables["pairs"]), ("descriptives", tables["descriptives"]))
    )  # fmt: skip
    return build_report({}, meta, title="mythos-lens study: does depth-wise LoRA differentiate "
                        "iterations?", plotlyjs=plotlyjs, extra_html=extra, summary=summary,
                        figures=figs)  # fmt: skip
