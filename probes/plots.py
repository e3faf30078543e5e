"""Plot builders: tidy tables from the probes -> ``plotly.graph_objects.Figure``.

Each builder takes a table produced by a probe (documented per function), selects what it draws
from that table only, and returns a figure whose trace data are exactly the table's values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from mythos_lens.errors import MythosLensError, check_int
from probes._checks import as_tensor, check_ndim


def _need(df: Any, cols: list[str], what: str) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise MythosLensError(f"{what} got a {type(df).__name__}", "a pandas DataFrame")
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise MythosLensError(f"{what}: table lacks columns {missing}", f"columns {cols}")
    if df.empty:
        raise MythosLensError(f"{what}: empty table", "at least one row")
    return df


def _values(df: pd.DataFrame, metric: str, what: str) -> pd.DataFrame:
    """Rows of one metric with a ``value`` column: from a long table (``metric``/``value``
    columns) or from a wide one where ``metric`` is a column name."""
    if metric in df.columns:
        return df.assign(value=df[metric].astype("float64"))
    if "metric" in df.columns and "value" in df.columns:
        sub = df[df["metric"] == metric]
        if sub.empty:
            raise MythosLensError(
                f"{what}: metric {metric!r} not in the table",
                f"one of {sorted(df.metric.unique())}",
            )
        return sub
    raise MythosLensError(f"{what}: no column or metric {metric!r}", "a probe table")


def token_loop_heatmap(
    df: pd.DataFrame, metric: str, *, batch: int = 0, title: str | None = None
) -> go.Figure:
    """Token × loop heatmap of one metric for one sequence.

    Takes a table with ``loop, batch, pos`` and either a ``metric`` column named ``metric``
    (e.g. ``lens_table``'s ``target_rank``) or long ``metric, value`` rows (``lens_long``,
    ``step_table``, ``lens_kl_table``). z[i, j] = value at loop ``y[i]``, position ``x[j]``;
    missing cells are NaN.
    """
    _need(df, ["loop", "batch", "pos"], "token_loop_heatmap")
    sub = _values(df, metric, "token_loop_heatmap")
    sub = sub[sub["batch"] == batch]
    if sub.empty:
        raise MythosLensError(f"token_loop_heatmap: no rows for batch {batch}", "an existing batch")
    grid = sub.pivot_table(index="loop", columns="pos", values="value", aggfunc="first")
    fig = go.Figure(
        go.Heatmap(
            z=grid.to_numpy(dtype=float),
            x=grid.columns.to_numpy(),
            y=grid.index.to_numpy(),
            colorbar={"title": metric},
            hovertemplate="pos %{x}<br>loop %{y}<br>" + metric + " %{z}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title or f"{metric} per token and loop (sequence {batch})",
        xaxis_title="position",
        yaxis_title="loop",
    )
    return fig


def share_heatmap(
    df: pd.DataFrame, index: str, columns: str, values: str, *, title: str, xaxis_title: str,
    yaxis_title: str,
) -> go.Figure:  # fmt: skip
    """Heatmap of a share in [0, 1] (colour scale fixed to 0 … 1, each cell labelled): z[i, j] =
    ``values`` at ``index`` ``y[i]`` and ``columns`` ``x[j]`` of `df` (one row per cell)."""
    _need(df, [index, columns, values], "share_heatmap")
    grid = df.pivot(index=index, columns=columns, values=values)
    fig = go.Figure(go.Heatmap(z=grid.to_numpy(float), x=grid.columns, y=grid.index, zmin=0,
                               zmax=1, texttemplate="%{z:.2f}", colorbar={"title": "share"}))  # fmt: skip
    fig.update_layout(title=title, xaxis_title=xaxis_title, yaxis_title=yaxis_title)
    return fig


def loop_loop_heatmap(
    df: pd.DataFrame,
    *,
    metric: str | None = None,
    site: str | None = None,
    title: str | None = None,
) -> go.Figure:
    """Loop × loop heatmap from a ``loop_a, loop_b, value`` table (``cka_table``,
    ``overlap_matrix``, ``lora_scale_cosine``), optionally filtered on ``metric`` / ``site``.
    z[i, j] = value at loop_a ``y[i]``, loop_b ``x[j]``."""
    _need(df, ["loop_a", "loop_b", "value"], "loop_loop_heatmap")
    sub = df
    if metric is not None:
        sub = sub[sub["metric"] == metric]
    if site is not None:
        sub = sub[sub["site"] == site]
    if sub.empty:
        raise MythosLensError(f"no rows for metric={metric!r} site={site!r}", "a matching subset")
    if sub.duplicated(["loop_a", "loop_b"]).any():
        raise MythosLensError(
            "several values per loop pair (mixed metrics or sites)", "metric= / site= to pick one"
        )
    grid = sub.pivot(index="loop_a", columns="loop_b", values="value")
    label = metric or (str(sub["metric"].iloc[0]) if "metric" in sub.columns else "value")
    fig = go.Figure(
        go.Heatmap(
            z=grid.to_numpy(dtype=float),
            x=grid.columns.to_numpy(),
            y=grid.index.to_numpy(),
            colorbar={"title": label},
        )
    )
    fig.update_layout(
        title=title or f"{label}{f' ({site})' if site else ''} between loops",
        xaxis_title="loop",
        yaxis_title="loop",
        yaxis_autorange="reversed",
    )
    return fig


def rank_trajectories(
    df: pd.DataFrame, rank: str = "target_rank", *, batch: int = 0, title: str | None = None
) -> go.Figure:
    """One line per token of sequence ``batch``: ``rank`` (a ``lens_table`` rank column:
    final_rank, target_rank or control_rank) against loop. Trace names are ``pos <p>``."""
    _need(df, ["loop", "batch", "pos", rank], "rank_trajectories")
    sub = df[df["batch"] == batch].sort_values(["pos", "loop"])
    if sub.empty:
        raise MythosLensError(f"rank_trajectories: no rows for batch {batch}", "an existing batch")
    fig = go.Figure()
    for p, g in sub.groupby("pos", sort=True):
        fig.add_trace(
            go.Scatter(
                x=g["loop"].to_numpy(), y=g[rank].to_numpy(), mode="lines+markers", name=f"pos {p}"
            )
        )
    fig.update_layout(
        title=title or f"{rank} per loop (sequence {batch}; 0 = top-1)",
        xaxis_title="loop",
        yaxis_title=rank,
        yaxis_type="log" if (sub[rank] > 0).all() else "linear",
    )
    return fig


def pca_orbit_table(h: Any, n_components: int = 2, positions: Any = None) -> pd.DataFrame:
    """Project every token's latent path onto the top principal components.

    Args:
        h: ``[loop, batch, pos, d]`` states; PCA is fitted on all (loop, token) rows, centred.
        n_components: number of components kept.
        positions: optional ``[pos]`` sequence positions for the ``pos`` column.

    Returns ``loop, batch, pos, pc1 … pcK`` and ``explained_var_k`` columns (fraction of total
    variance per component). Computed with numpy SVD — deterministic; each component's sign is
    fixed so that its largest-magnitude loading is positive.
    """
    x = as_tensor(h, "h")
    check_ndim(x, 4, "h", "[loop, batch, pos, d]")
    L, B, P, d = x.shape
    k = check_int("n_components", n_components, 1)
    if k > min(L * B * P, d):
        raise MythosLensError(f"n_components={k}", f"<= min(rows={L * B * P}, d={d})")
    X = x.reshape(-1, d).numpy()
    X = X - X.mean(0, keepdims=True)
    _, s, vt = np.linalg.svd(X, full_matrices=False)
    vt = vt[:k]
    signs = np.sign(vt[np.arange(k), np.abs(vt).argmax(1)])
    vt = vt * signs[:, None]
    Z = X @ vt.T
    var = s**2
    frac = var[:k] / var.sum() if var.sum() > 0 else np.full(k, np.nan)
    grids = np.meshgrid(np.arange(L), np.arange(B), np.arange(P), indexing="ij")
    df = pd.DataFrame({"loop": grids[0].ravel(), "batch": grids[1].ravel()})
    pos = np.arange(P) if positions is None else np.asarray(positions)
    if pos.shape != (P,):
        raise MythosLensError(f"positions has shape {pos.shape}", f"[{P}]")
    df["pos"] = pos[grids[2].ravel()]
    for j in range(k):
        df[f"pc{j + 1}"] = Z[:, j]
    for j in range(k):
        df[f"explained_var_{j + 1}"] = float(frac[j])
    return df


def pca_orbits(df: pd.DataFrame, *, batch: int | None = 0, title: str | None = None) -> go.Figure:
    """Latent paths in PC1–PC2 from :func:`pca_orbit_table`: one grey line per token through its
    loops (trace name ``b<batch> pos <p>``), and one marker trace coloured by loop (last trace)."""
    _need(df, ["loop", "batch", "pos", "pc1", "pc2"], "pca_orbits")
    sub = df if batch is None else df[df["batch"] == batch]
    if sub.empty:
        raise MythosLensError(f"pca_orbits: no rows for batch {batch}", "an existing batch")
    sub = sub.sort_values(["batch", "pos", "loop"])
    fig = go.Figure()
    for (b, p), g in sub.groupby(["batch", "pos"], sort=True):
        fig.add_trace(
            go.Scatter(
                x=g["pc1"].to_numpy(),
                y=g["pc2"].to_numpy(),
                mode="lines",
                line={"color": "lightgrey", "width": 1},
                name=f"b{b} pos {p}",
                showlegend=False,
            )
        )
    fig.add_trace(
        go.Scatter(
            x=sub["pc1"].to_numpy(),
            y=sub["pc2"].to_numpy(),
            mode="markers",
            marker={
                "color": sub["loop"].to_numpy(),
                "colorscale": "Viridis",
                "colorbar": {"title": "loop"},
                "size": 7,
            },  # fmt: skip
            name="states",
            text=[f"b{b} pos {p} loop {t}" for b, p, t in sub[["batch", "pos", "loop"]].to_numpy()],
        )
    )
    ev = [sub[c].iloc[0] for c in ("explained_var_1", "explained_var_2") if c in sub.columns]
    ax = [f"PC{i + 1}" + (f" ({ev[i]:.0%})" if i < len(ev) else "") for i in range(2)]
    fig.update_layout(
        title=title or "latent orbits across loops", xaxis_title=ax[0], yaxis_title=ax[1]
    )
    return fig


def router_grid(
    df: pd.DataFrame, *, batch: int = 0, slot: int = 0, title: str | None = None
) -> go.Figure:
    """Expert chosen in routing ``slot`` (0 = highest scoring) per loop × position for sequence
    ``batch``, from ``expert_visits``. z[i, j] = expert id at loop ``y[i]``, position ``x[j]``."""
    _need(df, ["loop", "batch", "pos", "slot", "expert"], "router_grid")
    sub = df[(df["batch"] == batch) & (df["slot"] == slot)]
    if sub.empty:
        raise MythosLensError(
            f"router_grid: no rows for batch {batch}, slot {slot}", "existing ones"
        )
    grid = sub.pivot(index="loop", columns="pos", values="expert")
    fig = go.Figure(
        go.Heatmap(
            z=grid.to_numpy(dtype=float),
            x=grid.columns.to_numpy(),
            y=grid.index.to_numpy(),
            colorscale="Turbo",
            colorbar={"title": "expert"},
        )
    )
    fig.update_layout(
        title=title or f"routed expert (slot {slot}) per token and loop (sequence {batch})",
        xaxis_title="position",
        yaxis_title="loop",
    )
    return fig


def load_per_loop(df: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Stacked bars of each expert's load ``fraction`` per loop, from ``expert_load``: one bar
    trace per expert (name ``expert <e>``), x = loop."""
    _need(df, ["loop", "expert", "fraction"], "load_per_loop")
    fig = go.Figure()
    for e, g in df.sort_values(["expert", "loop"]).groupby("expert", sort=True):
        fig.add_trace(
            go.Bar(x=g["loop"].to_numpy(), y=g["fraction"].to_numpy(), name=f"expert {e}")
        )
    fig.update_layout(
        barmode="stack", title=title or "expert load per loop", xaxis_title="loop",
        yaxis_title="fraction of routing slots",
    )  # fmt: skip
    return fig


def convergence_curves(
    df: pd.DataFrame, metrics: list[str] | None = None, *, title: str | None = None
) -> go.Figure:
    """Per loop median over tokens, with 25–75 % quantiles as error bars, of each metric of a
    long ``loop, metric, value`` table (``step_table``, ``lens_kl_table``). One trace per metric,
    named after it; NaN values are ignored. Without `metrics`, a metric with no finite value
    (e.g. ``cos_prev_step`` when only one loop ran) is left out; a requested one raises."""
    _need(df, ["loop", "metric", "value"], "convergence_curves")
    requested = metrics is not None
    metrics = metrics or list(dict.fromkeys(df["metric"]))
    fig = go.Figure()
    for m in metrics:
        sub = df[(df["metric"] == m) & df["value"].notna()]
        if sub.empty and not requested:
            continue
        if sub.empty:
            raise MythosLensError(
                f"convergence_curves: no values for {m!r}", "a metric in the table"
            )
        q = sub.groupby("loop")["value"].quantile([0.25, 0.5, 0.75]).unstack()
        fig.add_trace(
            go.Scatter(
                x=q.index.to_numpy(),
                y=q[0.5].to_numpy(),
                mode="lines+markers",
                name=m,
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": (q[0.75] - q[0.5]).to_numpy(),
                    "arrayminus": (q[0.5] - q[0.25]).to_numpy(),
                },
            )
        )
    if not fig.data:
        raise MythosLensError("convergence_curves: no finite value in the table", "some values")
    fig.update_layout(title=title or "convergence per loop (median, IQR)", xaxis_title="loop")
    return fig
