"""Experts: which routed experts each token picks at each loop, and how routing changes by loop."""

from __future__ import annotations

import streamlit as st

from app import figures, state
from app.sidebar import example_index
from probes import plots
from probes.routing import expert_load, expert_visits, overlap_matrix, router_overlap

sel = state.current()
decode = state.decoder(sel)
b = example_index(sel)
tr = state.trace_for(*sel.key, sel.ids, sel.n_loops)
cfg = state.model_for(sel.directory).cfg
E, k = cfg.n_experts, cfg.n_experts_per_tok

st.header("Experts")
st.caption(
    f"{E} routed experts, top-{k} per token (shared experts always fire and are left out); "
    f"{len(sel.ids)} example(s) × {len(sel.ids[0])} tokens · {tr.n_loops} loops"
)
visits = expert_visits(tr["expert_ids"], E, tr["expert_weights"], tr.positions)
cols = st.columns(k)
for slot, col in enumerate(cols):
    grid = plots.router_grid(
        visits, batch=b, slot=slot, title=f"Expert in routing slot {slot} (0 = highest score)"
    )
    figures.colours(grid, "Turbo", zmin=-0.5, zmax=E - 0.5)
    grid.update_traces(texttemplate="e%{z}", colorbar={"tickvals": list(range(E))})
    col.plotly_chart(figures.token_axis(grid, sel.ids[b], decode), key=f"experts_slot_{slot}")

if tr.n_loops < 2:
    st.info("Router overlap needs at least 2 loops.")
else:
    metric = st.radio(
        "Overlap metric", ["overlap_at_k", "jaccard"], horizontal=True, key="ov_metric"
    )
    overlap = router_overlap(tr["expert_ids"], E)
    baseline = float(overlap[f"random_{metric}"].iloc[0])
    fig = plots.loop_loop_heatmap(
        overlap_matrix(overlap, metric),
        title=f"Router {metric} between loops (mean over tokens); random baseline {baseline:.3f}",
    )
    figures.colours(fig, zmin=0.0, zmax=1.0, values=True)
    figures.note(
        fig, f"Two independent uniform top-{k} choices of {E} experts give {baseline:.3f}."
    )
    st.plotly_chart(figures.loop_axes(fig), key="experts_overlap")
load = plots.load_per_loop(expert_load(tr["expert_ids"], E), title="Expert load per loop")
st.plotly_chart(figures.style(load), key="experts_load")
