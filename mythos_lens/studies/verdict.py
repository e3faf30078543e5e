"""The LoRA study's verdict, derived by fixed rules from the endpoint, control and pair tables."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mythos_lens.studies.design import LoraStudyDesign


def _fmt(x: float | None, spec: str = "+.3f") -> str:
    return "n/a" if x is None or not np.isfinite(x) else format(x, spec)


def jsonable(x: Any) -> Any:
    """`x` with numpy scalars as Python numbers and NaN / inf as None (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def _endpoint(r: pd.Series) -> dict[str, Any]:
    out = {k: (None if isinstance(v, float) and not np.isfinite(v) else v)
           for k, v in r.items()}  # fmt: skip
    expected = r["differentiation_sign"]
    out["direction"] = ("differentiating" if (r["mean_diff"] < 0) == (expected == "-")
                        else "opposite")  # fmt: skip
    return out


def lora_verdict(
    endpoints: pd.DataFrame,
    control_tests: pd.DataFrame,
    descriptives: pd.DataFrame,
    pairs: pd.DataFrame,
    design: LoraStudyDesign,
) -> dict[str, Any]:
    """The answer and every number it rests on.

    Rules (fixed with the design): the primary endpoint decides the representational answer —
    detected in the differentiating direction → "yes"; detected the other way → "no, the
    opposite"; not detected → "not detected", qualified by the positive control (the smallest
    planted size whose distinct-vs-same difference the primary detects); too few seed pairs for
    the test to reach α at all (the quick design) → "not decidable". The functional answer
    comes from ``rows_vs_permutations`` (Holm-adjusted): the learned row order beats random
    orders → the models depend on which row sits at which loop."""
    ep = {r.endpoint: _endpoint(r) for _, r in endpoints.iterrows()}
    prim = ep[design.primary]
    n = int(prim["n"])
    pc = control_tests[control_tests.endpoint == design.primary].sort_values("size")
    seen = pc[pc["detected"].fillna(False).astype(bool)] if "detected" in pc else pc.iloc[:0]
    min_size = float(seen["size"].min()) if len(seen) else None
    ci = (f"{_fmt(prim['mean_diff'])} [bootstrap over seeds {_fmt(prim['ci_low'])}, "
          f"{_fmt(prim['ci_high'])}; over seeds × examples {_fmt(prim['hb_low'])}, "
          f"{_fmt(prim['hb_high'])}], exact sign-flip p = {_fmt(prim['p_value'], '.4g')}, "
          f"n = {n} seed pairs")  # fmt: skip
    detected = prim["decision"] == "detected"
    underpowered = prim.get("min_p") is not None and prim["min_p"] > design.alpha
    if prim["decision"].startswith("not estimable"):
        label = ("Not estimable: fewer than 2 seed pairs have two adjacent loops that matter in "
                 "both arms")  # fmt: skip
    elif underpowered:
        label = (f"Not decidable with {n} seed pairs: the smallest p their sign-flip test can "
                 f"return is {prim['min_p']:.3g} > α = {design.alpha:g}, so this run gives effect "
                 "sizes only (the full design decides)")  # fmt: skip
    elif detected and prim["direction"] == "differentiating":
        label = "Yes: with depth-wise LoRA successive loop updates are less alike"
    elif detected:
        label = "No, the opposite: with depth-wise LoRA successive loop updates are more alike"
    elif min_size is not None and min_size <= 1.0:
        label = ("Not detected, although the study could see it: a planted per-loop difference "
                 "as large as LoRA's own is detected, the learned LoRA's is not")  # fmt: skip
    elif min_size is not None:
        label = (f"Not detected; the study detects a planted per-loop difference only at "
                 f"{min_size:g}× LoRA's size, so smaller effects remain possible")  # fmt: skip
    else:
        label = ("Inconclusive: no effect detected, and the primary endpoint does not detect "
                 "even the planted differentiation (positive control)")  # fmt: skip
    func = ep.get("rows_vs_permutations")
    functional = bool(func and func["decision"] == "detected"
                      and func["direction"] == "differentiating")  # fmt: skip
    parts = [f"Primary endpoint (on − off, {prim['meaning']}): {ci}: {prim['decision']}."]
    if func is not None:
        parts.append(
            "Functionally, the learned order of the per-loop rows "
            + ("matters: " if functional else "is not shown to matter: ")
            + f"answer loss with the learned rows minus random row orders {_fmt(func['mean_diff'])} "
            f"[{_fmt(func['ci_low'])}, {_fmt(func['ci_high'])}], Holm p = {_fmt(func['p_holm'], '.4g')}."
        )
    others = [e for e in ep.values() if e["role"] == "secondary" and e["decision"] == "detected"
              and e["endpoint"] != "rows_vs_permutations"]  # fmt: skip
    if others:
        parts.append("Other secondary endpoints detected (Holm): " + "; ".join(
            f"{e['endpoint']} {_fmt(e['mean_diff'])} ({e['direction']}, p_holm = "
            f"{_fmt(e['p_holm'], '.3g')})" for e in others) + ".")  # fmt: skip
    for _, r in pc.iterrows():
        parts.append(f"Positive control at {r['size']:g}× LoRA's delta size: planted distinct − "
                     f"same rows moves the primary by {_fmt(r['mean_diff'])} "
                     f"(p = {_fmt(r.get('p_value'), '.3g')}): "
                     + ("detected." if r.get("detected") else "not detected."))  # fmt: skip
    used = pairs[pairs.used].seed.nunique()
    replaced = sorted(pairs[~pairs.used].seed.unique().tolist())
    parts.append(f"{used} seed pairs met the stopping criterion"
                 + (f"; seed(s) {replaced} missed it and were replaced." if replaced else "."))  # fmt: skip

    def desc(measure: str, arm: str) -> dict[str, Any] | None:
        r = descriptives[(descriptives.measure == measure) & (descriptives.arm == arm)]
        return None if r.empty else {k: r.iloc[0][k] for k in ("mean", "ci_low", "ci_high", "n")}

    return jsonable({
        "question": "does depth-wise LoRA differentiate loop iterations?",
        "verdict": label,
        "functional_differentiation": functional,
        "statement": " ".join([label + "."] + parts),
        "n_seed_pairs": n,
        "replaced_seeds": replaced,
        "primary": prim,
        "endpoints": ep,
        "control_min_detected_size": min_size,
        "lora_use": {m: desc(m, "on") for m in ("log10_kl_lora_removed",
                                                 "delta_acc_lora_removed", "lora_delta_norm")},
        "loops_that_matter": {a: desc("n_matter", a) for a in ("on", "off")},
        "act_weight_sum": {a: desc("act_weight_sum", a) for a in ("on", "off")},
        "accuracy": {a: desc("accuracy", a) for a in ("on", "off")},
        "design": design.name,
    })  # fmt: skip


def lora_verdict_v2(
    endpoints: pd.DataFrame,
    control_tests: pd.DataFrame,
    uses: pd.DataFrame,
    descriptives: pd.DataFrame,
    pairs: pd.DataFrame,
    design: LoraStudyDesign,
) -> dict[str, Any]:
    """Design v2's answer, by rules fixed with the design (``studies/design.py``):

    1. The positive control must fire: the primary detects (``control_tests``, a sensitivity
       curve over the on models) a dose of the learned row differences below 1 — less than
       training produced. Otherwise: "Inconclusive".
    2. The population test: the primary's on − off, exact two-sided sign-flip over seed pairs.
       Too few pairs to reach α → "Not decidable"; detected in the differentiating direction
       with a material mean (≥ the design's KL threshold for a KL endpoint) → "Yes"; detected
       but immaterial → "Detected but immaterial"; the other way → "No, the opposite";
       otherwise "Not detected" (the control says how small an effect could still be seen).
    3. Per model: k of n LoRA-on models use loop-specific LoRA (material and beyond their
       example-level null), with an exact binomial interval, beside 0 of n off models expected.
    """
    from probes.sensitivity import proportion_interval

    ep = {r.endpoint: _endpoint(r) for _, r in endpoints.iterrows()}
    prim = ep[design.primary]
    n = int(prim["n"])
    ct = control_tests.sort_values("size")
    seen = ct[ct["detected"].fillna(False).astype(bool)]
    min_dose = float(seen["size"].min()) if len(seen) else None
    control_fires = min_dose is not None and min_dose < 1.0
    underpowered = prim.get("min_p") is not None and prim["min_p"] > design.alpha
    detected = prim["decision"] == "detected"
    material = prim["mean_diff"] is not None and (
        prim["mean_diff"] >= design.materiality_kl if design.primary.startswith("kl_")
        else prim["mean_diff"] <= design.materiality_acc)  # fmt: skip
    on = uses[uses.arm == "on"]
    off = uses[uses.arm == "off"]
    share = (proportion_interval(int(on.uses_loop_specific_lora.sum()), len(on))
             if len(on) else None)  # fmt: skip
    if not control_fires:
        label = ("Inconclusive: the primary endpoint does not detect even the on models' own "
                 "learned row differences scaled below what training produced")  # fmt: skip
    elif underpowered:
        label = (f"Not decidable with {n} seed pairs: the smallest p their sign-flip test can "
                 f"return is {prim['min_p']:.3g} > α = {design.alpha:g}")  # fmt: skip
    elif detected and prim["direction"] == "differentiating" and material:
        label = (
            "Yes: with depth-wise LoRA the answer depends on which loop is which — "
            "collapsing the loops' identities changes it materially more than without"
        )
    elif detected and prim["direction"] == "differentiating":
        label = ("Detected but immaterial: LoRA-on models depend on loop identity more than "
                 "LoRA-off models, by less than the materiality threshold")  # fmt: skip
    elif detected:
        label = "No, the opposite: LoRA-off models depend on loop identity more"
    else:
        label = (f"Not detected, although the primary sees {min_dose:g}× the learned "
                 "differentiation in the on models")  # fmt: skip
    ci = (f"{_fmt(prim['mean_diff'], '.4g')} [bootstrap over seeds {_fmt(prim['ci_low'], '.4g')}, "
          f"{_fmt(prim['ci_high'], '.4g')}], exact sign-flip p = {_fmt(prim['p_value'], '.4g')}, "
          f"n = {n} seed pairs")  # fmt: skip
    parts = [f"Primary endpoint (on − off, {prim['meaning']}): {ci}: {prim['decision']}."]
    if share is not None:
        parts.append(
            f"Per model: {share['k']} of {share['n']} LoRA-on models use loop-specific LoRA "
            f"(collapsing every loop's row to the mean costs KL ≥ {design.materiality_kl:g} or "
            f"≥ {-design.materiality_acc * 100:g} accuracy points, beyond the example-level null):"
            f" {share['share']:.2f}, 95 % exact interval [{share['low']:.2f}, {share['high']:.2f}]"
            f"; LoRA-off models: {int(off.uses_loop_specific_lora.sum())} of {len(off)}."
        )
    for _, r in ct.iterrows():
        parts.append(f"Positive control, learned row differences × {r['size']:g} (output KL "
                     f"{_fmt(r['output_kl'], '.3g')}): primary moves by "
                     f"{_fmt(r['mean_response'], '.4g')} against a spread of "
                     f"{_fmt(r['spread'], '.3g')} (p = {_fmt(r['p_value'], '.3g')}): "
                     + ("detected." if r["detected"] else "not detected."))  # fmt: skip
    used = pairs[pairs.used].seed.nunique()
    replaced = sorted(pairs[~pairs.used].seed.unique().tolist())
    parts.append(f"{used} seed pairs met the stopping criterion"
                 + (f"; seed(s) {replaced} missed it and were replaced." if replaced else "."))  # fmt: skip

    def desc(measure: str, arm: str) -> dict[str, Any] | None:
        r = descriptives[(descriptives.measure == measure) & (descriptives.arm == arm)]
        return None if r.empty else {k: r.iloc[0][k] for k in ("mean", "ci_low", "ci_high", "n")}

    return jsonable({
        "question": "does depth-wise LoRA differentiate loop iterations?",
        "verdict": label,
        "statement": " ".join([label + "."] + parts),
        "n_seed_pairs": n,
        "replaced_seeds": replaced,
        "primary": prim,
        "endpoints": ep,
        "control_min_detected_dose": min_dose,
        "uses_loop_specific_lora": share,
        "off_models_using": int(off.uses_loop_specific_lora.sum()),
        "accuracy": {a: desc("accuracy", a) for a in ("on", "off")},
        "design": design.name,
        "materiality_kl": design.materiality_kl,
        "materiality_acc": design.materiality_acc,
    })  # fmt: skip
