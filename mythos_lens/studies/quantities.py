"""Per-model quantities of the LoRA study, read from the analysis tables: one value per
(checkpoint, quantity, x, hop)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

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


def loop_mean_quantities(q: pd.DataFrame, loops: Sequence[int] | None = None) -> pd.DataFrame:
    """Per checkpoint, the mean over loop pairs t of the adjacent-loop quantities (cka_h, cka_dh,
    cka_block_out, router_overlap_excess), as extra quantities ``<name>_mean`` with x = -1."""
    sel = q[q.quantity.isin(["cka_h", "cka_dh", "cka_block_out", "router_overlap_excess"])]
    if loops is not None:
        sel = sel[sel.x.isin(list(loops))]
    g = sel.groupby(["checkpoint", "quantity"], as_index=False)["value"].mean()
    g["quantity"] = g["quantity"] + "_mean"
    return g.assign(variant="", x=-1, hop=-1)[list(q.columns)]
