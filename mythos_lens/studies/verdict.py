"""The LoRA study's verdict, derived line by line from the study table's intervals."""

from __future__ import annotations

from typing import Any

import pandas as pd

from mythos_lens.studies.stats import format_interval, interval_sign, study_cell


def lora_verdict(study: pd.DataFrame, off_exact_zero: bool) -> dict[str, Any]:
    """Evidence lines and an overall verdict, each derived from the study's intervals.

    Lines: (1) LoRA is used — ΔKL of ablating it everywhere (on arm) has an interval above 0;
    (2) its per-loop *differences* are used — ΔKL of replacing every loop's scale by the mean;
    (3–5) loops are less alike with LoRA — paired on − off differences of mean adjacent CKA of
    Δh_t, of router overlap excess, and of the loop-identity probe without loop-embedding channels.
    """
    lines: dict[str, dict[str, Any]] = {}

    def line(key: str, r: pd.Series | None, text: str, positive_means: str, negative_means: str):
        s = interval_sign(r)
        lines[key] = {"estimate": format_interval(r, 4), "sign": s,
                      "reading": positive_means if s > 0 else negative_means if s < 0
                      else "interval contains 0: no detectable effect at this n",
                      "what": text}  # fmt: skip

    line("lora_used", study_cell(study, "ablate_all_dkl", "on"),
         "KL(base ‖ LoRA ablated at every loop), LoRA-on", "LoRA changes the output", "")  # fmt: skip
    line("lora_used_acc", study_cell(study, "ablate_all_dacc", "on"),
         "Δ accuracy, LoRA ablated at every loop, LoRA-on", "ablating LoRA raises accuracy",
         "ablating LoRA lowers accuracy")  # fmt: skip
    line("differentiation_used", study_cell(study, "mean_scale_dkl", "on"),
         "KL(base ‖ every loop's LoRA scale set to the mean), LoRA-on",
         "the per-loop scale differences change the output", "")  # fmt: skip
    line("differentiation_acc", study_cell(study, "mean_scale_dacc", "on"),
         "Δ accuracy, every loop's scale set to the mean, LoRA-on",
         "mean scale raises accuracy", "the per-loop differences matter for accuracy")  # fmt: skip
    line("cka_dh", study_cell(study, "cka_dh_mean", "on-off"),
         "on − off, mean over t of CKA(Δh_t, Δh_t+1)", "LoRA makes successive steps MORE alike",
         "LoRA makes successive steps less alike")  # fmt: skip
    line("cka_h", study_cell(study, "cka_h_mean", "on-off"),
         "on − off, mean over t of CKA(h_t, h_t+1)", "states more alike with LoRA",
         "states less alike with LoRA")  # fmt: skip
    line("router", study_cell(study, "router_overlap_excess_mean", "on-off"),
         "on − off, mean over t of router overlap@k(t, t+1) − k/E",
         "LoRA makes adjacent loops share MORE experts", "LoRA makes adjacent loops share fewer "
         "experts")  # fmt: skip
    line("loop_id", study_cell(study, "loop_id_acc", "on-off", variant="resid_post/no_loop_emb"),
         "on − off, loop-identity probe accuracy on h_t without the loop-embedding channels",
         "loop identity is more decodable with LoRA", "loop identity is less decodable with LoRA")  # fmt: skip

    def positive_in_every_seed(q: str) -> bool:
        r = study_cell(study, q, "on")
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
