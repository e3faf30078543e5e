"""Plotly figures for the pages: each one only lays out columns of a probes table.

No statistic is computed here: values come from ``probes`` tables; these helpers select rows,
pivot them onto a grid and attach readable labels (token names from the task's vocabulary).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

Decode = Callable[[int], str]
HEIGHT = 340


def token_labels(ids: Sequence[int], decode: Decode) -> list[str]:
    """Axis labels ``"<position>:<token>"`` for one sequence."""
    return [f"{p}:{decode(int(t))}" for p, t in enumerate(ids)]


def _layout(fig: go.Figure, title: str, height: int = HEIGHT) -> go.Figure:
    fig.update_layout(
        title={"text": title, "font": {"size": 14}},
        height=height,
        margin={"l": 50, "r": 20, "t": 40, "b": 40},
    )
    return fig


def token_loop_heatmap(
    table: pd.DataFrame,
    value: str,
    ids: Sequence[int],
    decode: Decode,
    title: str,
    *,
    k: int = 5,
    colorscale: str = "Viridis",
    reverse: bool = False,
) -> go.Figure:
    """Token × loop heatmap of one column of a ``probes.lens.lens_table`` (one example's rows).

    Cells show the lens's top-1 token; hovering lists its top ``k`` tokens, decoded.
    """
    loops = sorted(table["loop"].unique())
    pos = sorted(table["pos"].unique())
    t = table.set_index(["loop", "pos"]).sort_index()
    z = t[value].unstack("pos").reindex(index=loops, columns=pos).to_numpy(dtype=float)
    tops = [c for c in (f"top_{j}" for j in range(1, k + 1)) if c in t.columns]
    names = np.empty((len(loops), len(pos)), dtype=object)
    hover = np.empty((len(loops), len(pos)), dtype=object)
    for (loop, p), row in t.iterrows():
        i, j = loops.index(loop), pos.index(p)
        toks = [decode(int(row[c])) for c in tops]
        names[i, j] = toks[0] if toks else ""
        hover[i, j] = " ".join(toks)
    x = token_labels([ids[p] for p in pos], decode)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=x,
            y=[f"loop {i}" for i in loops],
            text=names,
            texttemplate="%{text}",
            customdata=hover,
            colorscale=colorscale,
            reversescale=reverse,
            hovertemplate="%{x} · %{y}<br>" + value + " = %{z:.3g}<br>top: %{customdata}"
            "<extra></extra>",
            colorbar={"title": {"text": value}},
        )
    )
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, title)


def rank_lines(frames: dict[str, pd.DataFrame], rank_col: str, title: str) -> go.Figure:
    """Rank of one token per loop, one line per lens (frames: lens name -> rows of one token)."""
    fig = go.Figure()
    for lens, df in frames.items():
        d = df.sort_values("loop")
        fig.add_trace(go.Scatter(x=d["loop"], y=d[rank_col], mode="lines+markers", name=lens))
    fig.update_xaxes(title="loop", dtick=1)
    fig.update_yaxes(title="rank (0 = top-1)", rangemode="tozero")
    return _layout(fig, title)


def loop_loop_heatmap(
    table: pd.DataFrame,
    title: str,
    *,
    zmin: float | None = 0.0,
    zmax: float | None = 1.0,
    colorscale: str = "Viridis",
    note: str | None = None,
) -> go.Figure:
    """Loop × loop matrix from a tidy ``loop_a, loop_b, value`` table."""
    m = table.pivot_table(index="loop_a", columns="loop_b", values="value", dropna=False)
    fig = go.Figure(
        go.Heatmap(
            z=m.to_numpy(dtype=float),
            x=[f"loop {i}" for i in m.columns],
            y=[f"loop {i}" for i in m.index],
            zmin=zmin,
            zmax=zmax,
            colorscale=colorscale,
            texttemplate="%{z:.2f}",
            hovertemplate="%{y} vs %{x}: %{z:.3f}<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed")
    if note:
        fig.add_annotation(
            text=note, showarrow=False, xref="paper", yref="paper", x=0, y=-0.18, xanchor="left"
        )
    return _layout(fig, title)


def per_loop_box(table: pd.DataFrame, title: str, y_title: str, log: bool = False) -> go.Figure:
    """Distribution over tokens of a ``loop, metric, value`` table: one box per loop and metric."""
    fig = go.Figure()
    for metric, d in table.groupby("metric", sort=False):
        fig.add_trace(go.Box(x=d["loop"], y=d["value"], name=str(metric), boxmean=True))
    fig.update_layout(boxmode="group")
    fig.update_xaxes(title="loop", dtick=1)
    fig.update_yaxes(title=y_title, type="log" if log else "linear")
    return _layout(fig, title)


def per_loop_lines(
    table: pd.DataFrame, title: str, y_title: str, colour: str = "metric"
) -> go.Figure:
    """Lines of a tidy ``loop, <colour>, value`` table (one line per value of ``colour``)."""
    fig = go.Figure()
    for name, d in table.groupby(colour, sort=False):
        d = d.sort_values("loop")
        fig.add_trace(go.Scatter(x=d["loop"], y=d["value"], mode="lines+markers", name=str(name)))
    fig.update_xaxes(title="loop", dtick=1)
    fig.update_yaxes(title=y_title)
    return _layout(fig, title)


def expert_grid(
    visits: pd.DataFrame, ids: Sequence[int], decode: Decode, n_experts: int
) -> go.Figure:
    """Token × loop grid of the experts each token chose (one example's ``expert_visits`` rows):
    one heatmap row-block per expert, cell = the gate weight it got (blank when not chosen)."""
    loops = sorted(visits["loop"].unique())
    pos = sorted(visits["pos"].unique())
    x = token_labels([ids[p] for p in pos], decode)
    fig = go.Figure()
    chosen = visits.set_index(["loop", "pos"]).sort_index()
    text = np.empty((len(loops), len(pos)), dtype=object)
    for (loop, p), rows in chosen.groupby(level=[0, 1]):
        text[loops.index(loop), pos.index(p)] = " ".join(
            f"e{int(e)}" for e in sorted(rows["expert"])
        )
    y_labels, z, hover = [], [], []
    for e in range(n_experts):
        sub = visits[visits["expert"] == e]
        w = sub.pivot_table(index="loop", columns="pos", values="weight").reindex(
            index=loops, columns=pos
        )
        for i, loop in enumerate(loops):
            y_labels.append(f"e{e} · loop {loop}")
            z.append(w.loc[loop].to_numpy(dtype=float))
            hover.append(text[i])
    fig.add_trace(
        go.Heatmap(
            z=np.array(z),
            x=x,
            y=y_labels,
            customdata=np.array(hover, dtype=object),
            zmin=0,
            zmax=1,
            colorscale="Blues",
            hovertemplate="%{x} · %{y}<br>gate weight %{z:.2f}<br>chosen: %{customdata}"
            "<extra></extra>",
            colorbar={"title": {"text": "gate weight"}},
        )
    )
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, "Experts chosen per token and loop (blank = not chosen)", 120 + 18 * len(z))


def load_bars(load: pd.DataFrame, title: str) -> go.Figure:
    """Stacked bars of ``probes.routing.expert_load``: fraction of routing slots per expert."""
    fig = go.Figure()
    for e, d in load.groupby("expert"):
        fig.add_trace(go.Bar(x=d["loop"], y=d["fraction"], name=f"e{e}"))
    fig.update_layout(barmode="stack")
    fig.update_xaxes(title="loop", dtick=1)
    fig.update_yaxes(title="share of routing slots", range=[0, 1])
    return _layout(fig, title)


def loop_map(table: pd.DataFrame, value: str, ids: Sequence[int], decode: Decode, title: str,
             zmin: float | None = 0.0, zmax: float | None = 1.0) -> go.Figure:  # fmt: skip
    """Token × loop heatmap of a tidy ``loop, pos, value`` table (e.g. ACT halting)."""
    m = table.pivot_table(index="loop", columns="pos", values=value, dropna=False)
    fig = go.Figure(
        go.Heatmap(
            z=m.to_numpy(dtype=float),
            x=token_labels([ids[p] for p in m.columns], decode),
            y=[f"loop {i}" for i in m.index],
            zmin=zmin,
            zmax=zmax,
            colorscale="Magma",
            hovertemplate="%{x} · %{y}: %{z:.3g}<extra></extra>",
            colorbar={"title": {"text": value}},
        )
    )
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, title)


def bars(table: pd.DataFrame, x: str, title: str, y_title: str) -> go.Figure:
    """Grouped bars of a tidy ``<x>, metric, value`` table."""
    fig = go.Figure()
    for metric, d in table.groupby("metric", sort=False):
        fig.add_trace(go.Bar(x=d[x].astype(str), y=d["value"], name=str(metric)))
    fig.update_layout(barmode="group")
    fig.update_xaxes(title=x)
    fig.update_yaxes(title=y_title)
    return _layout(fig, title)
