"""Linear probes per loop (scikit-learn): what can be decoded linearly from a site at each loop?

Method, per the traps in DESIGN §6:

- ``Pipeline(StandardScaler, LogisticRegression)``: standardised features, so lbfgs usually
  converges; when it does not, the ConvergenceWarnings are *counted* and reported per fold.
- Cross-validation splits **by sequence** (``GroupKFold`` on the batch index / sequence id,
  seeded shuffle), never by token: tokens of one sequence share context.
- Baselines: the majority class of the training fold, and a **control task** (Hewitt & Liang
  2019): each distinct input *type* (e.g. the token id at that position) gets one fixed random
  label drawn from the task's label distribution; ``selectivity = task − control`` accuracy.
- The loop-index embedding is added to the first ``loop_dim = d // 8`` channels of the state the
  block reads, so "which loop?" is trivially decodable there: use
  ``drop_channels=loop_channels(d)`` to probe without them.

Labels are integers; a label < 0 marks a token to leave out (e.g. positions with no answer).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from mythos_lens.errors import MythosLensError, check_int
from probes._checks import as_int_tensor, as_tensor, check_ndim

Channels = slice | Sequence[int] | np.ndarray | None
FOLD_METRICS = ("task_acc", "control_acc", "majority_acc", "selectivity")


def loop_channels(d: int) -> slice:
    """The channels that carry upstream's loop-index embedding: ``slice(0, d // 8)``."""
    return slice(0, check_int("d", d, 1) // 8)


def _keep_columns(d: int, drop: Channels) -> np.ndarray:
    keep = np.ones(d, dtype=bool)
    if drop is None:
        return keep
    try:
        keep[drop] = False
    except (IndexError, TypeError, ValueError):
        raise MythosLensError(
            f"drop_channels={drop!r}", f"a slice or channel indices < {d}"
        ) from None
    if not keep.any():
        raise MythosLensError(
            f"drop_channels={drop!r} drops all {d} channels", "some channels left"
        )
    return keep


def control_labels(types: Any, labels: Any, seed: int = 0) -> np.ndarray:
    """Hewitt & Liang control task: each distinct type gets one random label, drawn (seeded)
    from the empirical distribution of ``labels``; returns the control label of every token.

    Args:
        types: ``[n]`` integer type of each token (e.g. its input token id).
        labels: ``[n]`` task labels (>= 0) of the same tokens.
    """
    t = np.asarray(types).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if t.shape != y.shape:
        raise MythosLensError(f"types {t.shape} vs labels {y.shape}", "one type per label")
    values, counts = np.unique(y, return_counts=True)
    uniq, inv = np.unique(t, return_inverse=True)
    rng = np.random.default_rng(seed)
    per_type = rng.choice(values, size=len(uniq), p=counts / counts.sum())
    return per_type[inv]


def _fit_predict(Xtr, ytr, Xte, C, max_iter, seed) -> tuple[np.ndarray, int]:
    classes = np.unique(ytr)
    if len(classes) < 2:  # nothing to learn: the only class seen
        return np.full(len(Xte), classes[0]), 0
    clf = Pipeline(
        [
            ("scale", StandardScaler()),
            ("logreg", LogisticRegression(C=C, max_iter=max_iter, random_state=seed)),
        ]
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(Xtr, ytr)
    n_warn = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    return clf.predict(Xte), n_warn


def probe(
    X: Any,
    y: Any,
    groups: Any,
    *,
    types: Any = None,
    n_splits: int = 5,
    seed: int = 0,
    C: float = 1.0,
    max_iter: int = 1000,
    drop_channels: Channels = None,
) -> pd.DataFrame:
    """Cross-validated linear probe on flat data.

    Args:
        X: ``[n, d]`` features (one row per token).
        y: ``[n]`` integer labels; tokens with y < 0 are left out.
        groups: ``[n]`` sequence id of each token; folds never split a sequence.
        types: ``[n]`` token types for the control task (default: no control task).
        n_splits: folds (GroupKFold, shuffled with ``seed``); needs >= n_splits sequences.
        C, max_iter: LogisticRegression settings. drop_channels: feature columns to remove.

    Returns:
        Tidy ``fold, metric, value`` with metrics ``task_acc``, ``majority_acc``,
        ``control_acc`` and ``selectivity`` (with types), ``not_converged`` (ConvergenceWarnings
        in that fold, task + control fits), ``n_train``, ``n_test``.
    """
    X = as_tensor(X, "X").numpy()
    y = as_int_tensor(y, "y").numpy().reshape(-1)
    g = np.asarray(as_int_tensor(groups, "groups")).reshape(-1)
    if X.ndim != 2:
        raise MythosLensError(f"X has shape {X.shape}", "[n, d]")
    if not (len(X) == len(y) == len(g)):
        raise MythosLensError(f"X {len(X)} rows, y {len(y)}, groups {len(g)}", "one per token")
    if not np.isfinite(X).all():
        raise MythosLensError("X holds NaN/inf", "finite features")
    n_splits = check_int("n_splits", n_splits, 2)
    X = X[:, _keep_columns(X.shape[1], drop_channels)]
    keep = y >= 0
    tt = None
    if types is not None:
        tt = np.asarray(as_int_tensor(types, "types")).reshape(-1)
        if len(tt) != len(y):
            raise MythosLensError(
                f"types has {len(tt)} entries for {len(y)} tokens", "one per token"
            )
        tt = tt[keep]
    X, y, g = X[keep], y[keep], g[keep]
    if len(np.unique(g)) < n_splits:
        raise MythosLensError(
            f"{len(np.unique(g))} sequences with labels", f">= n_splits={n_splits} sequences"
        )
    yc = control_labels(tt, y, seed) if tt is not None else None
    rows = []
    cv = GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for fold, (tr, te) in enumerate(cv.split(X, y, g)):
        pred, nw = _fit_predict(X[tr], y[tr], X[te], C, max_iter, seed)
        vals = {"task_acc": float((pred == y[te]).mean())}
        vals_, counts = np.unique(y[tr], return_counts=True)
        vals["majority_acc"] = float((y[te] == vals_[np.argmax(counts)]).mean())
        if yc is not None:
            pc, nwc = _fit_predict(X[tr], yc[tr], X[te], C, max_iter, seed)
            vals["control_acc"] = float((pc == yc[te]).mean())
            vals["selectivity"] = vals["task_acc"] - vals["control_acc"]
            nw += nwc
        vals.update(not_converged=float(nw), n_train=float(len(tr)), n_test=float(len(te)))
        rows += [{"fold": fold, "metric": k, "value": v} for k, v in vals.items()]
    return pd.DataFrame(rows, columns=["fold", "metric", "value"])


def _site(acts: Any) -> torch.Tensor:
    a = as_tensor(acts, "acts")
    check_ndim(a, 4, "acts", "[loop, batch, pos, d]")
    return a


def _per_token(x: Any, name: str, L: int, B: int, P: int, allow_loop: bool) -> torch.Tensor:
    """Labels/types as ``[loop, batch, pos]`` (broadcast from ``[batch, pos]``)."""
    t = as_int_tensor(x, name)
    if t.shape == (B, P):
        return t.unsqueeze(0).expand(L, B, P)
    if allow_loop and t.shape == (L, B, P):
        return t
    want = f"[{B}, {P}] [batch, pos]" + (f" or [{L}, {B}, {P}]" if allow_loop else "")
    raise MythosLensError(f"{name} has shape {tuple(t.shape)}", want)


def probe_per_loop(
    acts: Any,
    labels: Any,
    *,
    types: Any = None,
    label_name: str = "label",
    loops: Sequence[int] | None = None,
    **kw: Any,
) -> pd.DataFrame:
    """One probe per loop on a site.

    Args:
        acts: ``[loop, batch, pos, d]`` (e.g. ``trace.loop["resid_post"]``).
        labels: ``[batch, pos]`` (same label at every loop) or ``[loop, batch, pos]``;
            label < 0 = leave the token out.
        types: ``[batch, pos]`` control-task types (typically ``input_ids`` at the kept
            positions); None = no control task.
        label_name: value of the ``label`` column. loops: subset of loops (default all).
        **kw: passed to :func:`probe` (n_splits, seed, C, max_iter, drop_channels).

    Returns:
        Tidy ``label, loop, fold, metric, value`` (see :func:`probe`); sequences = batch rows.
    """
    a = _site(acts)
    L, B, P, d = a.shape
    y = _per_token(labels, "labels", L, B, P, allow_loop=True)
    tt = _per_token(types, "types", L, B, P, allow_loop=False)[0] if types is not None else None
    groups = torch.arange(B).unsqueeze(1).expand(B, P).reshape(-1)
    frames = []
    for t in range(L) if loops is None else loops:
        if not 0 <= t < L:
            raise MythosLensError(f"loop {t}", f"loops in [0, {L})")
        df = probe(a[t].reshape(-1, d), y[t].reshape(-1), groups,
                   types=None if tt is None else tt.reshape(-1), **kw)  # fmt: skip
        df.insert(0, "loop", t)
        frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    out.insert(0, "label", label_name)
    return out


LOOP_FEATURES = ("raw", "direction", "log_norm")


def probe_loop_index(
    acts: Any, *, types: Any = None, mask: Any = None, features: str = "raw", **kw: Any
) -> pd.DataFrame:
    """Decode "which loop is this?" from states pooled over loops.

    Each token contributes one row per loop, labelled with the loop index; folds still split by
    sequence. Pass ``drop_channels=loop_channels(d)`` to remove the loop-embedding channels.
    ``features`` controls for the state's size, which alone can tell loops apart: ``raw``;
    ``direction`` (each state divided by its norm: what the direction says); ``log_norm`` (the
    one feature log‖h‖: what the size alone says — the baseline ``direction`` must beat).

    Args:
        acts: ``[loop, batch, pos, d]``. types: ``[batch, pos]`` for the control task.
        mask: ``[batch, pos]`` bool, tokens to use (default all). **kw: see :func:`probe`.

    Returns:
        Tidy ``label="loop_index", fold, metric, value``.
    """
    a = _site(acts)
    if features not in LOOP_FEATURES:
        raise MythosLensError(f"features={features!r}", f"one of {list(LOOP_FEATURES)}")
    if features != "raw" and kw.get("drop_channels") is not None:
        keep = _keep_columns(a.shape[-1], kw.pop("drop_channels"))
        a = a[..., keep]
    norm = a.norm(dim=-1, keepdim=True)
    if features == "direction":
        a = a / norm.clamp_min(1e-12)
    elif features == "log_norm":
        a = norm.clamp_min(1e-12).log()
    L, B, P, d = a.shape
    if L < 2:
        raise MythosLensError(f"{L} loop", ">= 2 loops to tell apart")
    y = torch.arange(L).view(L, 1, 1).expand(L, B, P).clone()
    if mask is not None:
        m = as_tensor(mask, "mask", floating=False).to(torch.bool)
        if m.shape != (B, P):
            raise MythosLensError(f"mask has shape {tuple(m.shape)}", f"[{B}, {P}]")
        y[:, ~m] = -1
    groups = torch.arange(B).view(1, B, 1).expand(L, B, P).reshape(-1)
    tt = None
    if types is not None:
        tt = _per_token(types, "types", L, B, P, allow_loop=False).reshape(-1)
    df = probe(a.reshape(-1, d), y.reshape(-1), groups, types=tt, **kw)
    df.insert(0, "label", "loop_index")
    return df


def summarize(folds: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof=1) and per-fold values of each metric from :func:`probe_per_loop` /
    :func:`probe` tables: one row per (label, loop, metric) with ``mean, std, n_folds, folds``
    (``folds`` is a comma-separated string of the fold values, parquet-safe).
    ``not_converged`` is summed over folds (in ``mean`` × n_folds → reported as ``total``)."""
    need = {"fold", "metric", "value"}
    if not need <= set(folds.columns):
        raise MythosLensError(f"columns {sorted(folds.columns)}", f"at least {sorted(need)}")
    keys = [c for c in ("label", "loop") if c in folds.columns] + ["metric"]
    rows = []
    for key, g in folds.groupby(keys, sort=True):
        v = g.sort_values("fold")["value"].to_numpy(dtype=float)
        rec = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        rec.update(
            mean=float(v.mean()),
            std=float(v.std(ddof=1)) if len(v) > 1 else float("nan"),
            total=float(v.sum()),
            n_folds=len(v),
            folds=",".join(f"{x:.6g}" for x in v),
        )
        rows.append(rec)
    return pd.DataFrame(rows)


def hop_matrix(
    acts: Any,
    labels_by_hop: dict[int, Any],
    *,
    types: Any = None,
    **kw: Any,
) -> pd.DataFrame:
    """Loop × hop accuracy for multi-hop tasks: for each hop j, probe the hop-j entity label
    ``[batch, pos]`` (label < 0 = no label at that token) at every loop.

    Returns ``loop, hop, metric, mean, std, n_folds`` for task_acc, control_acc (with types),
    majority_acc and selectivity — pivot ``metric == "task_acc"`` on loop × hop for the matrix.
    """
    if not isinstance(labels_by_hop, dict) or not labels_by_hop:
        raise MythosLensError(
            f"labels_by_hop is a {type(labels_by_hop).__name__}", "a non-empty dict hop -> labels"
        )
    frames = []
    for hop, labels in sorted(labels_by_hop.items()):
        df = probe_per_loop(acts, labels, types=types, label_name=f"hop_{hop}", **kw)
        s = summarize(df)
        s = s[s.metric.isin(FOLD_METRICS)].drop(columns=["label", "total", "folds"])
        s.insert(1, "hop", int(hop))
        frames.append(s)
    return pd.concat(frames, ignore_index=True)
