"""``mythos-lens study lora`` and ``study depth``: the flagship questions, across seeds.

**lora** — does upstream's depth-wise LoRA make loop steps differ? LoRA-on and LoRA-off models
(identical recipe, same seeds) are analysed with :func:`mythos_lens.analyze.analyze_model`; per
loop (pair) the study compares CKA(t, t+1) of h_t, Δh_t and block_out, router overlap(t, t+1)
against k/E, loop-identity probes (with and without the loop-embedding channels), hop-probe loop ×
hop matrices, LoRA-ablation ΔKL / Δaccuracy (exactly zero without LoRA, checked) and accuracy vs
loop count. Each model gives one number per cell; cells are summarised by the mean over seeds with
a 95 % t-interval (n = seeds), and on − off by the paired difference per seed (the two arms of a
seed share the initialisation and the data stream). The verdict is computed from those intervals.

**depth** — accuracy over hop count × loop count for models trained on fewer hops than tested,
with cells marked where more loops help, stop helping and hurt (:func:`analyze.depth_marks`).

Models: ``--reuse`` takes the shipped ``pointer-lora-{on,off}[-s<seed>]`` from ``data/checkpoints``;
otherwise :data:`STUDY_PRESET` (a faster recipe, documented below) is trained for every seed,
two processes at a time, one torch thread each, skipping checkpoints that already exist.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing as mp
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mythos_lens.atomic import AtomicDir
from mythos_lens.errors import MythosLensError

# The fast study recipe: the shipped presets' recipe (loops drawn from 2…6, embedding re-init,
# 1-hop curriculum, AdamW 1e-3, LoRA on/off identical) on a smaller pointer task — 6 entities,
# trained on hops 1–2 (tested up to 4) — which reached 100 % on 1 and 2 hops in ~2k steps
# (~5 min at one thread) where the 8-entity, 3-hop task needs ~10k steps (~25 min).
STUDY_PRESET: dict[str, Any] = dict(
    task_params={"n_entities": 6, "train_hops": 2, "max_hops": 4},
    loops=6, loops_min=2, eval_loops=4, steps=2500, eval_every=250, eval_examples=128,
    early_stop_acc=0.97, early_stop_patience=2, final_eval_examples=500,
    extrap_examples=64, extrap_loops=[2, 4, 6], threads=1, progress=False,
)  # fmt: skip
ARMS = ("on", "off")


def study_config(lora: bool, seed: int, out_dir: str | Path | None = None):
    """The :class:`~mythos_lens.train.TrainConfig` of one study model."""
    from mythos_lens.train import TrainConfig

    name = f"study-lora-{'on' if lora else 'off'}-s{seed}"
    return TrainConfig(name=name, lora=lora, seed=seed, out_dir=None if out_dir is None
                       else str(out_dir), **STUDY_PRESET)  # fmt: skip


def _train_one(args: tuple[bool, int, str]) -> dict[str, Any]:
    from mythos_lens.train import train

    lora, seed, out = args
    torch.set_num_threads(1)
    res = train(study_config(lora, seed, out))
    m = res.metrics
    return {"name": m["name"], "steps": m["steps"], "train_seconds": m["train_seconds"]}


def train_study_models(
    seeds: Sequence[int], directory: str | Path, jobs: int = 2
) -> dict[tuple[str, int], Path]:
    """Train (or find) ``study-lora-{on,off}-s<seed>`` under ``directory``; ``jobs`` processes
    at a time, one torch thread each. Returns ``{(arm, seed): checkpoint dir}``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {(arm, s): directory / f"study-lora-{arm}-s{s}" for s in seeds for arm in ARMS}
    todo = [(arm == "on", s, str(p)) for (arm, s), p in paths.items()
            if not (p / "model.safetensors").is_file()]  # fmt: skip
    if todo:
        print(f"training {len(todo)} study model(s), {jobs} at a time ...", flush=True)
        ctx = mp.get_context("spawn")
        with ctx.Pool(processes=max(1, min(jobs, len(todo)))) as pool:
            for r in pool.imap_unordered(_train_one, todo):
                print(f"  {r['name']}: {r['steps']} steps, {r['train_seconds']} s", flush=True)
    return paths


def reuse_models(directory: str | Path, seeds: Sequence[int] | None) -> dict[tuple[str, int], Path]:
    """The shipped ``pointer-lora-{on,off}`` (seed 0) and ``…-s<seed>`` checkpoints under
    ``directory`` present for both arms (restricted to ``seeds`` when given)."""
    directory = Path(directory)
    found: dict[tuple[str, int], Path] = {}
    for arm in ARMS:
        for p in sorted(directory.glob(f"pointer-lora-{arm}*")):
            tail = p.name[len(f"pointer-lora-{arm}") :]
            if tail == "":
                s = 0
            elif tail.startswith("-s") and tail[2:].isdigit():
                s = int(tail[2:])
            else:
                continue
            if (p / "model.safetensors").is_file() and (seeds is None or s in seeds):
                found[(arm, s)] = p
    both = sorted({s for (a, s) in found if (("on", s) in found and ("off", s) in found)})
    if not both:
        raise MythosLensError(
            f"no seed with both pointer-lora-on and -off under {directory}",
            "shipped checkpoints (see data/README.md) or no --reuse (train the study preset)",
        )
    return {(a, s): found[(a, s)] for s in both for a in ARMS}


# ------------------------------------------------------------------------ per-model quantities

# quantity -> (meaning, what x is); every study row is one of these.
QUANTITIES: dict[str, tuple[str, str]] = {
    "cka_h": ("debiased CKA(h_t, h_t+1)", "loop t"),
    "cka_dh": ("debiased CKA(Δh_t, Δh_t+1)", "loop t"),
    "cka_block_out": ("debiased CKA(block_out_t, block_out_t+1)", "loop t"),
    "router_overlap": ("router overlap@k between loops t and t+1", "loop t"),
    "router_overlap_excess": ("router overlap@k(t, t+1) − k/E", "loop t"),
    "loop_id_acc": ("loop-identity probe accuracy (site/channels in hop column label)", "-1"),
    "loop_id_control": ("loop-identity control-task accuracy", "-1"),
    "loop_id_majority": ("loop-identity majority baseline", "-1"),
    "loop_id_selectivity": ("loop-identity selectivity (task − control)", "-1"),
    "hop_probe_acc": ("hop-j entity probe accuracy at loop t (j in hop)", "loop t"),
    "hop_probe_selectivity": ("hop-j entity probe selectivity at loop t", "loop t"),
    "hop_probe_majority": ("hop-j entity probe majority baseline at loop t", "loop t"),
    "hop_probe_type_only": (
        "hop-j label predicted from the start key alone (one-hot probe)",
        "loop t",
    ),
    "ablate_dkl": ("KL(base ‖ LoRA ablated at loop t), nats", "loop t"),
    "ablate_dacc": ("Δ accuracy, LoRA ablated at loop t", "loop t"),
    "ablate_all_dkl": ("KL(base ‖ LoRA ablated at every loop)", "-1"),
    "ablate_all_dacc": ("Δ accuracy, LoRA ablated at every loop", "-1"),
    "mean_scale_dkl": ("KL(base ‖ every loop's LoRA scale replaced by the mean)", "-1"),
    "mean_scale_dacc": ("Δ accuracy, every loop's LoRA scale replaced by the mean", "-1"),
    "lora_norm_ratio": ("‖LoRA delta‖ / ‖block_out‖ at loop t", "loop t"),
    "accuracy": ("held-out accuracy at hop count j (hop) with n_loops = x", "n_loops"),
}


def model_quantities(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One value per (checkpoint, quantity, x, hop) from :func:`analyze.analyze_model` tables.

    Returns tidy ``checkpoint, quantity, x, hop, value`` (``hop`` is the hop count, or for
    loop-identity rows a ``site/channels`` label encoded as -1 with ``variant``); see
    :data:`QUANTITIES`.
    """
    rows: list[pd.DataFrame] = []

    def add(df: pd.DataFrame, q: str, x: str | int, hop: str | int = -1, variant: str = ""):
        out = pd.DataFrame(
            {
                "checkpoint": df["checkpoint"].to_numpy(),
                "quantity": q,
                "variant": variant,
                "x": df[x].to_numpy() if isinstance(x, str) else x,
                "hop": df[hop].to_numpy() if isinstance(hop, str) else hop,
                "value": df["value"].to_numpy(dtype=float),
            }
        )
        rows.append(out)

    cka = tables["cka"]
    adj = cka[cka.loop_b == cka.loop_a + 1]
    for site, q in (("resid_post", "cka_h"), ("delta_h", "cka_dh"), ("block_out", "cka_block_out")):
        add(adj[adj.site == site], q, "loop_a")
    ro = tables["router"]
    ro = ro[(ro.metric == "overlap_at_k") & (ro.loop_b == ro.loop_a + 1)]
    add(ro, "router_overlap", "loop_a")
    add(ro.assign(value=ro.value - ro.random_baseline), "router_overlap_excess", "loop_a")
    pr = tables["probes"]
    li = pr[pr.probe == "loop_index"]
    for metric, q in (("task_acc", "loop_id_acc"), ("control_acc", "loop_id_control"),
                      ("majority_acc", "loop_id_majority"),
                      ("selectivity", "loop_id_selectivity")):  # fmt: skip
        for (site, ch), g in li[li.metric == metric].groupby(["site", "channels"]):
            add(g.rename(columns={"mean": "value"}), q, -1, variant=f"{site}/{ch}")
    hp = pr[pr.probe.str.startswith("hop_")]
    for metric, q in (("task_acc", "hop_probe_acc"), ("selectivity", "hop_probe_selectivity"),
                      ("majority_acc", "hop_probe_majority"),
                      ("type_only_acc", "hop_probe_type_only")):  # fmt: skip
        add(hp[hp.metric == metric].rename(columns={"mean": "value"}), q, "loop", "hop")
    ab = tables["ablation"]
    for iv, metric, q in (("ablate_lora", "kl", "ablate_dkl"),
                          ("ablate_lora", "delta_acc", "ablate_dacc"),
                          ("ablate_lora_all", "kl", "ablate_all_dkl"),
                          ("ablate_lora_all", "delta_acc", "ablate_all_dacc"),
                          ("mean_scale_all", "kl", "mean_scale_dkl"),
                          ("mean_scale_all", "delta_acc", "mean_scale_dacc")):  # fmt: skip
        add(ab[(ab.intervention == iv) & (ab.metric == metric)], q, "ablated_loop")
    lo = tables["lora"]
    add(lo[lo.metric == "norm_ratio"], "lora_norm_ratio", "loop")
    dp = tables["depth"]
    if len(dp):
        add(dp.rename(columns={"accuracy": "value"}), "accuracy", "n_loops", "hops")
    out = pd.concat(rows, ignore_index=True)
    out["x"] = out["x"].astype(int)
    out["hop"] = out["hop"].astype(int)
    return out


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float, int]:
    """Mean and two-sided ``level`` Student-t interval of ``values`` (NaNs dropped):
    ``(mean, low, high, n)``; the interval is NaN for n < 2, and collapses to the mean when
    every value is equal."""
    from scipy.stats import t as student_t

    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    n = len(v)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    m = float(v.mean())
    if n < 2:
        return m, float("nan"), float("nan"), 1
    half = float(student_t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return m, m - half, m + half, n


STUDY_COLUMNS = {
    "quantity": "see QUANTITIES in mythos_lens/study.py (and study_quantities.csv)",
    "variant": "site/channels for loop-identity probes, else empty",
    "x": "loop t (pairs: t vs t+1), n_loops for accuracy, -1 for model-wide quantities",
    "hop": "hop count j (hop probes, accuracy), else -1",
    "arm": "on, off, or on-off (paired by seed)",
    "n": "seeds with a finite value",
    "mean": "mean over seeds",
    "ci_low": "95 % Student-t interval, low (NaN for n < 2)",
    "ci_high": "95 % Student-t interval, high",
    "values": "per-seed values, in seed order (comma-separated)",
}


def aggregate(q: pd.DataFrame, arm_of: dict[str, str], seed_of: dict[str, int]) -> pd.DataFrame:
    """Across seeds: mean and 95 % t-interval per (quantity, variant, x, hop) for each arm, and
    the paired per-seed difference on − off. Columns: :data:`STUDY_COLUMNS`."""
    q = q.assign(arm=q.checkpoint.map(arm_of), seed=q.checkpoint.map(seed_of))
    keys = ["quantity", "variant", "x", "hop"]
    rows = []
    for key, g in q.groupby(keys, sort=True):
        by = {a: g[g.arm == a].set_index("seed")["value"].sort_index() for a in ARMS}
        diff = (by["on"] - by["off"]).dropna()
        for arm, s in (("on", by["on"]), ("off", by["off"]), ("on-off", diff)):
            m, lo, hi, n = t_interval(s.to_numpy())
            rows.append({**dict(zip(keys, key, strict=True)), "arm": arm, "n": n, "mean": m,
                         "ci_low": lo, "ci_high": hi,
                         "values": ",".join(f"{v:.6g}" for v in s.to_numpy())})  # fmt: skip
    return pd.DataFrame(rows, columns=list(STUDY_COLUMNS))


def _cell(study: pd.DataFrame, quantity: str, arm: str, **kw: Any) -> pd.Series | None:
    sub = study[(study.quantity == quantity) & (study.arm == arm)]
    for k, v in kw.items():
        sub = sub[sub[k] == v]
    return None if sub.empty else sub.iloc[0]


def _ci(r: pd.Series | None, nd: int = 3) -> str:
    if r is None:
        return "n/a"
    if not np.isfinite(r.ci_low):
        return f"{r['mean']:.{nd}f} (n={int(r.n)}, no interval)"
    return f"{r['mean']:.{nd}f} [{r.ci_low:.{nd}f}, {r.ci_high:.{nd}f}] (n={int(r.n)})"


def _sign(r: pd.Series | None) -> int:
    """+1 / −1 if the interval excludes 0 above / below, 0 if it contains 0 or is missing."""
    if r is None or not np.isfinite(r.ci_low):
        return 0
    return 1 if r.ci_low > 0 else (-1 if r.ci_high < 0 else 0)


def loop_mean_quantities(q: pd.DataFrame, loops: Sequence[int] | None = None) -> pd.DataFrame:
    """Per checkpoint, the mean over loop pairs t of the adjacent-loop quantities (cka_h, cka_dh,
    cka_block_out, router_overlap_excess), as extra quantities ``<name>_mean`` with x = -1."""
    sel = q[q.quantity.isin(["cka_h", "cka_dh", "cka_block_out", "router_overlap_excess"])]
    if loops is not None:
        sel = sel[sel.x.isin(list(loops))]
    g = sel.groupby(["checkpoint", "quantity"], as_index=False)["value"].mean()
    g["quantity"] = g["quantity"] + "_mean"
    return g.assign(variant="", x=-1, hop=-1)[list(q.columns)]


def lora_verdict(study: pd.DataFrame, off_exact_zero: bool) -> dict[str, Any]:
    """Evidence lines and an overall verdict, each derived from the study's intervals.

    Lines: (1) LoRA is used — ΔKL of ablating it everywhere (on arm) has an interval above 0;
    (2) its per-loop *differences* are used — ΔKL of replacing every loop's scale by the mean;
    (3–5) loops are less alike with LoRA — paired on − off differences of mean adjacent CKA of
    Δh_t, of router overlap excess, and of the loop-identity probe without loop-embedding channels.
    """
    lines: dict[str, dict[str, Any]] = {}

    def line(key: str, r: pd.Series | None, text: str, positive_means: str, negative_means: str):
        s = _sign(r)
        lines[key] = {"estimate": _ci(r, 4), "sign": s,
                      "reading": positive_means if s > 0 else negative_means if s < 0
                      else "interval contains 0: no detectable effect at this n",
                      "what": text}  # fmt: skip

    line("lora_used", _cell(study, "ablate_all_dkl", "on"),
         "KL(base ‖ LoRA ablated at every loop), LoRA-on", "LoRA changes the output", "")  # fmt: skip
    line("lora_used_acc", _cell(study, "ablate_all_dacc", "on"),
         "Δ accuracy, LoRA ablated at every loop, LoRA-on", "ablating LoRA raises accuracy",
         "ablating LoRA lowers accuracy")  # fmt: skip
    line("differentiation_used", _cell(study, "mean_scale_dkl", "on"),
         "KL(base ‖ every loop's LoRA scale set to the mean), LoRA-on",
         "the per-loop scale differences change the output", "")  # fmt: skip
    line("differentiation_acc", _cell(study, "mean_scale_dacc", "on"),
         "Δ accuracy, every loop's scale set to the mean, LoRA-on",
         "mean scale raises accuracy", "the per-loop differences matter for accuracy")  # fmt: skip
    line("cka_dh", _cell(study, "cka_dh_mean", "on-off"),
         "on − off, mean over t of CKA(Δh_t, Δh_t+1)", "LoRA makes successive steps MORE alike",
         "LoRA makes successive steps less alike")  # fmt: skip
    line("cka_h", _cell(study, "cka_h_mean", "on-off"),
         "on − off, mean over t of CKA(h_t, h_t+1)", "states more alike with LoRA",
         "states less alike with LoRA")  # fmt: skip
    line("router", _cell(study, "router_overlap_excess_mean", "on-off"),
         "on − off, mean over t of router overlap@k(t, t+1) − k/E",
         "LoRA makes adjacent loops share MORE experts", "LoRA makes adjacent loops share fewer "
         "experts")  # fmt: skip
    line("loop_id", _cell(study, "loop_id_acc", "on-off", variant="resid_post/no_loop_emb"),
         "on − off, loop-identity probe accuracy on h_t without the loop-embedding channels",
         "loop identity is more decodable with LoRA", "loop identity is less decodable with LoRA")  # fmt: skip

    def positive_in_every_seed(q: str) -> bool:
        r = _cell(study, q, "on")
        vals = [float(v) for v in str(r["values"]).split(",") if v] if r is not None else []
        return bool(vals) and all(v > 0 for v in vals)

    L = lines
    used = L["lora_used"]["sign"] > 0 or L["lora_used_acc"]["sign"] != 0
    diff_used = L["differentiation_used"]["sign"] > 0 or L["differentiation_acc"]["sign"] != 0
    rep = [k for k in ("cka_dh", "router", "loop_id") if L[k]["sign"] != 0]
    differentiating = [k for k in rep if (L[k]["sign"] < 0) == (k != "loop_id")]
    parts = []
    if used:
        parts.append(f"Removing LoRA at every loop changes the model (KL {L['lora_used']['estimate']}, "
                     f"Δacc {L['lora_used_acc']['estimate']})")  # fmt: skip
    else:
        parts.append("Removing LoRA at every loop has no effect whose 95 % interval excludes 0 (KL "
                     f"{L['lora_used']['estimate']}, Δacc {L['lora_used_acc']['estimate']})"
                     + (", although the KL is > 0 in every seed (a t-interval fits a few skewed "
                        "non-negative values poorly)" if positive_in_every_seed("ablate_all_dkl")
                        else ""))  # fmt: skip
    if diff_used:
        parts.append("replacing every loop's LoRA scale by the mean scale changes it (KL "
                     f"{L['differentiation_used']['estimate']}, Δacc "
                     f"{L['differentiation_acc']['estimate']}): the model depends on its specific "
                     "per-loop scales — but this swap is also a different-sized perturbation "
                     "than removal, so it shows reliance, not that loops compute different "
                     "things")  # fmt: skip
    else:
        parts.append("replacing every loop's scale by the mean scale has no detectable effect (KL "
                     f"{L['differentiation_used']['estimate']})")  # fmt: skip
    if differentiating:
        parts.append("with LoRA, successive loops differ more than without it on "
                     + ", ".join(differentiating))  # fmt: skip
    elif rep:
        parts.append("the representational comparisons with a detectable difference ("
                     + ", ".join(rep) + ") show loops *more* alike with LoRA")  # fmt: skip
    else:
        parts.append("no representational comparison (on − off: CKA of Δh_t "
                     f"{L['cka_dh']['estimate']}, router overlap excess {L['router']['estimate']}, "
                     f"loop identity without loop-embedding channels {L['loop_id']['estimate']}) "
                     "differs detectably between LoRA-on and LoRA-off")  # fmt: skip
    if differentiating and (used or diff_used):
        label = "Yes: LoRA is used and loop steps are more differentiated with it"
    elif diff_used:
        label = ("Partly: the models rely on their per-loop LoRA scales (intervention), but loop "
                 "steps are not detectably more different with LoRA than without (representations)")  # fmt: skip
    elif used:
        label = "LoRA is used, but not shown to differentiate iterations"
    elif differentiating:
        label = "Loops look more differentiated with LoRA, but no intervention shows it is used"
    else:
        label = "No detectable effect of depth-wise LoRA"
    pairs = study[study.arm == "on-off"]["n"] if len(study) else pd.Series(dtype=float)
    n = int(pairs.max()) if len(pairs) else 0
    overall = (f"{label} (n = {n} seed(s) per arm, mean [95 % t-interval]). "
               + "; ".join(parts) + ".")  # fmt: skip
    return {"verdict": label, "overall": overall, "n_seed_pairs": n,
            "lora_off_ablation_exactly_zero": off_exact_zero, "lines": lines}  # fmt: skip


# ------------------------------------------------------------------------------ study lora


def _arm_seed(paths: dict[tuple[str, int], Path]) -> tuple[dict[str, str], dict[str, int]]:
    arm_of = {p.name: a for (a, s), p in paths.items()}
    seed_of = {p.name: s for (a, s), p in paths.items()}
    return arm_of, seed_of


def study_figures(study: pd.DataFrame) -> list[tuple[str, Any]]:
    """The study's figures (mean over seeds, 95 % t-interval error bars), from the study table."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    def err(g: pd.DataFrame) -> dict[str, Any]:
        return {"type": "data", "symmetric": False, "array": (g.ci_high - g["mean"]).to_numpy(),
                "arrayminus": (g["mean"] - g.ci_low).to_numpy()}  # fmt: skip

    figs = []
    panels = [("cka_h", "CKA(h_t, h_t+1)"), ("cka_dh", "CKA(Δh_t, Δh_t+1)"),
              ("cka_block_out", "CKA(block_out_t, _t+1)"),
              ("router_overlap", "router overlap@k(t, t+1)")]  # fmt: skip
    fig = make_subplots(rows=1, cols=4, subplot_titles=[p[1] for p in panels])
    for i, (q, _) in enumerate(panels, start=1):
        for arm, color in (("on", "#d62728"), ("off", "#1f77b4")):
            g = study[(study.quantity == q) & (study.arm == arm)].sort_values("x")
            fig.add_trace(go.Scatter(x=g.x, y=g["mean"], error_y=err(g), mode="lines+markers",
                                     name=f"LoRA {arm}", legendgroup=arm, showlegend=i == 1,
                                     line={"color": color}), row=1, col=i)  # fmt: skip
    base = study[study.quantity == "router_overlap_excess"]
    if len(base):
        r = study[(study.quantity == "router_overlap") & (study.arm == "on")]
        e = study[(study.quantity == "router_overlap_excess") & (study.arm == "on")]
        k_over_e = float((r.set_index("x")["mean"] - e.set_index("x")["mean"]).iloc[0])
        fig.add_hline(y=k_over_e, line_dash="dot", row=1, col=4, annotation_text="k/E")
    fig.update_xaxes(title_text="loop t")
    fig.update_layout(title="Adjacent-loop similarity, LoRA on vs off (mean, 95 % CI over seeds)",
                      height=380)  # fmt: skip
    figs.append(("Similarity of loop t and t+1: debiased CKA of h_t, Δh_t and block_out, and "
                 "router overlap@k against k/E (dotted).", fig))  # fmt: skip
    fig = make_subplots(rows=1, cols=2, subplot_titles=["ΔKL (nats)", "Δ accuracy"])
    for i, q in enumerate(("ablate_dkl", "ablate_dacc"), start=1):
        for arm, color in (("on", "#d62728"), ("off", "#1f77b4")):
            g = study[(study.quantity == q) & (study.arm == arm)].sort_values("x")
            fig.add_trace(go.Bar(x=g.x, y=g["mean"], error_y=err(g), name=f"LoRA {arm}",
                                 legendgroup=arm, showlegend=i == 1, marker_color=color),
                          row=1, col=i)  # fmt: skip
    fig.update_xaxes(title_text="loop where LoRA is ablated")
    fig.update_layout(title="Intervention: LoRA delta zeroed at one loop (mean, 95 % CI)",
                      barmode="group", height=380)  # fmt: skip
    figs.append(("Effect at the answer position of zeroing the LoRA delta at one loop; the "
                 "LoRA-off models must (and do) show exactly 0.", fig))  # fmt: skip
    li = study[study.quantity.str.startswith("loop_id_") & study.arm.isin(ARMS)
               & (study.quantity != "loop_id_selectivity")]  # fmt: skip
    fig = go.Figure()
    for (q, arm), g in li.groupby(["quantity", "arm"], sort=True):
        fig.add_trace(go.Bar(x=g.variant, y=g["mean"], error_y=err(g),
                             name=f"{q.removeprefix('loop_id_')} (LoRA {arm})"))  # fmt: skip
    fig.update_layout(title="Loop-identity probe (pooled over loops): task vs control vs majority",
                      barmode="group", yaxis_title="accuracy", height=380)  # fmt: skip
    figs.append(("Which loop is this state from? With all channels the loop-index sinusoid makes "
                 "it trivial; without the first d/8 channels it is the real test.", fig))  # fmt: skip
    hp = study[(study.quantity == "hop_probe_acc") & study.arm.isin(ARMS)]
    if len(hp):
        fig = make_subplots(rows=1, cols=2, subplot_titles=["LoRA on", "LoRA off"])
        for i, arm in enumerate(ARMS, start=1):
            grid = hp[hp.arm == arm].pivot(index="hop", columns="x", values="mean")
            fig.add_trace(go.Heatmap(z=grid.to_numpy(float), x=grid.columns, y=grid.index,
                                     zmin=0, zmax=1, texttemplate="%{z:.2f}",
                                     showscale=i == 2), row=1, col=i)  # fmt: skip
        fig.update_xaxes(title_text="loop")
        fig.update_yaxes(title_text="hop j", autorange="reversed")
        fig.update_layout(title="Hop-entity probe accuracy, loop × hop (mean over seeds)",
                          height=380)  # fmt: skip
        figs.append(("Linear probe for the entity reached after hop j, at each loop (query "
                     "position); selectivity and majority in study.csv.", fig))  # fmt: skip
    acc = study[(study.quantity == "accuracy") & study.arm.isin(ARMS)]
    if len(acc):
        fig = go.Figure()
        for (arm, hop), g in acc.groupby(["arm", "hop"], sort=True):
            g = g.sort_values("x")
            fig.add_trace(go.Scatter(x=g.x, y=g["mean"], error_y=err(g), mode="lines+markers",
                                     name=f"LoRA {arm}, {hop} hop(s)",
                                     line={"dash": "solid" if arm == "on" else "dot"}))  # fmt: skip
        fig.update_layout(title="Accuracy vs loops at test (mean, 95 % CI)", height=380,
                          xaxis_title="loops", yaxis_title="accuracy")  # fmt: skip
        figs.append(("Held-out accuracy per hop count as the loop count grows.", fig))
    return figs


def run_lora_study(
    paths: dict[tuple[str, int], Path],
    out: str | Path,
    cfg: Any,
    *,
    overwrite: bool = False,
    plotlyjs: str = "inline",
    extra_meta: dict[str, Any] | None = None,
) -> Path:
    """Analyse every (arm, seed) checkpoint and write, atomically to ``out``: ``study.parquet`` /
    ``.csv`` (:data:`STUDY_COLUMNS`), ``verdict.json``, ``report.html``, and every per-model table
    under ``tables/`` (:data:`analyze.TABLE_COLUMNS`)."""
    from mythos_lens.analyze import (
        analyze_model,
        build_report,
        concat_tables,
        peak_rss_mb,
        task_inputs,
        write_tables,
    )
    from mythos_lens.checkpoint import load_checkpoint, load_task, read_config

    t0 = time.perf_counter()
    arm_of, seed_of = _arm_seed(paths)
    atomic = AtomicDir(out, overwrite)
    with atomic as tmp:
        per_model = []
        for (arm, seed), p in sorted(paths.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            model = load_checkpoint(p)
            task = load_task(p)
            inputs = task_inputs(task, cfg.n_examples, cfg.seed, cfg.hops)
            print(f"analysing {p.name} (LoRA {arm}, seed {seed}) ...", flush=True)
            per_model.append(analyze_model(model, inputs, cfg, p.name))
        tables = concat_tables(per_model)
        (tmp / "tables").mkdir()
        write_tables(tables, tmp / "tables")
        q = model_quantities(tables)
        q = pd.concat([q, loop_mean_quantities(q)], ignore_index=True)
        study = aggregate(q, arm_of, seed_of)
        study.to_parquet(tmp / "study.parquet", index=False)
        study.to_csv(tmp / "study.csv", index=False)
        pd.DataFrame([{"quantity": k, "meaning": v[0], "x": v[1]} for k, v in
                      QUANTITIES.items()]).to_csv(tmp / "study_quantities.csv", index=False)  # fmt: skip
        ab = tables["ablation"]
        off_names = [n for n, a in arm_of.items() if a == "off"]
        off = ab[ab.checkpoint.isin(off_names) & ab.metric.isin(["kl", "top1_changed",
                                                                  "delta_acc"])]  # fmt: skip
        off_zero = bool(len(off) and (off["value"] == 0).all())
        verdict = lora_verdict(study, off_zero)
        train_info = {}
        for (arm, seed), p in paths.items():
            mpath = p / "metrics.json"
            m = json.loads(mpath.read_text()) if mpath.is_file() else {}
            train_info[p.name] = {"arm": arm, "seed": seed,
                                  "steps": m.get("steps"), "train_seconds": m.get("train_seconds"),
                                  "heldout_accuracy": m.get("heldout_accuracy"),
                                  "preset": (read_config(p).get("metadata", {})
                                             .get("train_config", {}) or {}).get("name")}  # fmt: skip
        meta = {
            "checkpoints": {k: str(v) for k, v in sorted((p.name, p) for p in paths.values())},
            "models": train_info,
            "analyze_config": dataclasses.asdict(cfg),
            "seconds": round(time.perf_counter() - t0, 1),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "torch_threads": torch.get_num_threads(),
            **(extra_meta or {}),
        }
        verdict["analysis_seconds"] = meta["seconds"]
        (tmp / "verdict.json").write_text(json.dumps(verdict, indent=1))
        atomic.write_run(json.loads(json.dumps(meta, default=str)))
        summary = [f"<b>Verdict</b>: {verdict['overall']}"]
        summary += [f"{v['what']}: {v['estimate']} — {v['reading']}"
                    for v in verdict["lines"].values()]  # fmt: skip
        summary.append(
            "LoRA-off ablation effects are exactly zero: "
            + ("yes (checked on every LoRA-off model)" if off_zero else "NO — check the models")
        )
        key = study[study.quantity.isin(["cka_dh_mean", "cka_h_mean", "router_overlap_excess_mean",
                                         "ablate_all_dkl", "mean_scale_dkl", "ablate_all_dacc",
                                         "mean_scale_dacc"])
                    | ((study.quantity == "loop_id_acc")
                       & (study.variant == "resid_post/no_loop_emb"))]  # fmt: skip
        extra = ("<section id='study'><h2>Study table (key rows; all rows in study.csv)</h2>"
                 + key.to_html(index=False, float_format=lambda x: f"{x:.4g}", border=0,
                               classes="t") + "</section>")  # fmt: skip
        html = build_report(tables, meta, title="mythos-lens study: does depth-wise LoRA "
                            "differentiate iterations?", plotlyjs=plotlyjs, extra_html=extra,
                            summary=summary, figures=study_figures(study))  # fmt: skip
        (tmp / "report.html").write_text(html, encoding="utf-8")
    return Path(out)


# ----------------------------------------------------------------------------- study depth


def _group(name: str) -> str:
    """Checkpoint name without its ``-s<seed>`` suffix (the recipe it shares with other seeds)."""
    head, _, tail = name.rpartition("-s")
    return head if head and tail.isdigit() else name


def run_depth_study(
    checkpoints: Sequence[str | Path],
    out: str | Path,
    cfg: Any,
    *,
    overwrite: bool = False,
    plotlyjs: str = "inline",
) -> Path:
    """Accuracy over hops × loops per checkpoint (``depth``), cells marked (``depth_marks``:
    helps / flat / hurts vs the previous loop count, best, overthinking), and the mean over seeds
    of each recipe with a 95 % t-interval (``depth_seeds``: ``group, hops, n_loops, n, mean,
    ci_low, ci_high``). Written atomically to ``out`` with ``report.html``."""
    import plotly.graph_objects as go

    from mythos_lens.analyze import (
        build_report,
        depth_marks,
        depth_statements,
        depth_table,
        peak_rss_mb,
    )
    from mythos_lens.checkpoint import load_checkpoint, load_task

    t0 = time.perf_counter()
    atomic = AtomicDir(out, overwrite)
    with atomic as tmp:
        frames = []
        for ck in checkpoints:
            ck = Path(ck)
            model, task = load_checkpoint(ck), load_task(ck)
            if task is None:
                raise MythosLensError(f"{ck} records no task", "a checkpoint trained on a task")
            n_loops = cfg.n_loops or model.cfg.max_loop_iters
            print(f"depth table of {ck.name} ...", flush=True)
            frames.append(depth_table(model, task, cfg, n_loops, ck.name))
        depth = pd.concat(frames, ignore_index=True)
        marks = depth_marks(depth)
        rows = []
        for (grp, hop, n), g in depth.assign(group=depth.checkpoint.map(_group)).groupby(
            ["group", "hops", "n_loops"], sort=True
        ):
            m, lo, hi, k = t_interval(g["accuracy"].to_numpy())
            rows.append({"group": grp, "hops": hop, "n_loops": n, "n": k, "mean": m,
                         "ci_low": lo, "ci_high": hi})  # fmt: skip
        seeds = pd.DataFrame(rows)
        for name, df in (("depth", depth), ("depth_marks", marks), ("depth_seeds", seeds)):
            df.to_parquet(tmp / f"{name}.parquet", index=False)
            df.to_csv(tmp / f"{name}.csv", index=False)
        figs = []
        for grp, g in seeds.groupby("group", sort=False):
            grid = g.pivot(index="hops", columns="n_loops", values="mean")
            mk = marks[marks.checkpoint.map(_group) == grp]
            over = mk.groupby(["hops", "n_loops"])["overthinking"].mean().unstack()
            helps = (mk.assign(h=mk["mark"] == "helps").groupby(["hops", "n_loops"])["h"].mean()
                     .unstack())  # fmt: skip
            text = [[f"{grid.iloc[i, j]:.2f}" + ("↑" if helps.iloc[i, j] >= 0.5 else "")
                     + ("▼" if over.iloc[i, j] >= 0.5 else "") for j in range(grid.shape[1])]
                    for i in range(grid.shape[0])]  # fmt: skip
            fig = go.Figure(go.Heatmap(z=grid.to_numpy(float), x=grid.columns, y=grid.index,
                                       zmin=0, zmax=1, text=text, texttemplate="%{text}",
                                       colorbar={"title": "accuracy"}))  # fmt: skip
            fig.update_layout(title=f"{grp}: accuracy, hops × loops (mean over "
                              f"{int(g.n.max())} seed(s)); ↑ more loops help, ▼ overthinking",
                              xaxis_title="loops at test", yaxis_title="hops")  # fmt: skip
            figs.append((f"{grp}: held-out accuracy; ↑ = significantly above the previous loop "
                         "count, ▼ = significantly below the row's best at a higher loop count "
                         "(in at least half of the seeds).", fig))  # fmt: skip
        meta = {"checkpoints": [str(c) for c in checkpoints],
                "config": dataclasses.asdict(cfg),
                "seconds": round(time.perf_counter() - t0, 1),
                "peak_rss_mb": round(peak_rss_mb(), 1)}  # fmt: skip
        atomic.write_run(json.loads(json.dumps(meta, default=str)))
        html = build_report({"depth": depth}, meta, title="mythos-lens study: depth extrapolation",
                            plotlyjs=plotlyjs, summary=depth_statements(depth),
                            figures=figs)  # fmt: skip
        (tmp / "report.html").write_text(html, encoding="utf-8")
    return Path(out)


# ------------------------------------------------------------------------------------- CLI


def _study(args: argparse.Namespace) -> int:
    from mythos_lens.analyze import config_from_args, peak_rss_mb
    from mythos_lens.cli import parse_ints

    torch.set_num_threads(args.threads or 1)
    cfg = config_from_args(args)
    t0 = time.perf_counter()
    if args.study == "depth":
        cks = args.checkpoints or [str(p) for p in sorted(Path(args.dir).glob("*"))
                                   if (p / "model.safetensors").is_file()]  # fmt: skip
        if not cks:
            raise MythosLensError(f"no checkpoint under {args.dir}", "checkpoint directories")
        out = run_depth_study(cks, args.out, cfg, overwrite=args.overwrite,
                              plotlyjs=args.plotlyjs)  # fmt: skip
        print(f"wrote {out} in {time.perf_counter() - t0:.1f} s, peak RSS {peak_rss_mb():.0f} MB")
        return 0
    seeds = parse_ints(args.seeds)
    if args.reuse:
        paths = reuse_models(args.dir, seeds)
    else:
        paths = train_study_models(seeds or [0, 1, 2], args.dir, jobs=args.jobs)
    train_s = time.perf_counter() - t0
    out = run_lora_study(paths, args.out, cfg, overwrite=args.overwrite, plotlyjs=args.plotlyjs,
                         extra_meta={"train_wall_seconds": round(train_s, 1),
                                     "reuse": bool(args.reuse)})  # fmt: skip
    verdict = json.loads((out / "verdict.json").read_text())
    print(f"verdict ({verdict['n_seed_pairs']} seed pair(s)): {verdict['overall']}")
    for v in verdict["lines"].values():
        print(f"  {v['what']}: {v['estimate']} — {v['reading']}")
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s (training {train_s:.1f} s), "
          f"peak RSS {peak_rss_mb():.0f} MB")  # fmt: skip
    return 0


def add_study_command(sub: argparse._SubParsersAction) -> None:
    """``mythos-lens study lora|depth``."""
    from mythos_lens.analyze import add_analysis_options

    p = sub.add_parser("study", help="flagship studies: LoRA differentiation, depth extrapolation")
    ssub = p.add_subparsers(dest="study", required=True)
    q = ssub.add_parser("lora", help="LoRA-on vs LoRA-off across seeds, with 95 %% intervals")
    q.add_argument("--out", required=True, help="output directory (written atomically)")
    q.add_argument("--reuse", action="store_true",
                   help="use shipped pointer-lora-{on,off}[-sN] from --dir instead of training")  # fmt: skip
    q.add_argument("--seeds", default=None, help="seeds, e.g. 0-2 (default 0-2; --reuse: all)")
    q.add_argument("--dir", default=None,
                   help="checkpoints: trained into / read from here (default runs/study/"
                   "checkpoints; with --reuse data/checkpoints)")  # fmt: skip
    q.add_argument("--jobs", type=int, default=2, help="training processes at a time")
    add_analysis_options(q, n_default=512)
    q.set_defaults(handler=_study_lora_defaults)
    d = ssub.add_parser("depth", help="accuracy over hops × loops, marked help/flat/overthinking")
    d.add_argument("checkpoints", nargs="*", help="checkpoint dirs (default: every one in --dir)")
    d.add_argument("--dir", default="data/checkpoints")
    d.add_argument("--out", required=True)
    add_analysis_options(d, n_default=512)
    d.set_defaults(handler=_study)


def _study_lora_defaults(args: argparse.Namespace) -> int:
    if args.dir is None:
        args.dir = "data/checkpoints" if args.reuse else "runs/study/checkpoints"
    return _study(args)
