"""Loops compared: CKA between loop steps, convergence of the carried state, ACT halting, ρ(A)."""

from __future__ import annotations

import streamlit as st
import torch

from app import causal, figures, state
from app.sidebar import example_index
from probes import plots
from probes.convergence import lens_kl_table, rho_A, step_table
from probes.effective_depth import mark_loops
from probes.exits import exit_steps
from probes.similarity import loop_deltas, loop_similarity_tables

sel = state.current()
decode = state.decoder(sel)
b = example_index(sel)
tr = state.trace_for(*sel.key, sel.ids, sel.n_loops)
roles = state.adapter_of(sel.directory).roles
h = tr[roles["state"]]
h0 = tr[roles["state_in"]] if "state_in" in roles else None

st.header("Loops compared")
n_tok = len(sel.ids) * len(sel.ids[0])
c1, c2 = st.columns([2, 1])
kind = c1.radio(
    "CKA estimator", ["debiased", "biased", "minibatch"], horizontal=True, key="cka_kind"
)
depth = causal.depth_tables(*sel.key, sel.ids, sel.n_loops, -1, state.next_token_targets(sel))
matters = depth["matters"]
used = set(matters[matters["matters"]]["loop"].tolist())
only = c2.toggle("Only loops that matter", key="only_matter",
                 help="Loops whose removal changes some output at the last position "
                 "(Causal page, effective depth); the others describe unused states.")  # fmt: skip
c2.caption(f"Loops that matter: {sorted(used)} of {tr.n_loops}.")
st.caption(
    f"Linear CKA over {n_tok} tokens (d = {h.shape[-1]}). A state that carries the input and "
    "its past at every step looks alike for that alone: compare the steps Δh_t (and the block "
    "output, where the model has one) too."
)
sites = {f"h_t ({roles['state']})": h, "Δh_t": loop_deltas(h, h0)}
if "block_out" in roles:
    sites["block output"] = tr[roles["block_out"]]
cka = loop_similarity_tables(sites, kind)
if only:
    cka = mark_loops(cka, matters)
    cka = cka[cka["loop_matters"]].drop(columns="loop_matters")
cols = st.columns(len(sites))
for col, (site, d) in zip(cols, cka.groupby("site", sort=False), strict=True):
    fig = plots.loop_loop_heatmap(d, title=f"CKA ({kind}): {site}")
    figures.colours(fig, zmax=1.0, values=True)
    col.plotly_chart(figures.loop_axes(fig), key=f"cka_{list(sites).index(site)}")

st.subheader("Convergence")
c1, c2 = st.columns(2)
steps = step_table(h, h0, tr.positions)
if only:
    steps = steps[steps["loop"].isin(used)]
c1.plotly_chart(
    figures.style(
        plots.convergence_curves(steps, title="Step of the carried state (median, IQR over tokens)")
    ),
    key="conv_steps",
)
if tr.n_loops >= 2:
    lens = c2.radio("Lens for KL", state.lenses_for(sel.directory), horizontal=True,
                    key="conv_lens")  # fmt: skip
    lg = state.lens_logits(*sel.key, sel.ids, sel.n_loops, lens)
    c2.plotly_chart(
        figures.style(
            plots.convergence_curves(
                lens_kl_table(lg, tr.positions), title=f"KL(p_(t-1) ‖ p_t), {lens} lens, nats"
            ).update_yaxes(type="log")
        ),
        key="conv_kl",
    )

halting = roles.get("cum_halt")
st.subheader("Halting, exits and stability" if halting else "Exits")
c1, c2 = st.columns([2, 1])
thr = tr.meta.get("act_threshold")
if halting:
    halt = plots.token_loop_heatmap(
        tr.to_frame(halting), "value", batch=b,
        title=f"Cumulative halting probability (ACT threshold {thr:g})",
    )  # fmt: skip
    figures.colours(halt, "Magma", zmin=0.0)
    c1.plotly_chart(figures.token_axis(halt, sel.ids[b], decode), key="act_map")
lg = state.lens_logits(*sel.key, sel.ids, sel.n_loops, "exit")
targets = state.next_token_targets(sel)
ex = exit_steps(lg, tr.logits, h, h0=h0, cum_halt_prob=tr[halting] if halting else None,
                act_threshold=thr if halting else None, positions=tr.positions,
                target_ids=None if targets is None else torch.tensor(targets))  # fmt: skip
c2.caption("Exit step per token and rule (−1: never), on the exit lens; `settled`: the last "
           "step that changes the output.")  # fmt: skip
c2.dataframe(ex[ex["batch"] == b].drop(columns=["batch", "n_loops"]), hide_index=True, height=300)
if "injection_A" in tr.params:
    c2.metric("ρ(A) = max A (injection)", f"{rho_A(tr.params['injection_A']):.4f}")
if state.adapter_of(sel.directory).loop_step is not None and c2.toggle(
    "Local Jacobian spectral radius per loop", key="jac"
):
    c2.dataframe(state.jacobian_spectrum(*sel.key, sel.ids, sel.n_loops, b), hide_index=True)
