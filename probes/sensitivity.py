"""Can a metric see the effect it is meant to find? Dose-response (sensitivity) curves.

A known effect is planted at several doses in several units (seeds); at each dose every metric's
*response* is its change from dose 0 in the same unit. A metric **detects** a dose when its mean
response, in the direction the effect should move it, is at least its *spread* — the seed-to-seed
standard deviation the real comparison has to beat (e.g. of the paired on − off difference when
nothing is planted) — and the response has a consistent sign over units (sign-flip p ≤ α). A
metric that detects no dose is **blind** to the effect. The dose is a knob; what it does is read
from the output (``output_kl``, ``output_delta_acc``: KL to dose 0 and Δ accuracy at the answer),
so "the smallest dose detected" is reported as an effect on the output, not as a norm.

Also here: the per-model classification of a functional effect as *material* and beyond its
example-level null, and an exact binomial interval for "in k of n seeds".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as _st

from mythos_lens.errors import MythosLensError, check_float, check_int
from probes.stats import paired_sign_flip_test

EFFECT_METRICS = ("output_kl", "output_delta_acc")
CURVE_COLUMNS = {
    "family": "the planted effect (what the dose scales)",
    "metric": "the metric under test",
    "dose": "planted dose (0: the unmodified base)",
    "n": "units (seeds) with a value at this dose and at dose 0",
    "mean_response": "mean over units of value(dose) − value(0)",
    "sd_response": "SD over units of that response",
    "spread": "seed-to-seed SD the real comparison must beat (same for every dose)",
    "standardized": "mean response × direction / spread (inf when the spread is 0)",
    "p_value": "two-sided exact sign-flip p of the responses over units",
    "detects": "standardized ≥ 1 and p ≤ α",
    "output_kl": "median over units of KL(dose 0 ‖ dose) at the answer: the dose's effect",
    "output_delta_acc": "mean over units of accuracy(dose) − accuracy(dose 0)",
}


def _tidy(values: pd.DataFrame) -> pd.DataFrame:
    need = {"unit", "dose", "metric", "value"}
    if not isinstance(values, pd.DataFrame) or not need <= set(values.columns):
        raise MythosLensError("a dose table without columns unit, dose, metric, value",
                              "a tidy table from dose_response with a unit column")  # fmt: skip
    v = values.copy()
    if "family" not in v:
        v["family"] = "planted"
    if not (v["dose"] == 0).any():
        raise MythosLensError("no dose 0 in the dose table", "dose 0 (the unmodified base)")
    return v


def sensitivity_curve(
    values: pd.DataFrame,
    spread: Mapping[str, float],
    direction: Mapping[str, int],
    *,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """One row per family × metric × dose > 0 (columns :data:`CURVE_COLUMNS`).

    Args:
        values: tidy ``unit, dose, metric, value`` (optionally ``family``), e.g. several seeds'
            :func:`mythos_lens.dose.dose_response` tables with a ``unit`` column; it must hold
            ``output_kl`` and ``output_delta_acc`` for the effect columns.
        spread: per metric, the seed-to-seed SD its real comparison must beat (≥ 0; NaN when
            unknown, e.g. from one unit: the responses are reported, nothing is detected).
        direction: per metric, +1 or −1: the sign the response takes if the metric sees the
            planted effect. Metrics missing from `spread` or `direction` are skipped.
    """
    v = _tidy(values)
    alpha = check_float("alpha", alpha, 0.0, 1.0, lo_open=True)
    rows = []
    for (fam, metric), g in v.groupby(["family", "metric"], sort=True):
        if metric in EFFECT_METRICS or metric not in spread or metric not in direction:
            continue
        sd0 = spread[metric]  # NaN: unknown (one unit), so nothing can be called detected
        sd0 = math.nan if sd0 is None or math.isnan(sd0) else check_float(
            f"spread[{metric}]", sd0, 0.0)  # fmt: skip
        sign = int(direction[metric])
        if sign not in (-1, 1):
            raise MythosLensError(f"direction[{metric!r}]={direction[metric]!r}", "+1 or -1")
        w = g.pivot_table(index="unit", columns="dose", values="value", aggfunc="first")
        eff = v[(v.family == fam) & v.metric.isin(EFFECT_METRICS)].pivot_table(
            index="dose", columns="metric", values="value", aggfunc="median"
        )
        acc = v[(v.family == fam) & (v.metric == "output_delta_acc")].groupby("dose")["value"]
        for dose in sorted(d for d in w.columns if d != 0):
            r = (w[dose] - w[0]).dropna().to_numpy(float)
            row = {"family": fam, "metric": metric, "dose": float(dose), "n": len(r),
                   "mean_response": float(r.mean()) if len(r) else math.nan,
                   "sd_response": float(r.std(ddof=1)) if len(r) >= 2 else math.nan,
                   "spread": sd0}  # fmt: skip
            m = sign * row["mean_response"]
            row["standardized"] = m / sd0 if sd0 > 0 else (math.inf if m > 0 else 0.0)
            p = paired_sign_flip_test(r)["p_value"] if len(r) >= 2 and np.any(r != 0) else 1.0
            row["p_value"] = p
            row["detects"] = bool(row["standardized"] >= 1.0 and p <= alpha)
            row["output_kl"] = (float(eff.loc[dose, "output_kl"])
                                if "output_kl" in eff and dose in eff.index else math.nan)  # fmt: skip
            row["output_delta_acc"] = float(acc.mean().get(dose, math.nan))
            rows.append(row)
    return pd.DataFrame(rows, columns=list(CURVE_COLUMNS))


def smallest_detected(curve: pd.DataFrame, reference_dose: float = 1.0) -> pd.DataFrame:
    """Per family × metric: the smallest dose it detects, that dose's effect on the output, and
    whether it detects below `reference_dose` (e.g. what training produced) — ``blind`` when it
    detects no dose at all."""
    rows = []
    for (fam, metric), g in curve.groupby(["family", "metric"], sort=True):
        hit = g[g.detects].sort_values("dose")
        first = hit.iloc[0] if len(hit) else None
        rows.append({"family": fam, "metric": metric,
                     "smallest_dose": float(first.dose) if first is not None else math.nan,
                     "output_kl_at_smallest": float(first.output_kl) if first is not None
                     else math.nan,
                     "below_reference": bool(first is not None and first.dose < reference_dose),
                     "blind": first is None,
                     "max_standardized": float(g.standardized.max())})  # fmt: skip
    return pd.DataFrame(rows)


def spread_of(paired: pd.DataFrame) -> dict[str, float]:
    """Per metric, the SD over units of ``value`` (e.g. on − off differences with nothing
    planted): the spread :func:`sensitivity_curve` compares responses with."""
    if not {"metric", "value"} <= set(paired.columns):
        raise MythosLensError("a table without metric, value columns", "metric, value per unit")
    return {m: float(g.value.dropna().std(ddof=1)) if g.value.notna().sum() >= 2 else math.nan
            for m, g in paired.groupby("metric")}  # fmt: skip


def classify_use(
    kl: float,
    delta_acc: float,
    p_value: float,
    *,
    kl_threshold: float = 0.01,
    acc_threshold: float = -0.01,
    alpha: float = 0.05,
) -> bool:
    """Whether one model *uses* what an intervention removed: the effect is material
    (mean KL ≥ `kl_threshold` or Δ accuracy ≤ `acc_threshold`) **and** beyond its null
    (``p_value`` ≤ `alpha`, e.g. :func:`example_null_p`)."""
    kl = check_float("kl", kl, 0.0)
    delta_acc = check_float("delta_acc", delta_acc, -1.0, 1.0)
    p = check_float("p_value", p_value, 0.0, 1.0)
    return bool((kl >= kl_threshold or delta_acc <= acc_threshold) and p <= alpha)


def example_null_p(loss_increase: Any, *, n_resamples: int = 9999, seed: int = 0) -> float:
    """One-sided p that an intervention raises the answer loss, from the per-example increases
    ``[examples]`` (intervened − unmodified): random sign flips of the examples (H0: the removed
    part is not used, so increases and decreases are exchangeable)."""
    d = np.asarray(loss_increase, dtype=float).ravel()
    if len(d) < 2 or not np.all(np.isfinite(d)):
        raise MythosLensError(f"{len(d)} per-example loss increases", "≥ 2 finite values")
    if not np.any(d != 0):
        return 1.0
    res = paired_sign_flip_test(d, "greater", n_resamples=check_int("n_resamples", n_resamples, 1),
                                seed=seed)  # fmt: skip
    return float(res["p_value"])


def proportion_interval(k: int, n: int, level: float = 0.95) -> dict[str, float]:
    """``k`` of ``n`` with its exact (Clopper–Pearson) interval: ``{"k", "n", "share", "low",
    "high"}``."""
    n = check_int("n", n, 1)
    k = check_int("k", k, 0, n)
    ci = _st.binomtest(k, n).proportion_ci(confidence_level=check_float("level", level, 0, 1),
                                           method="exact")  # fmt: skip
    return {"k": k, "n": n, "share": k / n, "low": float(ci.low), "high": float(ci.high)}
