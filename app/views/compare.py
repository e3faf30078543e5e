"""Compare: two checkpoints side by side on the same input (e.g. LoRA on vs off)."""

from __future__ import annotations

import streamlit as st

from app import figures, state
from app.sidebar import checkpoint_options, example_index
from mythos_lens.evaluate import per_hop_accuracy
from probes import plots
from probes.lora import lora_scale_cosine
from probes.routing import overlap_matrix, router_overlap
from probes.similarity import loop_similarity_tables

sel = state.current()
decode = state.decoder(sel)
b = example_index(sel)
options = checkpoint_options()
others = [n for n in options if n != sel.name] or [sel.name]
default = next((n for n in others if n.endswith("lora-off")), others[0])

st.header("Compare")
other = st.selectbox("Compare with", others, index=others.index(default), key="compare_with")
st.caption(
    f"Same input for both: {len(sel.ids)} example(s), {sel.n_loops} loops. Example {b}: "
    + " ".join(decode(t) for t in sel.ids[b])
)
batch = sel.task_batch()
targets = state.next_token_targets(sel)
last = len(sel.ids[0]) - 1
cols = st.columns(2)
for i, (col, name) in enumerate(zip(cols, [sel.name, other], strict=True)):
    directory = options[name]
    key = state.checkpoint_key(directory)
    model = state.model_for(directory)
    tr = state.trace_for(*key, sel.ids, sel.n_loops)
    col.subheader(name)
    if batch is not None:
        acc = per_hop_accuracy(model, batch, sel.n_loops)
        col.metric(
            f"accuracy on these {len(sel.ids)} examples",
            " · ".join(f"{h} hop(s): {a:.0%}" for h, a in sorted(acc.items())),
        )
    table = state.lens_frame(*key, sel.ids, sel.n_loops, "coda", targets)
    value = "target_rank" if targets is not None else "final_rank"
    heat = plots.token_loop_heatmap(table, value, batch=b, title=f"coda lens: {value}, example {b}")
    figures.colours(heat, reverse=True)
    figures.top_token_hover(heat, table[table["batch"] == b], decode, value)
    col.plotly_chart(figures.token_axis(heat, sel.ids[b], decode), key=f"cmp_lens_{i}")
    cos = plots.loop_loop_heatmap(
        lora_scale_cosine(tr.params["lora_scale"]), title="LoRA scale cosine"
    )
    figures.colours(cos, "RdBu", zmin=-1.0, zmax=1.0, values=True)
    col.plotly_chart(figures.loop_axes(cos), key=f"cmp_lora_{i}")
    if tr.n_loops >= 2:
        ov = plots.loop_loop_heatmap(
            overlap_matrix(router_overlap(tr["expert_ids"], model.cfg.n_experts)),
            title="Router overlap@k between loops",
        )
        figures.colours(ov, zmin=0.0, zmax=1.0, values=True)
        col.plotly_chart(figures.loop_axes(ov), key=f"cmp_overlap_{i}")
        cka = plots.loop_loop_heatmap(
            loop_similarity_tables({"resid_post": tr["resid_post"]}), title="CKA (debiased) of h_t"
        )
        figures.colours(cka, zmax=1.0, values=True)
        col.plotly_chart(figures.loop_axes(cka), key=f"cmp_cka_{i}")
