"""Across seeds: means with Student-t intervals and paired on - off differences."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from mythos_lens.studies.models import ARMS


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


def study_cell(study: pd.DataFrame, quantity: str, arm: str, **kw: Any) -> pd.Series | None:
    sub = study[(study.quantity == quantity) & (study.arm == arm)]
    for k, v in kw.items():
        sub = sub[sub[k] == v]
    return None if sub.empty else sub.iloc[0]


def format_interval(r: pd.Series | None, nd: int = 3) -> str:
    if r is None:
        return "n/a"
    if not np.isfinite(r.ci_low):
        return f"{r['mean']:.{nd}f} (n={int(r.n)}, no interval)"
    return f"{r['mean']:.{nd}f} [{r.ci_low:.{nd}f}, {r.ci_high:.{nd}f}] (n={int(r.n)})"


def interval_sign(r: pd.Series | None) -> int:
    """+1 / −1 if the interval excludes 0 above / below, 0 if it contains 0 or is missing."""
    if r is None or not np.isfinite(r.ci_low):
        return 0
    return 1 if r.ci_low > 0 else (-1 if r.ci_high < 0 else 0)
