"""Depth-wise LoRA: how different the per-loop adapters are, how large, and what removing them
at chosen loops changes (KL, predictions, routing)."""

from __future__ import annotations

import pandas as pd
import streamlit as st
import torch

from app import figures, state
from app.sidebar import example_index
from probes import plots
from probes.lora import ablation_effects, lora_delta_ratio, lora_scale_cosine
from probes.routing import overlap_matrix, router_overlap

sel = state.current()
decode = state.decoder(sel)
b = example_index(sel)
tr = state.trace_for(*sel.key, sel.ids, sel.n_loops)
model = state.model_for(sel.directory)
E = model.cfg.n_experts

st.header("Depth-wise LoRA")
st.caption(
    "Upstream shares LoRA's down and B matrices across loops; only the per-loop scale "
    f"(a rank-{model.cfg.lora_rank} vector) differs. Loops ≥ max_loop_iters = "
    f"{model.cfg.max_loop_iters} reuse the last row: rows used here {tr.meta.get('lora_row')}."
)
c1, c2 = st.columns(2)
cos = lora_scale_cosine(tr.params["lora_scale"])
undefined = cos["note"].ne("").any()
fig = plots.loop_loop_heatmap(cos, title="Cosine between per-loop LoRA scale vectors")
figures.colours(fig, "RdBu", zmin=-1.0, zmax=1.0, values=True)
if undefined:
    figures.note(fig, "Blank cells: a zero scale (LoRA off) has no direction; cosine undefined.")
c1.plotly_chart(figures.loop_axes(fig), key="lora_cos")
ratio = plots.convergence_curves(
    lora_delta_ratio(tr["lora_delta"], tr["block_out"]),
    title="‖LoRA delta‖ / ‖block output‖ per loop",
)
c2.plotly_chart(figures.style(ratio), key="lora_ratio")

st.subheader("Ablate LoRA")
loops = st.multiselect(
    "Zero the LoRA delta at loops", list(range(tr.n_loops)), default=[0], key="ablate_loops"
)
if not loops:
    st.info("Choose loops to ablate.")
    st.stop()
loops = tuple(sorted(int(t) for t in loops))
last = len(sel.ids[0]) - 1
answers = None if sel.answer is None else torch.tensor(sel.answer).unsqueeze(1)
ablated = state.trace_for(*sel.key, sel.ids, sel.n_loops, loops)
runs = {(t,): state.trace_for(*sel.key, sel.ids, sel.n_loops, (t,)) for t in loops}
runs[loops] = ablated
frames = []
for ab_loops, run in runs.items():
    eff = ablation_effects(
        tr.logits[:, last:], {ab_loops[0]: run.logits[:, last:]}, target_ids=answers
    )
    eff["ablated_loop"] = "+".join(map(str, ab_loops))
    frames.append(eff)
effects = pd.concat(frames, ignore_index=True).drop_duplicates(["ablated_loop", "metric"])
st.plotly_chart(
    figures.bars(effects, "ablated_loop", "Effect at the last position over all examples", "value"),
    key="lora_effects",
)
st.dataframe(effects.pivot(index="ablated_loop", columns="metric", values="value"))

c1, c2 = st.columns(2)
pred = int(tr.logits[b, last].argmax())
pred_ab = int(ablated.logits[b, last].argmax())
c1.metric(
    f"Prediction of example {b} (last position)", decode(pred_ab),
    delta=None if pred == pred_ab else f"was {decode(pred)}", delta_color="inverse",
)  # fmt: skip
if sel.answer is not None:
    c2.metric("Answer", decode(sel.answer[b]))
if tr.n_loops >= 2:
    c1, c2 = st.columns(2)
    for col, trace, label, key in (
        (c1, tr, "with LoRA", "lora_ov_base"),
        (c2, ablated, f"LoRA ablated at {list(loops)}", "lora_ov_ablated"),
    ):
        fig = plots.loop_loop_heatmap(
            overlap_matrix(router_overlap(trace["expert_ids"], E)),
            title=f"Router overlap@k, {label}",
        )
        figures.colours(fig, zmin=0.0, zmax=1.0, values=True)
        col.plotly_chart(figures.loop_axes(fig), key=key)
