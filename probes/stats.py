"""Seed-level statistics for paired studies (LoRA on vs off over seed pairs) and within-model nulls.

- ``paired_sign_flip_test``: permutation test on per-seed differences (exact for n <= 16);
- ``holm``: Holm–Bonferroni step-down adjusted p-values;
- ``bootstrap_ci`` (over seeds), ``hierarchical_bootstrap`` and ``paired_hierarchical_bootstrap``
  (seeds, then examples within each seed);
- ``permutation_null``: Monte Carlo p-value of an observed effect against null effects;
- ``random_permutations``, ``equal_norm_random_rows``: the random controls those nulls use;
- ``stopping_criterion``: first step at which every trained depth passed a threshold k times;
- ``endpoint_table``: primary + Holm-corrected secondary endpoints in one tidy table.

Everything random takes a ``seed``: same seed, same numbers.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as _st

from mythos_lens.errors import MythosLensError, check_float, check_int
from probes._checks import as_tensor, check_finite, check_ndim

ALTERNATIVES = ("two-sided", "greater", "less")
EXACT_MAX_N = 16  # exact sign-flip enumeration up to 2^16 = 65536 flips
ENDPOINT_COLUMNS = {
    "endpoint": "endpoint name",
    "role": "primary or secondary",
    "n": "seed pairs",
    "mean_diff": "mean of the per-seed differences (on − off)",
    "ci_low": "bootstrap interval over seeds (bootstrap_ci), low",
    "ci_high": "bootstrap interval over seeds, high",
    "p_value": "sign-flip permutation p-value (paired_sign_flip_test), unadjusted",
    "p_holm": "Holm-adjusted over the secondary endpoints; the primary's own p (unadjusted)",
    "min_p": "smallest p-value the sign-flip test can return with this n",
    "decision": "detected (p_holm <= alpha) / not detected (underpowered: min_p > alpha) / "
    "not detected / not estimable (fewer than 2 finite differences)",
}


def _vector(x: Any, name: str, min_n: int = 1) -> np.ndarray:
    t = as_tensor(x, name)
    check_ndim(t, 1, name, "[n]")
    check_finite(t, name)
    if t.shape[0] < min_n:
        raise MythosLensError(f"{name} has {t.shape[0]} value(s)", f"at least {min_n}")
    return t.numpy()


def _alternative(alternative: str) -> str:
    if alternative not in ALTERNATIVES:
        raise MythosLensError(f"alternative={alternative!r}", f"one of {ALTERNATIVES}")
    return alternative


def _level(level: float) -> float:
    v = check_float("level", level, 0.0, 1.0, lo_open=True)
    if v >= 1.0:
        raise MythosLensError(f"level={v}", "a confidence level in (0, 1)")
    return v


def paired_sign_flip_test(
    diffs: Any, alternative: str = "two-sided", n_resamples: int | None = None, seed: int = 0
) -> dict[str, Any]:
    """Paired permutation test of mean(diffs) = 0 by flipping the sign of each per-seed difference.

    Uses ``scipy.stats.permutation_test(permutation_type="samples")``: all 2^n sign flips when
    ``n_resamples`` is None and n <= 16 (or ``n_resamples >= 2^n``), else ``n_resamples`` random
    flips (default 9999) drawn with ``seed``. Two-sided p is twice the smaller one-sided p (capped
    at 1); n >= 2 required. ``min_p`` is the smallest p the test can return: 1/2^n one-sided, 2/2^n two-sided when
    exact; 1/(N+1), 2/(N+1) for N Monte Carlo resamples.
    Returns ``{"statistic", "p_value", "n", "exact", "min_p"}``.
    """
    d = _vector(diffs, "diffs", min_n=2)
    alt = _alternative(alternative)
    seed = check_int("seed", seed, 0)
    n = len(d)
    if n_resamples is None:
        n_resamples = math.inf if n <= EXACT_MAX_N else 9999
    else:
        n_resamples = check_int("n_resamples", n_resamples, 1)
    exact = 2**n <= n_resamples
    res = _st.permutation_test((d,), np.mean, permutation_type="samples", vectorized=True,
                               n_resamples=n_resamples, alternative=alt, rng=seed)  # fmt: skip
    one = 1.0 / 2**n if exact else 1.0 / (n_resamples + 1)
    min_p = min(1.0, 2 * one) if alt == "two-sided" else one
    return {"statistic": float(res.statistic), "p_value": float(res.pvalue), "n": n,
            "exact": bool(exact), "min_p": min_p}  # fmt: skip


def holm(p_values: Mapping[Any, float] | Sequence[float] | np.ndarray | pd.Series) -> Any:
    """Holm–Bonferroni step-down adjusted p-values, in the shape given (dict → dict with the same
    keys, Series → Series, ndarray → ndarray, else list): the i-th smallest of m p-values becomes
    max over j <= i of (m − j + 1)·p_(j), capped at 1 (so adjusted values are monotone in p)."""
    keys = list(p_values) if isinstance(p_values, Mapping) else None
    raw = [p_values[k] for k in keys] if keys is not None else p_values
    p = np.array([check_float("p_values[...]", v, 0.0, 1.0) for v in np.asarray(raw).ravel()])
    m = len(p)
    order = np.argsort(p, kind="stable")
    adj = np.empty(m)
    adj[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    if keys is not None:
        return {k: float(a) for k, a in zip(keys, adj, strict=True)}
    if isinstance(p_values, pd.Series):
        return pd.Series(adj, index=p_values.index, name=p_values.name)
    return adj if isinstance(p_values, np.ndarray) else adj.tolist()


def bootstrap_ci(
    values: Any, level: float = 0.95, n_resamples: int = 9999, seed: int = 0, method: str = "BCa"
) -> dict[str, Any]:
    """Bootstrap interval for the mean of ``values`` (one number per seed), via
    ``scipy.stats.bootstrap`` (``method``: "BCa", "percentile" or "basic"). Equal values give the
    collapsed interval [v, v]. Returns ``{"estimate", "low", "high", "n"}``; n >= 2 required."""
    v = _vector(values, "values", min_n=2)
    level = _level(level)
    n_resamples = check_int("n_resamples", n_resamples, 1)
    seed = check_int("seed", seed, 0)
    if method not in ("BCa", "percentile", "basic"):
        raise MythosLensError(f"method={method!r}", "'BCa', 'percentile' or 'basic'")
    est = float(v.mean())
    if np.all(v == v[0]):
        return {"estimate": est, "low": est, "high": est, "n": len(v)}
    res = _st.bootstrap((v,), np.mean, n_resamples=n_resamples, confidence_level=level,
                        method=method, rng=seed, vectorized=True)  # fmt: skip
    ci = res.confidence_interval
    return {"estimate": est, "low": float(ci.low), "high": float(ci.high), "n": len(v)}


def _per_seed(x: Any, name: str) -> tuple[list[Any], list[np.ndarray]]:
    """(seed keys, 1-D arrays): a dict is read in sorted-key order, a list keeps its order."""
    if isinstance(x, Mapping):
        keys = sorted(x, key=str)
        arrays = [x[k] for k in keys]
    elif isinstance(x, (list, tuple)):
        keys, arrays = list(range(len(x))), list(x)
    else:
        raise MythosLensError(f"{name} is a {type(x).__name__}", "a dict or list of 1-D arrays")
    if not arrays:
        raise MythosLensError(f"{name} is empty", "at least one seed")
    return keys, [_vector(a, f"{name}[{k!r}]") for k, a in zip(keys, arrays, strict=True)]


def _resampled(rng: np.random.Generator, arrays: list[np.ndarray], idx: np.ndarray,
               statistic: Callable[[np.ndarray], Any]) -> np.ndarray:  # fmt: skip
    """Per bootstrap row of seed indices ``idx`` ``[B, S]``: mean over the chosen seeds of
    ``statistic`` on examples resampled with replacement within each seed."""
    out = np.empty(len(idx))
    for b, row in enumerate(idx):
        vals = [statistic(arrays[s][rng.integers(0, len(arrays[s]), len(arrays[s]))]) for s in row]
        out[b] = np.mean(vals)
    return out


def _interval(est: float, boot: np.ndarray, level: float, n: int) -> dict[str, Any]:
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return {"estimate": est, "low": float(lo), "high": float(hi), "n": n}


def hierarchical_bootstrap(
    per_seed_examples: Mapping[Any, Any] | Sequence[Any],
    statistic: Callable[[np.ndarray], Any] = np.mean,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Two-level percentile bootstrap of ``mean over seeds of statistic(examples of that seed)``.

    Each resample draws the seeds with replacement, then, within each drawn seed, its examples with
    replacement (so both the between-seed and the within-seed spread enter the interval). Input:
    a list or dict (seed → 1-D array; read in sorted-key order). Returns
    ``{"estimate", "low", "high", "n"}`` with n the number of seeds."""
    _, arrays = _per_seed(per_seed_examples, "per_seed_examples")
    n_resamples = check_int("n_resamples", n_resamples, 1)
    rng = np.random.default_rng(check_int("seed", seed, 0))
    level, s = _level(level), len(arrays)
    est = float(np.mean([statistic(a) for a in arrays]))
    boot = _resampled(rng, arrays, rng.integers(0, s, (n_resamples, s)), statistic)
    return _interval(est, boot, level, s)


def paired_hierarchical_bootstrap(
    on: Mapping[Any, Any],
    off: Mapping[Any, Any],
    statistic: Callable[[np.ndarray], Any] = np.mean,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Percentile interval for on − off, each arm summarized as in :func:`hierarchical_bootstrap`.

    ``on`` and ``off`` map the same seeds to 1-D example arrays. Seeds are resampled jointly (a
    drawn seed contributes both its on and its off model), examples within each arm
    independently. Returns ``{"estimate", "low", "high", "n"}`` for the difference."""
    if not isinstance(on, Mapping) or not isinstance(off, Mapping):
        raise MythosLensError("on/off are not both dicts", "dicts seed → 1-D array")
    if set(on) != set(off):
        raise MythosLensError(f"seeds differ: on {sorted(on, key=str)}, off {sorted(off, key=str)}",
                              "the same seeds in both arms")  # fmt: skip
    _, a_on = _per_seed(on, "on")
    _, a_off = _per_seed(off, "off")
    n_resamples = check_int("n_resamples", n_resamples, 1)
    rng = np.random.default_rng(check_int("seed", seed, 0))
    level, s = _level(level), len(a_on)
    est = float(np.mean([statistic(a) for a in a_on]) - np.mean([statistic(a) for a in a_off]))
    idx = rng.integers(0, s, (n_resamples, s))
    boot = _resampled(rng, a_on, idx, statistic) - _resampled(rng, a_off, idx, statistic)
    return _interval(est, boot, level, s)


def permutation_null(
    observed: float, null_values: Any, alternative: str = "greater"
) -> dict[str, Any]:
    """Monte Carlo p-value of ``observed`` against null effects (e.g. random permutations):
    ``(1 + #{null >= observed}) / (1 + N)`` for "greater", ``<=`` for "less", and ``|null| >=
    |observed|`` for "two-sided". Ties count against the observed value (within a relative 1e-12).
    Returns ``{"observed", "p_value", "n_null", "null_mean", "null_q95"}`` (q95: the 95th percentile
    of the null values)."""
    obs = check_float("observed", observed)
    null = _vector(null_values, "null_values")
    alt = _alternative(alternative)
    tol = 1e-12 * abs(obs)
    if alt == "greater":
        hits = null >= obs - tol
    elif alt == "less":
        hits = null <= obs + tol
    else:
        hits = np.abs(null) >= abs(obs) - tol
    p = (1 + int(hits.sum())) / (1 + len(null))
    return {"observed": obs, "p_value": p, "n_null": len(null), "null_mean": float(null.mean()),
            "null_q95": float(np.quantile(null, 0.95))}  # fmt: skip


def random_permutations(
    n_rows: int, n: int, seed: int, exclude_identity: bool = True
) -> np.ndarray:
    """``[n, n_rows]`` int64: ``n`` distinct random permutations of ``range(n_rows)``, from ``seed``.

    With ``exclude_identity`` the identity is never returned. If ``n`` is at least the number of
    permutations available (n_rows! − 1 without the identity), all of them are returned, in
    lexicographic order (so fewer than ``n`` rows, possibly 0 for n_rows = 1)."""
    n_rows = check_int("n_rows", n_rows, 1)
    n = check_int("n", n, 0)
    rng = np.random.default_rng(check_int("seed", seed, 0))
    total = math.factorial(n_rows) if n_rows <= 20 else math.inf
    skip = 1 if exclude_identity else 0
    if total <= max(5040, 2 * n):  # small: enumerate, then choose without replacement
        every = np.array(list(itertools.permutations(range(n_rows))), dtype=np.int64)[skip:]
        if n >= len(every):
            return every
        return every[rng.choice(len(every), n, replace=False)]
    seen: set[tuple[int, ...]] = set()
    out: list[np.ndarray] = []
    identity = tuple(range(n_rows))
    while len(out) < n:  # n < total / 2: each draw is new with probability > 1/2
        p = rng.permutation(n_rows)
        key = tuple(p.tolist())
        if key not in seen and not (exclude_identity and key == identity):
            seen.add(key)
            out.append(p)
    return np.array(out, dtype=np.int64).reshape(n, n_rows)


def equal_norm_random_rows(table: Any, n: int, seed: int) -> np.ndarray:
    """``[n, rows, rank]`` float64 random replacements for ``table`` ``[rows, rank]``: Gaussian
    directions (from ``seed``) scaled so that every row has the L2 norm of the same original row
    (a zero row stays zero)."""
    t = as_tensor(table, "table")
    check_ndim(t, 2, "table", "[rows, rank]")
    check_finite(t, "table")
    if min(t.shape) == 0:
        raise MythosLensError(f"table has shape {tuple(t.shape)}", "at least one row and column")
    n = check_int("n", n, 0)
    rng = np.random.default_rng(check_int("seed", seed, 0))
    x = t.numpy()
    g = rng.standard_normal((n, *x.shape))
    g /= np.linalg.norm(g, axis=-1, keepdims=True)
    return g * np.linalg.norm(x, axis=-1, keepdims=True)


def _history_rows(history: Any, acc_key: str) -> list[tuple[int, dict[str, float]]]:
    if isinstance(history, pd.DataFrame):
        missing = {"step", "depth", "acc"} - set(history.columns)
        if missing:
            raise MythosLensError(f"history lacks columns {sorted(missing)}",
                                  "a long table with columns step, depth, acc")  # fmt: skip
        return [(int(s), {str(d): float(a) for d, a in zip(g.depth, g.acc, strict=True)})
                for s, g in history.groupby("step", sort=True)]  # fmt: skip
    rows = []
    for i, e in enumerate(history):
        if not isinstance(e, Mapping) or "step" not in e or not isinstance(e.get(acc_key), Mapping):
            raise MythosLensError(f"history[{i}] = {e!r}",
                                  f'{{"step": int, "{acc_key}": {{depth: accuracy}}}}')  # fmt: skip
        step = check_int(f"history[{i}]['step']", e["step"])
        rows.append((step, {str(d): float(a) for d, a in e[acc_key].items()}))
    steps = [s for s, _ in rows]
    if len(set(steps)) != len(steps):
        raise MythosLensError("history repeats a step", "one evaluation per step")
    return sorted(rows, key=lambda r: r[0])


def stopping_criterion(
    history: Sequence[Mapping[str, Any]] | pd.DataFrame,
    threshold: float = 0.99,
    consecutive: int = 2,
    acc_key: str = "acc",
) -> dict[str, Any]:
    """First step at which every trained depth had accuracy >= ``threshold`` at ``consecutive``
    evaluations in a row.

    ``history``: a list of ``{"step": 250, "acc": {"1": 0.98, "2": 0.95}}`` (depth → accuracy;
    ``acc_key="heldout_acc"`` reads ``mythos_lens.train`` histories) or a long DataFrame with
    columns ``step, depth, acc``. Evaluations are taken in step order; the trained depths are every
    depth seen anywhere in the history, and an evaluation missing one (or NaN) fails. A failing
    evaluation resets the count. Returns ``{"reached", "step" (None if not reached),
    "evaluations"}`` where evaluations counts those read, up to and including the stopping one."""
    thr = check_float("threshold", threshold)
    k = check_int("consecutive", consecutive, 1)
    rows = _history_rows(history, acc_key)
    depths = set().union(*(acc.keys() for _, acc in rows))
    run = 0
    for i, (step, acc) in enumerate(rows):
        ok = bool(depths) and all(acc.get(d, math.nan) >= thr for d in depths)
        run = run + 1 if ok else 0
        if run >= k:
            return {"reached": True, "step": step, "evaluations": i + 1}
    return {"reached": False, "step": None, "evaluations": len(rows)}


def endpoint_table(
    diffs: Mapping[str, Any],
    primary: str,
    alpha: float = 0.05,
    alternative: str = "two-sided",
    level: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
    method: str = "BCa",
) -> pd.DataFrame:
    """One row per endpoint (primary first, then the secondaries in the order given) from
    per-seed paired differences (on − off): mean, bootstrap interval over seeds
    (:func:`bootstrap_ci`), sign-flip p (:func:`paired_sign_flip_test`, exact for n <= 16), Holm
    over the secondaries only (the pre-registered primary is tested unadjusted), and a decision
    on ``p_holm``. "not detected (underpowered: min_p > alpha)" means even the most extreme
    outcome with this n could not reach ``alpha``. Columns: :data:`ENDPOINT_COLUMNS`."""
    alpha = check_float("alpha", alpha, 0.0, 1.0, lo_open=True)
    if not isinstance(diffs, Mapping) or primary not in diffs:
        raise MythosLensError(f"primary={primary!r} is not among the endpoints",
                              "a dict endpoint → per-seed differences that holds the primary")  # fmt: skip
    names = [primary] + [e for e in diffs if e != primary]
    rows = []
    for e in names:
        role = "primary" if e == primary else "secondary"
        d = np.asarray(diffs[e], dtype=float).ravel()
        if np.isfinite(d).sum() < 2:  # e.g. a measure undefined when < 2 loops matter
            rows.append({"endpoint": e, "role": role, "n": int(np.isfinite(d).sum()),
                         "mean_diff": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                         "p_value": math.nan, "min_p": math.nan})  # fmt: skip
            continue
        ci = bootstrap_ci(diffs[e], level, n_resamples, seed, method)
        t = paired_sign_flip_test(diffs[e], alternative, seed=seed)
        rows.append({"endpoint": e, "role": role,
                     "n": t["n"], "mean_diff": ci["estimate"], "ci_low": ci["low"],
                     "ci_high": ci["high"], "p_value": t["p_value"], "min_p": t["min_p"]})  # fmt: skip
    adj = holm({r["endpoint"]: r["p_value"] for r in rows[1:] if np.isfinite(r["p_value"])})
    for r in rows:
        r["p_holm"] = adj.get(r["endpoint"], r["p_value"])
        if not np.isfinite(r["p_value"]):
            r["decision"] = "not estimable (fewer than 2 finite differences)"
        elif r["p_holm"] <= alpha:
            r["decision"] = "detected"
        elif r["min_p"] > alpha:
            r["decision"] = "not detected (underpowered: min_p > alpha)"
        else:
            r["decision"] = "not detected"
    return pd.DataFrame(rows, columns=list(ENDPOINT_COLUMNS))
