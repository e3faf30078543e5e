"""Plotly figures for the causal instruments: effective depth per loop, attention of one query
over the keys per loop, and loop × position patching maps. Tables in, figures out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mythos_lens.errors import MythosLensError


def _need(df: object, cols: Sequence[str], what: str) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame) or df.empty:
        raise MythosLensError(f"{what} got no table", "a non-empty DataFrame")
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise MythosLensError(f"{what}: table lacks columns {missing}", f"columns {list(cols)}")
    return df


def depth_summary(act_share: pd.DataFrame, stop_effect: pd.DataFrame) -> pd.DataFrame:
    """Per loop, means over tokens of an ``act_share_table`` and a ``stop_effect_table`` (the
    same tokens): ``loop, act_share, act_weight, kl_full_exit, same_top1`` and, when the stop
    table has targets, ``exit_accuracy`` and ``full_accuracy``."""
    _need(act_share, ["loop", "share", "act_weight"], "depth_summary")
    _need(stop_effect, ["loop", "kl_full_exit", "same_top1"], "depth_summary")
    a = (
        act_share.groupby("loop")[["share", "act_weight"]]
        .mean()
        .rename(columns={"share": "act_share"})
    )
    cols = ["kl_full_exit", "same_top1"]
    cols += [c for c in ("exit_correct", "full_correct") if c in stop_effect.columns]
    s = (
        stop_effect.groupby("loop")[cols]
        .mean()
        .rename(columns={"exit_correct": "exit_accuracy", "full_correct": "full_accuracy"})
    )
    return a.join(s, how="outer").reset_index()


def depth_figure(summary: pd.DataFrame, matters: pd.DataFrame, title: str) -> go.Figure:
    """Two panels per loop: the ACT weight share and the share of tokens that need the loop
    (bars, loops that do not matter greyed), and what stopping after the loop does (KL to the
    full output, log scale; exit accuracy beside the full run's when known)."""
    _need(summary, ["loop", "act_share", "kl_full_exit"], "depth_figure")
    _need(matters, ["loop", "share_needing", "matters"], "depth_figure")
    m = summary.merge(matters, on="loop", how="left")
    colour = np.where(m["matters"].fillna(False).to_numpy(bool), "#1f77b4", "#bbbbbb")
    fig = make_subplots(rows=1, cols=2, subplot_titles=[
        "ACT weight share / tokens needing the loop", "stopping after loop t"])  # fmt: skip
    fig.add_trace(go.Bar(x=m["loop"], y=m["act_share"], name="ACT weight share",
                         marker_color=colour), row=1, col=1)  # fmt: skip
    fig.add_trace(go.Scatter(x=m["loop"], y=m["share_needing"], name="tokens needing loop t",
                             mode="lines+markers", line={"color": "#d62728"}), row=1, col=1)  # fmt: skip
    kl = m["kl_full_exit"].clip(lower=1e-12)
    fig.add_trace(go.Scatter(x=m["loop"], y=kl, name="KL(full ‖ exit t), nats",
                             mode="lines+markers"), row=1, col=2)  # fmt: skip
    fig.update_yaxes(type="log", row=1, col=2)
    if "exit_accuracy" in m.columns:
        fig.add_trace(go.Scatter(x=m["loop"], y=m["exit_accuracy"], name="accuracy if stopped",
                                 mode="lines+markers", yaxis="y3"))  # fmt: skip
        fig.update_layout(yaxis3={"overlaying": "y2", "side": "right", "range": [0, 1.05],
                                  "title": "accuracy"})  # fmt: skip
    fig.update_xaxes(title_text="loop t", dtick=1)
    fig.update_layout(title=title, legend={"orientation": "h", "y": -0.25})
    return fig


def attention_figure(
    weights: np.ndarray,
    rows: Sequence[str],
    keys: Sequence[str],
    marked: Sequence[int] = (),
    title: str = "attention",
) -> go.Figure:
    """Heatmap of attention weights ``[row, key]`` (rows: heads or loops), key positions in
    `marked` outlined (e.g. the key/value pair a hop must read)."""
    w = np.asarray(weights, dtype=float)
    if w.ndim != 2 or w.shape != (len(rows), len(keys)):
        raise MythosLensError(f"weights of shape {w.shape}", f"({len(rows)}, {len(keys)})")
    fig = go.Figure(go.Heatmap(z=w, x=list(keys), y=list(rows), zmin=0, zmax=1,
                               colorscale="Blues", colorbar={"title": "weight"},
                               hovertemplate="%{y} → %{x}: %{z:.3f}<extra></extra>"))  # fmt: skip
    for k in marked:
        fig.add_vrect(x0=k - 0.5, x1=k + 0.5, line={"color": "#d62728", "width": 2},
                      fillcolor="rgba(0,0,0,0)")  # fmt: skip
    fig.update_xaxes(type="category")
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_layout(title=title)
    return fig


def patch_figure(
    sweep: pd.DataFrame, value: str = "restored", title: str | None = None
) -> go.Figure:
    """Loop × position heatmap of one column of a ``probes.patching.sweep_table``."""
    _need(sweep, ["loop", "pos", value], "patch_figure")
    grid = sweep.pivot_table(index="loop", columns="pos", values=value, aggfunc="first")
    scale = "RdBu" if value in ("restored", "logit_diff", "delta_kl") else "Viridis"
    mid = 0.0 if scale == "RdBu" else None
    fig = go.Figure(go.Heatmap(z=grid.to_numpy(float), x=grid.columns.to_numpy(),
                               y=grid.index.to_numpy(), colorscale=scale, zmid=mid,
                               reversescale=scale == "RdBu", colorbar={"title": value},
                               hovertemplate="loop %{y}, pos %{x}: %{z:.3g}<extra></extra>"))  # fmt: skip
    fig.update_layout(title=title or f"patching: {value}", xaxis_title="position",
                      yaxis_title="loop")  # fmt: skip
    fig.update_yaxes(autorange="reversed")
    return fig
