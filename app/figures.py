"""Presentation on top of ``probes.plots``: readable token labels, hover text, colour ranges.

No statistic is computed here. The figures come from ``probes.plots`` builders; these helpers
only relabel axes with the task's token names, attach the lens's top tokens as hover text, and
set colour scales. ``bars`` draws a probe table that ``probes.plots`` has no builder for.
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


def style(fig: go.Figure, height: int = HEIGHT) -> go.Figure:
    """Compact layout shared by every chart of the app."""
    two_lines = "<br>" in (fig.layout.title.text or "")
    fig.update_layout(
        height=height,
        margin={"l": 50, "r": 20, "t": 64 if two_lines else 40, "b": 40},
        title_font_size=14,
    )
    return fig


def token_axis(
    fig: go.Figure, ids: Sequence[int], decode: Decode, output_row: int | None = None
) -> go.Figure:
    """Replace numeric positions on the x axis of a token × loop heatmap by decoded tokens, and
    loop numbers on the y axis by ``loop <t>`` (row `output_row`, if given, by ``output``);
    loop 0 on top."""
    for tr in fig.data:
        tr.x = token_labels([ids[int(p)] for p in tr.x], decode)
        tr.y = ["output" if int(t) == output_row else f"loop {int(t)}" for t in tr.y]
    fig.update_xaxes(title=None)
    fig.update_yaxes(title=None, autorange="reversed")
    return style(fig)


def top_token_hover(
    fig: go.Figure, table: pd.DataFrame, decode: Decode, value: str, k: int = 5
) -> go.Figure:
    """Write each cell's top-1 token (decoded) into a lens heatmap and list its top ``k`` tokens
    on hover. ``table``: the ``lens_table`` rows of the sequence the heatmap shows."""
    tops = [c for c in (f"top_{j}" for j in range(1, k + 1)) if c in table.columns]
    names = table.pivot(index="loop", columns="pos", values="top_1")
    words = table.assign(
        words=[" ".join(decode(int(t)) for t in row) for row in table[tops].to_numpy()]
    ).pivot(index="loop", columns="pos", values="words")
    text = np.vectorize(lambda t: decode(int(t)), otypes=[object])(names.to_numpy())
    fig.update_traces(
        text=text,
        texttemplate="%{text}",
        customdata=words.to_numpy(dtype=object),
        hovertemplate="%{x} · %{y}<br>" + value + " = %{z:.3g}<br>top tokens: %{customdata}"
        "<extra></extra>",
    )
    return fig


def colours(
    fig: go.Figure,
    colorscale: str = "Viridis",
    zmin: float | None = None,
    zmax: float | None = None,
    reverse: bool = False,
    values: bool = False,
) -> go.Figure:
    """Colour scale and range of every heatmap trace; ``values`` prints each cell's value."""
    fig.update_traces(
        colorscale=colorscale,
        zmin=zmin,
        zmax=zmax,
        reversescale=reverse,
        colorbar={"tickformat": ".3~g"},
    )
    if values:
        fig.update_traces(texttemplate="%{z:.2f}")
    return fig


def loop_axes(fig: go.Figure) -> go.Figure:
    """``loop <t>`` tick labels on both axes of a loop × loop heatmap."""
    for tr in fig.data:
        tr.x = [f"loop {int(t)}" for t in tr.x]
        tr.y = [f"loop {int(t)}" for t in tr.y]
    fig.update_xaxes(title=None)
    fig.update_yaxes(title=None)
    return style(fig)


def note(fig: go.Figure, text: str) -> go.Figure:
    """A second, smaller title line."""
    fig.update_layout(title_text=f"{fig.layout.title.text}<br><sup>{text}</sup>")
    return fig


def bars(table: pd.DataFrame, x: str, title: str, y_title: str) -> go.Figure:
    """Grouped bars of a tidy ``<x>, metric, value`` table (e.g. ``ablation_effects``)."""
    fig = go.Figure()
    for metric, d in table.groupby("metric", sort=False):
        fig.add_trace(go.Bar(x=d[x].astype(str).tolist(), y=d["value"].to_numpy(), name=metric))
    fig.update_layout(barmode="group", title=title, xaxis_title=x, yaxis_title=y_title)
    return style(fig)
