"""Experts: which routed experts each token picks at each loop, and how routing changes by loop."""

from __future__ import annotations

import streamlit as st

from app import figures, state
from app.sidebar import example_index
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
visits = expert_visits(
    tr["expert_ids"][:, b : b + 1], E, tr["expert_weights"][:, b : b + 1], tr.positions
)
st.plotly_chart(figures.expert_grid(visits, sel.ids[b], decode, E), key="experts_grid")

if tr.n_loops < 2:
    st.info("Router overlap needs at least 2 loops.")
else:
    metric = st.radio(
        "Overlap metric", ["overlap_at_k", "jaccard"], horizontal=True, key="ov_metric"
    )
    overlap = router_overlap(tr["expert_ids"], E)
    baseline = float(overlap[f"random_{metric}"].iloc[0])
    st.plotly_chart(
        figures.loop_loop_heatmap(
            overlap_matrix(overlap, metric),
            f"Router {metric} between loops (mean over tokens); random baseline {baseline:.3f}",
            note=f"Two independent uniform top-{k} choices of {E} experts give {baseline:.3f}.",
        ),
        key="experts_overlap",
    )
st.plotly_chart(
    figures.load_bars(expert_load(tr["expert_ids"], E), "Expert load per loop"),
    key="experts_load",
)
