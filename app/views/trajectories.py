"""Trajectories: what each loop step would predict — the exit lens (what a run stopped after step
t outputs), or the logit, coda and tuned lens of h_t — beside the model's actual output."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app import figures, state
from app.sidebar import example_index
from probes import plots

METRICS = {
    "top-1 probability (cells: top token)": ("top_1_prob", "Viridis", False),  # in [0, 1]
    "rank of the target (answer at the last position)": ("target_rank", "Viridis", True),
    "rank of the final prediction": ("final_rank", "Viridis", True),
    "KL(final ‖ lens), nats": ("kl_final_lens", "Magma", True),
    "entropy, nats": ("entropy", "Cividis", False),
}

sel = state.current()
decode = state.decoder(sel)
b = example_index(sel)
ids = sel.ids[b]
targets = state.next_token_targets(sel)

st.header("Trajectories")
st.caption(
    f"{sel.name} · {sel.n_loops} loops · example {b}: "
    + " ".join(decode(t) for t in ids)
    + (f" → answer {decode(sel.answer[b])}" if sel.answer else "")
)

c1, c2 = st.columns([1, 2])
lenses = state.lenses_for(sel.directory)
lens = c1.radio(
    "Lens",
    lenses,
    horizontal=True,
    key="lens",
    help="exit: the output of a run stopped after loop t (the coda reads the ACT sum so far); "
    "logit / coda / tuned: read h_t itself.",
)
metric_names = [m for m in METRICS if targets is not None or "target" not in METRICS[m][0]]
metric = c2.selectbox("Colour cells by", metric_names, key="traj_metric")
col, scale, reverse = METRICS[metric]
table = state.lens_frame(*sel.key, sel.ids, sel.n_loops, lens, targets)
n_run = int(table["loop"].max()) + 1
output = state.output_frame(*sel.key, sel.ids, sel.n_loops, targets).assign(loop=n_run)
one = pd.concat([table, output])
one = one[one["batch"] == b]
heat = plots.token_loop_heatmap(one, col, batch=b, title=f"{lens} lens: {metric}")
figures.colours(
    heat, scale, reverse=reverse, **({"zmin": 0.0, "zmax": 1.0} if col == "top_1_prob" else {})
)
figures.top_token_hover(heat, one, decode, col)
st.plotly_chart(figures.token_axis(heat, ids, decode, output_row=n_run), key="traj_heatmap")
st.caption("The bottom row is the model's actual output, for reference.")

st.subheader("Rank of one token, loop by loop")
c1, c2, c3 = st.columns(3)
choices: dict[str, int] = {}
if sel.answer is not None:
    choices[f"answer {decode(sel.answer[b])}"] = sel.answer[b]
    task = state.task_for(sel.directory)
    for j, ent in enumerate(sel.hop_entities[b]):
        if ent >= 0 and j + 1 < sel.hops[b]:
            tok = int(task.value_id(ent))
            choices.setdefault(f"after hop {j + 1}: {decode(tok)}", tok)
tr = state.trace_for(*sel.key, sel.ids, sel.n_loops)
vocab = tr.logits.shape[-1]
for t in range(vocab):
    choices.setdefault(decode(t), t)
token_name = c1.selectbox("Token", list(choices), key="traj_token")
position = c2.number_input(
    "Position", min_value=0, max_value=len(ids) - 1, value=len(ids) - 1, key="traj_pos"
)
chosen = c3.multiselect(
    "Lenses",
    lenses,
    default=[x for x in ("exit", "logit", "coda") if x in lenses],
    key="traj_lenses",
)
token = choices[token_name]
control = tuple(tuple(token for _ in row) for row in sel.ids)
title = f"rank of {decode(token)} at position {position} ({decode(ids[position])}), 0 = top-1"
lines = go.Figure(layout={"title": title, "xaxis_title": "loop", "yaxis_title": "rank"})
for name in chosen:
    t = state.lens_frame(*sel.key, sel.ids, sel.n_loops, name, None, control)
    one_lens = plots.rank_trajectories(t[t["pos"] == position], "control_rank", batch=b)
    lines.add_trace(one_lens.data[0].update(name=name))
st.plotly_chart(figures.style(lines), key="traj_ranks")

st.subheader("Orbits of the latent state")
orbits = plots.pca_orbit_table(tr[state.adapter_of(sel.directory).roles["state"]], positions=None)
st.caption(
    "h_t of every token at every loop, projected on the top two principal components of all "
    f"{len(sel.ids)} example(s); grey lines join one token's loops, markers are coloured by loop."
)
st.plotly_chart(
    figures.style(plots.pca_orbits(orbits, batch=b, title=f"PCA orbits, example {b}"), 420),
    key="traj_pca",
)
