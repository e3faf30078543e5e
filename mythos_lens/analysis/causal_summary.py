"""Statements and figures for the causal tables: which loops matter, which pair each loop reads,
what patching and exit rules show. Every sentence is computed from the tables."""

from __future__ import annotations

from typing import Any

import pandas as pd

from mythos_lens.analysis.summary import fmt_number


def _rows(tables: dict[str, pd.DataFrame], t: str, name: str) -> pd.DataFrame:
    df = tables.get(t)
    return df[df["checkpoint"] == name] if df is not None and len(df) else pd.DataFrame()


def _span(loops: list[int]) -> str:
    return ", ".join(str(t) for t in loops) if loops else "none"


def causal_statements(tables: dict[str, pd.DataFrame], name: str) -> list[str]:
    """Plain-language findings of one checkpoint from its causal tables."""
    out: list[str] = []
    ed = _rows(tables, "effective_depth", name).sort_values("loop")
    if len(ed):
        used = ed[ed["matters"].astype(bool)]["loop"].astype(int).tolist()
        idle = ed[~ed["matters"].astype(bool)]["loop"].astype(int).tolist()
        shares = ", ".join(f"{int(r.loop)}: {fmt_number(r.act_share, 3)}" for r in ed.itertuples())
        text = (f"Loops that matter (at the query position, some example's output changes when "
                f"the loop is cut): {_span(used)}" + (f"; loops {_span(idle)} change no output, so "
                "per-loop numbers there describe states the model does not use" if idle else "")
                + f". The coda reads Σ_t w_t·h_t with Σ_t w_t = {fmt_number(ed['weight_sum'].mean())}"
                f"; ACT weight share per loop {shares}.")  # fmt: skip
        if "exit_accuracy" in ed.columns and ed["exit_accuracy"].notna().any():
            acc = ", ".join(
                f"{int(r.loop)}: {fmt_number(r.exit_accuracy)}" for r in ed.itertuples()
            )
            text += (f" Accuracy of a run stopped after loop t: {acc} (full run "
                     f"{fmt_number(ed['full_accuracy'].iloc[-1])}).")  # fmt: skip
        out.append(text)
    rd = _rows(tables, "attention_reads", name)
    if len(rd):
        parts = []
        for t, g in rd.groupby("loop", sort=True):
            mean = g[g["head"] == -1].iloc[0]
            best = g[g["head"] >= 0].sort_values("top_is_expected").iloc[-1]
            parts.append(f"loop {int(t)}: the most-read pair is the hop-{int(t) + 1} pair in "
                         f"{fmt_number(mean.top_is_expected, 2)} of examples (head "
                         f"{int(best['head'])}: {fmt_number(best.top_is_expected, 2)}, mass "
                         f"{fmt_number(best.expected_mass, 2)} vs chance "
                         f"{fmt_number(best.chance_mass, 2)})")  # fmt: skip
        out.append("What each loop reads at the query (attention, ground truth from the task): "
                   + "; ".join(parts) + ".")  # fmt: skip
    pt = _rows(tables, "patching", name)
    if len(pt):
        q = pt["pos"].max()
        at_q = pt[pt["pos"] == q].sort_values("loop")
        rest = ", ".join(f"{int(r.loop)}: {fmt_number(r.restored, 2)}" for r in at_q.itertuples())
        elsewhere = pt[pt["pos"] != q]["restored"].abs().max()
        out.append(f"Patching h_t of the clean run into the corrupted one (start key changed), at "
                   f"the query position, restores this share of the logit difference per loop: "
                   f"{rest}; at any other position at most {fmt_number(elsewhere, 2)} "
                   f"(n = {int(pt['n'].max())}).")  # fmt: skip
    lc = _rows(tables, "lora_cross", name)
    if len(lc):
        top = lc.sort_values("kl").iloc[-1]
        out.append(f"LoRA cross-patching (loop t computed with scale row t′): largest effect at "
                   f"loop {int(top.loop)} with row {int(top.row)}, KL {fmt_number(top.kl, 4)}"
                   + (f", Δacc {fmt_number(top.delta_acc)}" if "delta_acc" in lc else "")
                   + ("; every effect is exactly 0" if (lc["kl"] == 0).all() else "") + ".")  # fmt: skip
    ex = _rows(tables, "exit_rules", name)
    if len(ex) and "accuracy" in ex.columns:
        parts = [f"{r.rule} {fmt_number(r.mean_loops, 2)} loops, accuracy {fmt_number(r.accuracy)}"
                 for r in ex.itertuples()]  # fmt: skip
        out.append("Exit rules on the exit lens (mean loops used, accuracy at exit): "
                   + "; ".join(parts) + ".")  # fmt: skip
    return out


def causal_figures(tables: dict[str, pd.DataFrame]) -> list[tuple[str, Any]]:
    """Report figures of the causal tables, one set per checkpoint."""
    from probes.causal_plots import depth_figure, patch_figure
    from probes.plots import share_heatmap

    figs: list[tuple[str, Any]] = []
    ed = tables.get("effective_depth")
    for ck, g in ed.groupby("checkpoint", sort=False) if ed is not None and len(ed) else []:
        figs.append((f"{ck}: effective depth — ACT weight share and tokens needing each loop "
                     "(grey: loops that change no output), and what stopping after loop t does.",
                     depth_figure(g.drop(columns=["share_needing", "matters"]),
                                  g[["loop", "share_needing", "matters"]],
                                  f"{ck}: which loops reach the output")))  # fmt: skip
    rd = tables.get("attention_reads")
    for ck, g in rd.groupby("checkpoint", sort=False) if rd is not None and len(rd) else []:
        fig = share_heatmap(g, "head", "loop", "top_is_expected", title=f"{ck}: the pair each "
                            "loop reads most is the hop-(t+1) pair", xaxis_title="loop t",
                            yaxis_title="head (-1: mean)")  # fmt: skip
        figs.append((f"{ck}: share of examples whose most-attended pair (query position) holds "
                     "hop t+1.", fig))  # fmt: skip
    pt = tables.get("patching")
    for ck, g in pt.groupby("checkpoint", sort=False) if pt is not None and len(pt) else []:
        figs.append((f"{ck}: patching h_t from the clean into the corrupted run, one loop × "
                     "position at a time: share of the logit difference restored.",
                     patch_figure(g, "restored", f"{ck}: patching h_t (denoise)")))  # fmt: skip
    return figs
