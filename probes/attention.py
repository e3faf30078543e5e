"""What each loop step reads: attention mass on the context's key/value pairs, joined with the
task's ground truth (which pair a loop doing hop t+1 must read).

Patterns come from ``capture(..., sites=["attn_pattern"])`` (``[loop, batch, head, q, k]``); the
pair positions and the expected pair per loop come from the task (``task.pair_truth``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from mythos_lens.errors import MythosLensError, check_int
from probes._checks import as_int_tensor, as_tensor, check_finite, check_ndim


def pair_mass(pattern: Any, pair_positions: Any, query: int) -> torch.Tensor:
    """Attention mass on each pair, at one query position.

    Args:
        pattern: ``[loop, batch, head, q, k]`` attention weights.
        pair_positions: ``[batch, pairs, m]`` sequence positions of each pair's m tokens.
        query: index on the ``q`` axis (negative counts from the end).

    Returns:
        ``[loop, batch, head, pairs]``: the summed weight on each pair's tokens.
    """
    p = as_tensor(pattern, "pattern")
    check_ndim(p, 5, "pattern", "[loop, batch, head, q, k]")
    check_finite(p, "pattern")
    pos = as_int_tensor(pair_positions, "pair_positions")
    check_ndim(pos, 3, "pair_positions", "[batch, pairs, m]")
    L, B, H, Q, K = p.shape
    if pos.shape[0] != B:
        raise MythosLensError(f"pair_positions for {pos.shape[0]} examples", f"{B} (the batch)")
    if int(pos.min()) < 0 or int(pos.max()) >= K:
        raise MythosLensError("pair positions outside the key axis", f"positions in [0, {K - 1}]")
    q = check_int("query", query, -Q, Q - 1) % Q
    row = p[:, :, :, q, :]  # [L, B, H, K]
    idx = pos.reshape(1, B, 1, -1).expand(L, B, H, -1)
    return row.gather(-1, idx).reshape(L, B, H, pos.shape[1], pos.shape[2]).sum(-1)


def pair_reads(
    pattern: Any, pair_positions: Any, expected_pair: Any, query: int = -1
) -> pd.DataFrame:
    """Which pair each loop reads most at `query`, and whether it is the expected one.

    Args:
        pattern: ``[loop, batch, head, q, k]``.
        pair_positions: ``[batch, pairs, m]``.
        expected_pair: ``[loop, batch]`` index of the pair loop t should read (−1: none).
        query: query position (default the last: where the answer is read).

    Returns:
        One row per (loop, batch, head), with ``head = -1`` for the mean over heads:
        ``top_pair, top_mass, expected_pair, expected_mass, top_is_expected`` (NaN where no pair
        is expected), ``chance_mass`` (mass a pair gets under uniform attention over the keys
        visible at the query).
    """
    mass = pair_mass(pattern, pair_positions, query)  # [L, B, H, P]
    L, B, H, P = mass.shape
    exp = as_int_tensor(expected_pair, "expected_pair")
    if tuple(exp.shape) != (L, B):
        raise MythosLensError(f"expected_pair has shape {tuple(exp.shape)}", f"[{L}, {B}]")
    if int(exp.max()) >= P:
        raise MythosLensError(f"expected pair {int(exp.max())}", f"pairs in [-1, {P - 1}]")
    mass = torch.cat([mass.mean(2, keepdim=True), mass], 2)  # head -1 first
    top_mass, top = mass.max(-1)
    e = exp.clamp(min=0).view(L, B, 1, 1).expand(L, B, H + 1, 1)
    e_mass = mass.gather(-1, e).squeeze(-1)
    known = (exp >= 0).view(L, B, 1).expand(L, B, H + 1)
    Q = as_tensor(pattern, "pattern").shape[3]
    visible = (query % Q) + 1  # causal: keys 0 … q
    m = as_int_tensor(pair_positions, "pair_positions").shape[2]
    ll, bb, hh = (g.ravel() for g in np.meshgrid(np.arange(L), np.arange(B), np.arange(-1, H),
                                                 indexing="ij"))  # fmt: skip
    flat = lambda x: x.reshape(-1).numpy()  # noqa: E731
    return pd.DataFrame(
        {
            "loop": ll,
            "batch": bb,
            "head": hh,
            "top_pair": flat(top),
            "top_mass": flat(top_mass),
            "expected_pair": flat(exp.view(L, B, 1).expand(L, B, H + 1)),
            "expected_mass": np.where(flat(known), flat(e_mass), np.nan),
            "top_is_expected": np.where(flat(known), flat(top == e.squeeze(-1)), np.nan),
            "chance_mass": m / visible,
        }
    )


def pair_read_summary(reads: pd.DataFrame) -> pd.DataFrame:
    """Per loop (and head): how often the most-read pair is the expected one, and the mean mass
    on the expected pair vs chance. Rows with no expected pair are left out.

    Returns ``loop, head, n, top_is_expected, expected_mass, top_mass, chance_mass``.
    """
    need = {"loop", "head", "top_is_expected", "expected_mass", "top_mass", "chance_mass"}
    if not isinstance(reads, pd.DataFrame) or not need <= set(reads.columns):
        raise MythosLensError("pair_read_summary input", f"a pair_reads table ({sorted(need)})")
    known = reads[reads["top_is_expected"].notna()]
    g = known.groupby(["loop", "head"], sort=True)
    out = g[["top_is_expected", "expected_mass", "top_mass", "chance_mass"]].mean()
    out.insert(0, "n", g.size())
    return out.reset_index()
