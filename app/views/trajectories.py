"""Trajectories: what each loop step would predict, read with the logit, coda and tuned lens."""

from __future__ import annotations

import streamlit as st

from app import figures, state
from app.sidebar import example_index

METRICS = {
    "top-1 probability (cells: top token)": ("top_1_prob", "Viridis", False),
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
lens = c1.radio("Lens", state.LENSES, horizontal=True, key="lens")
metric_names = [m for m in METRICS if targets is not None or "target" not in METRICS[m][0]]
metric = c2.selectbox("Colour cells by", metric_names, key="traj_metric")
col, scale, reverse = METRICS[metric]
table = state.lens_frame(*sel.key, sel.ids, sel.n_loops, lens, targets)
one = table[table["batch"] == b]
st.plotly_chart(
    figures.token_loop_heatmap(
        one, col, ids, decode, f"{lens} lens: {metric}", colorscale=scale, reverse=reverse
    ),
    key="traj_heatmap",
)

st.subheader("Rank of one token, loop by loop")
c1, c2, c3 = st.columns(3)
choices: dict[str, int] = {}
if sel.answer is not None:
    choices[f"answer {decode(sel.answer[b])}"] = sel.answer[b]
    task = state.task_for(sel.directory)
    for j, ent in enumerate(sel.hop_entities[b]):
        if ent >= 0 and j + 1 < sel.hops[b]:
            tok = int(task.layout.value_id(ent))
            choices.setdefault(f"after hop {j + 1}: {decode(tok)}", tok)
vocab = state.model_for(sel.directory).cfg.vocab_size
for t in range(vocab):
    choices.setdefault(decode(t), t)
token_name = c1.selectbox("Token", list(choices), key="traj_token")
position = c2.number_input(
    "Position", min_value=0, max_value=len(ids) - 1, value=len(ids) - 1, key="traj_pos"
)
lenses = c3.multiselect("Lenses", state.LENSES, default=["logit", "coda"], key="traj_lenses")
token = choices[token_name]
control = tuple(tuple(token for _ in row) for row in sel.ids)
frames = {}
for name in lenses:
    t = state.lens_frame(*sel.key, sel.ids, sel.n_loops, name, None, control)
    frames[name] = t[(t["batch"] == b) & (t["pos"] == position)]
st.plotly_chart(
    figures.rank_lines(
        frames,
        "control_rank",
        f"rank of {decode(token)} at position {position} ({decode(ids[position])})",
    ),
    key="traj_ranks",
)
