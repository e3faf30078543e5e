"""Cached causal computations for the Causal page: the exit lens and effective depth, attention
patterns per loop with the task's ground truth, and patching sweeps. Library calls only."""

from __future__ import annotations

import pandas as pd
import streamlit as st
import torch

from app import state
from mythos_lens.capture import capture
from mythos_lens.errors import MythosLensError
from mythos_lens.patching import patch_sweep
from mythos_lens.trace import Trace
from probes.causal_plots import depth_summary
from probes.effective_depth import (
    act_share_table,
    effective_depth,
    loops_that_matter,
    stop_effect_table,
)
from probes.patching import patch_effects, sweep_table

Ids = state.Ids


@st.cache_data(max_entries=32, show_spinner="Capturing attention patterns …")
def attention_trace(directory: str, mtime: float, ids: Ids, n_loops: int) -> Trace:
    """Every loop with the recurrent block's attention patterns (all loops run)."""
    model = state._load_model(directory, mtime)
    return capture(model, torch.tensor(ids), n_loops=n_loops, run_all_loops=True,
                   sites=["attn_pattern", "act_weight", "resid_post"])  # fmt: skip


@st.cache_data(max_entries=32, show_spinner=False)
def depth_tables(
    directory: str, mtime: float, ids: Ids, n_loops: int, position: int, targets: Ids | None
) -> dict[str, pd.DataFrame]:
    """At one position: per-loop summary (ACT share, stopping effect), loops that matter."""
    tr = state.trace_for(directory, mtime, ids, n_loops)
    exit_lg = state.lens_logits(directory, mtime, ids, n_loops, "exit")
    p = position % len(ids[0])
    sl = slice(p, p + 1)
    tgt = None if targets is None else torch.tensor(targets)[:, sl]
    stop = stop_effect_table(exit_lg[:, :, sl], tr.logits[:, sl], target_ids=tgt)
    weights = state.adapter_of(directory).roles.get("act_weight")
    if weights:
        share = act_share_table(tr[weights][:, :, sl])
    else:  # no ACT: the readout reads the last state alone
        share = act_share_table(torch.eye(tr.n_loops)[-1].view(-1, 1, 1).expand(-1, len(ids), 1))
    depth = effective_depth(exit_lg[:, :, sl], tr.logits[:, sl])
    matters = loops_that_matter(depth, tr.n_loops)
    return {"summary": depth_summary(share, stop), "matters": matters,
            "depth": pd.DataFrame({"batch": range(len(ids)), "depth": depth[:, 0].tolist()})}  # fmt: skip


def corrupted_ids(sel: state.Selection, text: str | None) -> Ids:
    """The corrupted input: for task inputs another start key (``task.corrupt``), else typed."""
    if text is None:
        batch = sel.task_batch()
        task = state.task_for(sel.directory)
        if batch is None or task is None:
            raise MythosLensError("no task to corrupt this input", "typed corrupted ids")
        return tuple(map(tuple, task.corrupt(batch, seed=0).input_ids.tolist()))
    rows = state.parse_ids(text)
    if len(rows) != len(sel.ids) or len(rows[0]) != len(sel.ids[0]):
        raise MythosLensError(
            f"corrupted ids of shape {len(rows)} x {len(rows[0])}",
            f"the clean input's shape {len(sel.ids)} x {len(sel.ids[0])}",
        )
    return rows


@st.cache_data(max_entries=32, show_spinner="Patching every loop × position …")
def sweep_for(
    directory: str,
    mtime: float,
    clean: tuple[int, ...],
    corrupt: tuple[int, ...],
    n_loops: int,
    site: str,
    direction: str,
) -> pd.DataFrame:
    """Loop × position sweep of one input (``mythos_lens.patching.patch_sweep``) as a table."""
    model = state._load_model(directory, mtime)
    res = patch_sweep(model, torch.tensor([clean]), torch.tensor([corrupt]), site=site,
                      n_loops=n_loops, direction=direction)  # fmt: skip
    return sweep_table(res.cells, patch_effects(res.patched, res.baseline, res.source))
