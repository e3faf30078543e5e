"""Plain-language statements computed from the tables (never hard-coded), and the depth marks
(helps / flat / hurts / overthinking) behind them."""

from __future__ import annotations

import numpy as np
import pandas as pd


def adjacent_pairs(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Rows of a loop × loop table with ``loop_b == loop_a + 1`` (t, t+1 pairs)."""
    return df[df["loop_b"] == df["loop_a"] + 1].sort_values([*keys, "loop_a"])


def fmt_number(x: float, nd: int = 3) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{nd}f}"


def summarize_checkpoint(tables: dict[str, pd.DataFrame], name: str) -> list[str]:
    """Plain-language statements about one checkpoint, each computed from the tables (never
    hard-coded): accuracy vs chance, similarity of adjacent loops vs baselines, loop-identity and
    hop probes vs their controls, LoRA size and ablation effects, depth behaviour."""
    out: list[str] = []

    def sub(t: str) -> pd.DataFrame:
        df = tables.get(t)
        return df[df["checkpoint"] == name] if df is not None and len(df) else pd.DataFrame()

    acc = sub("accuracy")
    if len(acc):
        parts = [f"{int(r.hops)} hop(s) {fmt_number(r.accuracy)} (chance {fmt_number(r.chance_uniform)}, "
                 f"ignoring the start {fmt_number(r.chance_ignore_start)}; n={int(r.n)})"
                 for r in acc.itertuples()]  # fmt: skip
        out.append("Held-out accuracy: " + "; ".join(parts) + ".")
    cka = sub("cka")
    if len(cka):
        adj = adjacent_pairs(cka, ["site"]).groupby("site")["value"].mean()
        out.append(
            "Mean debiased CKA between adjacent loops (t, t+1): "
            + ", ".join(f"{s} {fmt_number(v)}" for s, v in adj.items())
            + ". h_t carries B·e and the decayed past at every loop, so its similarity is inflated;"
            " Δh_t and block_out say whether successive loop steps *do* similar things."
        )
    ro = sub("router")
    if len(ro):
        a = adjacent_pairs(ro[ro.metric == "overlap_at_k"], [])
        if len(a):
            out.append(
                f"Router overlap@k between adjacent loops: mean {fmt_number(a.value.mean())} "
                f"(range {fmt_number(a.value.min())}–{fmt_number(a.value.max())}) vs random "
                f"{fmt_number(a.random_baseline.iloc[0])} (k/E): "
                + (
                    "adjacent loops re-use experts more than chance."
                    if a.value.min() > a.random_baseline.iloc[0]
                    else "some adjacent loops route no more alike than chance."
                )  # fmt: skip
            )
    pr = sub("probes")
    if len(pr):
        li = pr[pr.probe == "loop_index"].pivot_table(
            index=["site", "channels"], columns="metric", values="mean"
        )
        for (site, ch), r in li.iterrows():
            out.append(
                "Loop-identity probe (pooled over loops; majority = 1/loops; the control task "
                "labels each start key randomly, so it measures probe capacity) on "
                f"{site} ({'all channels' if ch == 'all' else 'without the loop-embedding channels'}): "
                f"{fmt_number(r.get('task_acc'))} vs control {fmt_number(r.get('control_acc'))} and majority "
                f"{fmt_number(r.get('majority_acc'))} (selectivity {fmt_number(r.get('selectivity'))})."
            )
        hp = pr[pr.probe.str.startswith("hop_")]
        if len(hp):
            ta = hp[hp.metric == "task_acc"]
            for hop, g in ta.groupby("hop"):
                best = g.loc[g["mean"].idxmax()]
                at = hp[(hp.hop == hop) & (hp.loop == best.loop)].set_index("metric")["mean"]
                out.append(
                    f"Hop-{int(hop)} entity is best decoded at loop {int(best.loop)}: "
                    f"{fmt_number(best['mean'])} vs majority {fmt_number(at.get('majority_acc'))} and "
                    f"start-key-only {fmt_number(at.get('type_only_acc'))}; control task "
                    f"{fmt_number(at.get('control_acc'))} (selectivity {fmt_number(at.get('selectivity'))}; "
                    "the control is easy because the start key itself is decodable)."
                )
    lora = sub("lora")
    ab = sub("ablation")
    if len(lora):
        sn = lora[lora.metric == "scale_norm"]["value"]
        if (sn == 0).all():
            out.append("LoRA is off (every per-loop scale is exactly zero).")
        else:
            nr = lora[lora.metric == "norm_ratio"]
            out.append(
                "LoRA delta / block output norm ratio per loop: "
                + ", ".join(fmt_number(v) for v in nr["value"])
                + "."
            )
    if len(ab):
        kl = ab[(ab.intervention == "ablate_lora") & (ab.metric == "kl")]
        da = ab[(ab.intervention == "ablate_lora") & (ab.metric == "delta_acc")]
        if len(kl):
            top = kl.loc[kl["value"].idxmax()]
            text = (f"Ablating LoRA at one loop: ΔKL up to {fmt_number(top.value, 4)} nats (loop "
                    f"{int(top.ablated_loop)})")  # fmt: skip
            if len(da):
                text += f", Δaccuracy between {fmt_number(da.value.min())} and {fmt_number(da.value.max())}"
            allkl = ab[(ab.intervention == "ablate_lora_all") & (ab.metric == "kl")]["value"]
            mkl = ab[(ab.intervention == "mean_scale_all") & (ab.metric == "kl")]["value"]
            alla = ab[(ab.intervention == "ablate_lora_all") & (ab.metric == "delta_acc")]["value"]
            mda = ab[(ab.intervention == "mean_scale_all") & (ab.metric == "delta_acc")]["value"]
            text += (f"; at every loop ΔKL {fmt_number(allkl.iloc[0], 4)}"
                     + (f" (Δacc {fmt_number(alla.iloc[0])})" if len(alla) else "")
                     + f"; replacing every loop's scale by the mean scale ΔKL {fmt_number(mkl.iloc[0], 4)}"
                     + (f" (Δacc {fmt_number(mda.iloc[0])})" if len(mda) else "") + ".")  # fmt: skip
            if (kl["value"] == 0).all() and (allkl == 0).all():
                text += " Every effect is exactly zero, as it must be without LoRA."
            out.append(text)
    dp = sub("depth")
    if len(dp):
        out.extend(depth_statements(dp))
    return out


def depth_marks(depth: pd.DataFrame, z: float = 1.96) -> pd.DataFrame:
    """Mark each (hops, n_loops) cell of one checkpoint's depth table against its neighbours.

    ``gain`` = accuracy − accuracy at the previous loop count; ``se_gain`` its standard error
    (two independent binomial proportions); ``mark`` = ``helps`` (gain > z·se), ``hurts``
    (gain < −z·se), else ``flat``; ``best`` = the cell with the highest accuracy of its row,
    ``overthinking`` = accuracy below the row's best by more than z standard errors at a loop
    count above the best one. Columns: those of the depth table + ``gain, se_gain, mark, best,
    drop_from_best, overthinking``.
    """
    rows = []
    keys = ["checkpoint", "hops"] if "checkpoint" in depth.columns else ["hops"]
    for _, g in depth.sort_values([*keys, "n_loops"]).groupby(keys, sort=True):
        g = g.copy()
        p, n = g["accuracy"].to_numpy(float), g["n"].to_numpy(float)
        var = p * (1 - p) / n
        gain = np.r_[np.nan, np.diff(p)]
        se = np.sqrt(np.r_[np.nan, var[1:] + var[:-1]])
        mark = np.where(gain > z * se, "helps", np.where(gain < -z * se, "hurts", "flat"))
        mark[0] = ""
        ib = int(np.argmax(p))
        drop = p[ib] - p
        se_b = np.sqrt(var + var[ib])
        over = (np.arange(len(p)) > ib) & (drop > z * se_b)
        g["gain"], g["se_gain"], g["mark"] = gain, se, mark
        g["best"] = np.arange(len(p)) == ib
        g["drop_from_best"], g["overthinking"] = drop, over
        rows.append(g)
    return pd.concat(rows, ignore_index=True)


def depth_statements(depth: pd.DataFrame) -> list[str]:
    """One sentence per hop count: where more loops help, where they stop helping, where they
    hurt (overthinking), from :func:`depth_marks`."""
    out = []
    for (ck, hop), g in depth_marks(depth).groupby(["checkpoint", "hops"], sort=True):
        best = g[g.best].iloc[0]
        helps = g[g["mark"] == "helps"]["n_loops"].tolist()
        over = g[g.overthinking]["n_loops"].tolist()
        s = (f"Depth ({ck}), {int(hop)} hop(s): best {fmt_number(best.accuracy)} at {int(best.n_loops)} loops"
             f"; more loops significantly help at {helps or 'no step'}")  # fmt: skip
        s += (f"; overthinking (significantly below the best) at {over} loops" if over
              else "; no significant drop after the best")  # fmt: skip
        out.append(s + ".")
    return out
