"""Causal: which loops reach the output (effective depth), what each loop reads (attention with
the task's ground truth), and what each loop causes (patching h_t, block_out, lora_delta)."""

from __future__ import annotations

import streamlit as st

from app import causal, figures, state
from app.sidebar import example_index
from mythos_lens.patching import SWEEP_SITES
from probes.attention import pair_read_summary, pair_reads
from probes.causal_plots import attention_figure, depth_figure, patch_figure

sel = state.current()
decode = state.decoder(sel)
b = example_index(sel)
ids = sel.ids[b]
T = len(ids)
task = state.task_for(sel.directory)
labels = figures.token_labels(ids, decode)

st.header("Causal")
position = st.number_input("Query position", min_value=0, max_value=T - 1, value=T - 1,
                           key="causal_pos")  # fmt: skip

st.subheader("Effective depth: which loops reach the output")
targets = state.next_token_targets(sel)
tabs = causal.depth_tables(*sel.key, sel.ids, sel.n_loops, int(position), targets)
matters = tabs["matters"]
used = matters[matters["matters"]]["loop"].tolist()
st.plotly_chart(figures.style(depth_figure(tabs["summary"], matters,
                f"{sel.name}: loops at position {position}"), 380), key="depth_fig")  # fmt: skip
idle = matters[~matters["matters"]]["loop"].tolist()
st.caption(
    f"Loops that matter at this position (some of the {len(sel.ids)} input(s) change output "
    f"without them): {used}. " + (f"Loops {idle} change no output: per-loop numbers there "
    "describe states the model does not use." if idle else "Every loop matters here.")
)  # fmt: skip

st.subheader("Attention per loop")
atr = causal.attention_trace(*sel.key, sel.ids, sel.n_loops)
pat = atr["attn_pattern"]  # [loop, batch, head, q, k]
loop = st.slider("Loop", 0, atr.n_loops - 1, 0, key="attn_loop")
truth = None
batch = sel.task_batch()
if task is not None and batch is not None and hasattr(task, "pair_truth"):
    truth = task.pair_truth(batch, atr.n_loops)
marked: list[int] = []
if truth is not None and int(position) == T - 1:
    pair = int(truth["expected_pair"][loop, b])
    if pair >= 0:
        marked = truth["pair_positions"][b, pair].tolist()
keys = labels[: int(position) + 1]
fig = attention_figure(pat[loop, b, :, int(position), : int(position) + 1].numpy(),
                       [f"head {h}" for h in range(pat.shape[2])], keys, marked,
                       f"loop {loop}: attention of position {position} ({decode(ids[position])})")  # fmt: skip
c1, c2 = st.columns(2)
c1.plotly_chart(figures.style(fig), key="attn_heads")
mean = pat[:, b, :, int(position), : int(position) + 1].mean(1).numpy()
fig2 = attention_figure(mean, [f"loop {t}" for t in range(atr.n_loops)], keys, (),
                        "mean over heads, every loop")  # fmt: skip
c2.plotly_chart(figures.style(fig2), key="attn_loops")
if truth is not None and int(position) == T - 1:
    st.caption("Outlined: the key/value pair whose key is the entity reached after t hops — "
               "the pair loop t must read to do hop t+1 (none once the hops are done).")  # fmt: skip
    reads = pair_reads(pat, truth["pair_positions"], truth["expected_pair"], query=-1)
    st.dataframe(pair_read_summary(reads), hide_index=True, key="pair_reads")
else:
    st.caption("Ground truth is marked for task inputs at the last position (the query).")

st.subheader("Patching: what each loop × position causes")
c1, c2, c3 = st.columns(3)
site = c1.selectbox("Site", SWEEP_SITES, key="patch_site")
direction = c2.radio("Direction", ["denoise", "noise"], horizontal=True, key="patch_dir",
                     help="denoise: run the corrupted input, restore one clean cell; noise: "
                     "run the clean input, write one corrupted cell")  # fmt: skip
typed = None
if sel.source != "task":
    typed = c3.text_area("Corrupted ids (same shape)", value="\n".join(" ".join(map(str, r))
                         for r in sel.ids), key="corrupt_ids")  # fmt: skip
corrupt = causal.corrupted_ids(sel, typed)
if corrupt[b] == ids:
    st.info("The corrupted input equals the clean one: change a token to see effects.")
else:
    table = causal.sweep_for(*sel.key, ids, corrupt[b], sel.n_loops, site, direction)
    c3.caption("corrupted: " + " ".join(decode(t) for t in corrupt[b]))
    fig = patch_figure(table, "restored", f"{site}, {direction}: share of the logit difference "
                       "restored (1 = all)")  # fmt: skip
    st.plotly_chart(figures.style(fig, 380), key="patch_map")
    flips = table[table["flipped"] > 0][["loop", "pos"]].values.tolist()
    st.caption(f"Cells whose patch flips the answer to the source run's: {flips or 'none'}.")
