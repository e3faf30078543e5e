"""Router analysis from the experts chosen at each loop step.

Input everywhere: ``expert_ids`` ``[loop, batch, pos, k]`` (int, the routed experts chosen by
``topk(logits + router_bias)``; shared experts always fire and are never in it) and
``n_experts`` (E, routed experts only).
"""

from __future__ import annotations

from math import comb
from typing import Any

import numpy as np
import pandas as pd
import torch

from mythos_lens.errors import MythosLensError, check_int
from probes._checks import as_int_tensor, as_tensor, check_ndim


def _check_ids(expert_ids: Any, n_experts: Any) -> tuple[torch.Tensor, int]:
    ids = as_int_tensor(expert_ids, "expert_ids")
    check_ndim(ids, 4, "expert_ids", "[loop, batch, pos, k]")
    E = check_int("n_experts", n_experts, 1)
    k = ids.shape[-1]
    if k < 1 or k > E:
        raise MythosLensError(f"k={k} experts per token with n_experts={E}", "1 <= k <= n_experts")
    if ids.numel() and (ids.min() < 0 or ids.max() >= E):
        raise MythosLensError(
            f"expert ids span [{int(ids.min())}, {int(ids.max())}]", f"ids in [0, {E})"
        )
    if k > 1:
        s = ids.sort(-1).values
        if (s[..., 1:] == s[..., :-1]).any():
            raise MythosLensError("an expert chosen twice for one token", "k distinct experts")
    return ids, E


def _one_hot(ids: torch.Tensor, E: int) -> torch.Tensor:
    """``[loop, batch, pos, E]`` bool membership."""
    m = torch.zeros(*ids.shape[:-1], E, dtype=torch.bool)
    m.scatter_(-1, ids, True)
    return m


def random_overlap_baseline(k: int, n_experts: int) -> dict[str, float]:
    """Expected overlap@k (= k/E) and Jaccard of two independent uniform k-subsets of E experts.

    The intersection size is hypergeometric: P(i) = C(k,i) C(E-k,k-i) / C(E,k).
    """
    E = check_int("n_experts", n_experts, 1)
    k = check_int("k", k, 1)
    if k > E:
        raise MythosLensError(f"k={k} > n_experts={E}", "k <= n_experts")
    total = comb(E, k)
    jac = sum(comb(k, i) * comb(E - k, k - i) / total * i / (2 * k - i) for i in range(k + 1))
    return {"overlap_at_k": k / E, "jaccard": jac}


def router_overlap(expert_ids: Any, n_experts: int) -> pd.DataFrame:
    """Overlap of each token's chosen experts between every pair of loops t < u.

    Args:
        expert_ids: ``[loop, batch, pos, k]`` routed expert ids.
        n_experts: number of routed experts E.

    Returns:
        One row per (loop_a < loop_b, batch, pos): ``jaccard`` = |S_t∩S_u| / |S_t∪S_u|,
        ``overlap_at_k`` = |S_t∩S_u| / k, and the random baselines ``random_overlap_at_k`` (k/E)
        and ``random_jaccard`` (hypergeometric expectation).
    """
    ids, E = _check_ids(expert_ids, n_experts)
    L, B, P, k = ids.shape
    m = _one_hot(ids, E)
    base = random_overlap_baseline(k, E)
    rows = []
    bb, pp = np.meshgrid(np.arange(B), np.arange(P), indexing="ij")
    for t in range(L):
        for u in range(t + 1, L):
            inter = (m[t] & m[u]).sum(-1).double()
            union = (m[t] | m[u]).sum(-1).double()
            rows.append(
                pd.DataFrame(
                    {
                        "loop_a": t,
                        "loop_b": u,
                        "batch": bb.ravel(),
                        "pos": pp.ravel(),
                        "jaccard": (inter / union).reshape(-1).numpy(),
                        "overlap_at_k": (inter / k).reshape(-1).numpy(),
                    }
                )
            )
    cols = ["loop_a", "loop_b", "batch", "pos", "jaccard", "overlap_at_k"]
    df = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=cols)
    df["random_overlap_at_k"] = base["overlap_at_k"]
    df["random_jaccard"] = base["jaccard"]
    return df


def overlap_matrix(overlap: pd.DataFrame, metric: str = "overlap_at_k") -> pd.DataFrame:
    """Mean of ``metric`` per loop pair from :func:`router_overlap`, as a symmetric tidy
    ``loop_a, loop_b, metric, value`` table (diagonal = 1)."""
    if metric not in ("overlap_at_k", "jaccard") or metric not in overlap.columns:
        raise MythosLensError(f"metric={metric!r}", "'overlap_at_k' or 'jaccard' column")
    g = overlap.groupby(["loop_a", "loop_b"], as_index=False)[metric].mean()
    loops = sorted(set(g.loop_a) | set(g.loop_b))
    sym = pd.concat(
        [
            g,
            g.rename(columns={"loop_a": "loop_b", "loop_b": "loop_a"}),
            pd.DataFrame({"loop_a": loops, "loop_b": loops, metric: 1.0}),
        ],
        ignore_index=True,
    )
    sym = sym.rename(columns={metric: "value"}).sort_values(["loop_a", "loop_b"])
    sym.insert(2, "metric", metric)
    return sym.reset_index(drop=True)


def expert_load(expert_ids: Any, n_experts: int) -> pd.DataFrame:
    """Per loop and expert: ``count`` of tokens routed to it and its ``fraction`` of all
    routing slots at that loop (fractions sum to 1 per loop); ``dead`` if never chosen.

    Args:
        expert_ids: ``[loop, batch, pos, k]``; n_experts: E.
    """
    ids, E = _check_ids(expert_ids, n_experts)
    L = ids.shape[0]
    return load_from_counts(
        torch.stack([torch.bincount(ids[t].reshape(-1), minlength=E) for t in range(L)])
    )


def load_from_counts(counts: Any) -> pd.DataFrame:
    """:func:`expert_load`'s table from routing counts ``[loop, E]`` (summed over batches or
    processes)."""
    counts = as_int_tensor(counts, "counts")
    check_ndim(counts, 2, "counts", "[loop, n_experts]")
    if counts.numel() == 0 or int(counts.min()) < 0:
        raise MythosLensError(f"counts of shape {tuple(counts.shape)}", "non-negative [loop, E]")
    L, E = counts.shape
    total = counts.sum(1, keepdim=True).clamp(min=1)
    ll, ee = np.meshgrid(np.arange(L), np.arange(E), indexing="ij")
    return pd.DataFrame(
        {
            "loop": ll.ravel(),
            "expert": ee.ravel(),
            "count": counts.reshape(-1).numpy(),
            "fraction": (counts / total).reshape(-1).double().numpy(),
            "dead": (counts == 0).reshape(-1).numpy(),
        }
    )


def load_summary(expert_ids: Any, n_experts: int) -> pd.DataFrame:
    """Per loop: load entropy (nats) of the expert-fraction distribution, its maximum log E,
    normalised entropy, number of dead experts, and max/mean load ratio. Tidy
    ``loop, metric, value``."""
    return summarize_load(expert_load(expert_ids, n_experts))


def summarize_load(load: pd.DataFrame) -> pd.DataFrame:
    """:func:`load_summary` of an :func:`expert_load` / :func:`load_from_counts` table."""
    E = int(load["expert"].nunique())
    rows = []
    for t, g in load.groupby("loop"):
        p = g["fraction"].to_numpy()
        nz = p[p > 0]
        ent = float(-(nz * np.log(nz)).sum())
        vals = {
            "load_entropy": ent,
            "max_entropy": float(np.log(E)),
            "normalised_entropy": ent / np.log(E) if E > 1 else float("nan"),
            "dead_experts": float(g["dead"].sum()),
            "max_over_mean_load": float(p.max() * E),
        }
        rows += [{"loop": int(t), "metric": k, "value": v} for k, v in vals.items()]
    return pd.DataFrame(rows, columns=["loop", "metric", "value"])


def coactivation(expert_ids: Any, n_experts: int) -> pd.DataFrame:
    """How often each ordered pair of experts is chosen for the same token at the same loop.

    Returns one row per (loop, expert_a, expert_b) over all E×E pairs: ``count`` (tokens
    choosing both; the diagonal is the expert's load) and ``fraction`` (count / tokens).
    """
    ids, E = _check_ids(expert_ids, n_experts)
    L = ids.shape[0]
    m = _one_hot(ids, E).reshape(L, -1, E).double()  # [L, tokens, E]
    co = m.transpose(1, 2) @ m  # [L, E, E]
    n_tok = max(m.shape[1], 1)
    ll, aa, bb = np.meshgrid(np.arange(L), np.arange(E), np.arange(E), indexing="ij")
    return pd.DataFrame(
        {
            "loop": ll.ravel(),
            "expert_a": aa.ravel(),
            "expert_b": bb.ravel(),
            "count": co.reshape(-1).round().long().numpy(),
            "fraction": (co / n_tok).reshape(-1).numpy(),
        }
    )


def expert_visits(
    expert_ids: Any, n_experts: int, expert_weights: Any = None, positions: Any = None
) -> pd.DataFrame:
    """Which experts each token visits at each loop: one row per (loop, batch, pos, slot) with
    ``expert`` and, when ``expert_weights`` ``[loop, batch, pos, k]`` is given, ``weight``.
    ``positions`` ``[pos]`` relabels the pos axis with sequence positions."""
    ids, _ = _check_ids(expert_ids, n_experts)
    L, B, P, k = ids.shape
    grids = np.meshgrid(*[np.arange(n) for n in ids.shape], indexing="ij")
    names = ["loop", "batch", "pos", "slot"]
    df = pd.DataFrame({n: g.ravel() for n, g in zip(names, grids, strict=True)})
    if positions is not None:
        pos = as_int_tensor(positions, "positions")
        if pos.shape != (P,):
            raise MythosLensError(f"positions has shape {tuple(pos.shape)}", f"[{P}]")
        df["pos"] = pos.numpy()[df["pos"].to_numpy()]
    df["expert"] = ids.reshape(-1).numpy()
    if expert_weights is not None:
        w = as_tensor(expert_weights, "expert_weights")
        if w.shape != ids.shape:
            raise MythosLensError(
                f"expert_weights has shape {tuple(w.shape)}", f"{tuple(ids.shape)} like expert_ids"
            )
        df["weight"] = w.reshape(-1).numpy()
    return df
