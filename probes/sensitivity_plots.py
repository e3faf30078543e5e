"""Figures of dose-response (sensitivity) curves and per-seed answers, from their tables only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from probes.plots import _need


def sensitivity_figure(curve: pd.DataFrame, *, family: str | None = None) -> go.Figure:
    """Standardized response (mean response × direction / spread) against the dose's effect on
    the output (median KL at the answer), one line per metric, from a
    :func:`probes.sensitivity.sensitivity_curve` table; the line y = 1 is the spread a metric
    must clear, filled markers are detected doses. Metrics with zero spread (exact within-model
    contrasts) are drawn at the top of the axis, labelled "∞"."""
    c = _need(curve, ["family", "metric", "dose", "standardized", "detects", "output_kl"],
              "sensitivity_figure")  # fmt: skip
    if family is not None:
        c = c[c.family == family]
    finite = c.standardized[np.isfinite(c.standardized)]
    cap = max(3.0, float(finite.max()) * 1.2 if len(finite) else 3.0)
    fig = go.Figure()
    for metric, g in c.sort_values("dose").groupby("metric", sort=True):
        y = g.standardized.clip(upper=cap).where(np.isfinite(g.standardized), cap)
        fig.add_trace(go.Scatter(
            x=g.output_kl.clip(lower=1e-8), y=y, mode="lines+markers", name=metric,
            marker={"symbol": ["circle" if d else "circle-open" for d in g.detects], "size": 9},
            customdata=np.stack([g.dose, g.standardized], axis=-1),
            hovertemplate=(f"{metric}<br>dose %{{customdata[0]}}<br>output KL %{{x:.3g}}<br>"
                           "response / spread %{customdata[1]:.3g}<extra></extra>")))  # fmt: skip
    fig.add_hline(y=1.0, line_dash="dash", line_color="#777",
                  annotation_text="spread (seed-to-seed SD)")  # fmt: skip
    fig.update_layout(
        title="Sensitivity: does each metric separate from its spread as the planted effect grows?",
        xaxis={"type": "log", "title": "planted dose's effect on the output (KL at the answer)",
               "exponentformat": "power"},
        yaxis={"title": f"response / spread (∞ drawn at {cap:.3g})"},
        legend={"title": "metric (filled: detected)"}, height=480)  # fmt: skip
    return fig


def seed_dots_figure(uses: pd.DataFrame, *, threshold: float | None = None) -> go.Figure:
    """Per seed and arm, the KL at the answer when every loop's LoRA row is collapsed to the mean
    (a ``uses.csv`` table of the LoRA study: ``seed, arm, kl, uses_loop_specific_lora``), log
    scale; filled dots are models classified as using loop-specific LoRA, the dashed line the
    materiality threshold. LoRA-off models sit at exactly 0 (drawn at the axis floor)."""
    u = _need(uses, ["seed", "arm", "kl", "uses_loop_specific_lora"], "seed_dots_figure")
    floor = 1e-9
    fig = go.Figure()
    for arm, color in (("on", "#d62728"), ("off", "#1f77b4")):
        g = u[u.arm == arm].sort_values("seed")
        if g.empty:
            continue
        fig.add_trace(go.Scatter(
            x=[f"s{s}" for s in g.seed], y=g.kl.clip(lower=floor), mode="markers",
            name=f"LoRA {arm}", marker={"color": color, "size": 11, "symbol": [
                "circle" if x else "circle-open" for x in g.uses_loop_specific_lora]},
            customdata=g.kl, hovertemplate="%{x}: KL %{customdata:.3g}<extra></extra>"))  # fmt: skip
    if threshold is not None:
        fig.add_hline(y=threshold, line_dash="dash", line_color="#777",
                      annotation_text=f"material (KL {threshold:g})")  # fmt: skip
    fig.update_layout(
        title="Per seed: what collapsing every loop's LoRA row to the mean costs the answer",
        xaxis_title="seed", yaxis={"type": "log", "title": "KL at the answer (0 drawn at 1e-9)",
                                   "exponentformat": "power"}, height=420)  # fmt: skip
    return fig


def dose_figure(values: pd.DataFrame, metric: str) -> go.Figure:
    """One unit's (or several units') `metric` against the dose, with the output effect on a
    second axis, from a :func:`mythos_lens.dose.dose_response` table (``dose, metric, value``,
    optionally ``unit``)."""
    v = _need(values, ["dose", "metric", "value"], "dose_figure")
    v = v if "unit" in v else v.assign(unit="model")
    fig = go.Figure()
    for unit, g in v.groupby("unit", sort=True):
        for m, axis, dash in ((metric, "y", "solid"), ("output_kl", "y2", "dot")):
            s = g[g.metric == m].sort_values("dose")
            fig.add_trace(go.Scatter(x=s.dose, y=s.value, yaxis=axis, mode="lines+markers",
                                     name=f"{unit}: {m}", line={"dash": dash}))  # fmt: skip
    fig.update_layout(
        title=f"Dose-response: {metric} and the output effect", xaxis_title="dose k",
        yaxis={"title": metric}, height=420,
        yaxis2={"title": "output KL to dose 0", "overlaying": "y", "side": "right",
                "anchor": "x"})  # fmt: skip
    return fig
