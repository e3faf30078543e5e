"""Effective depth: which loop steps reach the output, and which ones matter.

A per-loop number only means something for a loop that reaches the output. Two views:

- **ACT weights** — the coda reads ``Σ_t w_t h_t``; :func:`act_share_table` gives each loop's
  weight and its share of the sum per token (with ``act_threshold`` out of reach the weights are
  raw halting probabilities and need not sum to 1).
- **Stopping early** — the *exit lens* at t (``mythos_lens.readouts.exit_states`` through the
  coda) is the output a run stopped after step t gives. :func:`stop_effect_table` compares it
  with the full output; :func:`effective_depth` is, per token, the number of loop steps after
  which the output no longer changes; :func:`loops_that_matter` says per model which loops some
  tokens need. :func:`mark_loops` adds that verdict to any per-loop table.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from mythos_lens.errors import MythosLensError, check_float
from probes._checks import as_int_tensor, as_tensor, check_finite, check_ndim
from probes._dist import kl

KL_TOLERANCE = 1e-2  # nats: an exit output this close to the full output counts as "the same"
MIN_SHARE = 0.01  # a loop matters when at least this share of tokens needs it


def _grid(*shape: int) -> list[np.ndarray]:
    return [g.ravel() for g in np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")]


def _pos(positions: Any, P: int) -> np.ndarray:
    if positions is None:
        return np.arange(P)
    p = np.asarray(positions.cpu() if isinstance(positions, torch.Tensor) else positions)
    if p.shape != (P,):
        raise MythosLensError(f"positions has shape {p.shape}", f"[{P}] (one per pos)")
    return p


def act_share_table(act_weight: Any, positions: Any = None) -> pd.DataFrame:
    """Each loop's ACT weight and its share of the sum the coda reads, per token.

    Args:
        act_weight: ``[loop, batch, pos]`` (``trace["act_weight"]``).

    Returns:
        ``loop, batch, pos, act_weight, share`` (w_t / Σ_s w_s; NaN where Σ_s w_s = 0),
        ``weight_sum`` (Σ_s w_s: below 1 when no position halted, as with a threshold of 1e9)
        and ``share_from_here`` (Σ_{s>=t} w_s / Σ_s w_s: what loops t, t+1, … contribute).
    """
    w = as_tensor(act_weight, "act_weight")
    check_ndim(w, 3, "act_weight", "[loop, batch, pos]")
    check_finite(w, "act_weight")
    L, B, P = w.shape
    total = w.sum(0, keepdim=True)
    share = torch.where(total > 0, w / total, torch.full_like(w, float("nan")))
    from_here = torch.flip(torch.cumsum(torch.flip(share, [0]), 0), [0])
    ll, bb, pp = _grid(L, B, P)
    return pd.DataFrame(
        {
            "loop": ll,
            "batch": bb,
            "pos": _pos(positions, P)[pp],
            "act_weight": w.reshape(-1).numpy(),
            "share": share.reshape(-1).numpy(),
            "weight_sum": total.expand(L, B, P).reshape(-1).numpy(),
            "share_from_here": from_here.reshape(-1).numpy(),
        }
    )


def _exit_and_final(exit_logits: Any, final_logits: Any) -> tuple[torch.Tensor, torch.Tensor]:
    ex = as_tensor(exit_logits, "exit_logits")
    fin = as_tensor(final_logits, "final_logits")
    check_ndim(ex, 4, "exit_logits", "[loop, batch, pos, vocab]")
    check_ndim(fin, 3, "final_logits", "[batch, pos, vocab]")
    if ex.shape[1:] != fin.shape:
        raise MythosLensError(
            f"exit_logits {tuple(ex.shape)} vs final_logits {tuple(fin.shape)}",
            "exit_logits = [loop, *final_logits.shape]",
        )
    check_finite(ex, "exit_logits")
    check_finite(fin, "final_logits")
    return ex, fin


def stop_effect_table(
    exit_logits: Any, final_logits: Any, target_ids: Any = None, positions: Any = None
) -> pd.DataFrame:
    """The causal effect of stopping the loop after step t, per token.

    Args:
        exit_logits: ``[loop, batch, pos, vocab]`` exit-lens logits (row t = the output of a run
            stopped after step t).
        final_logits: ``[batch, pos, vocab]`` the full run's output.
        target_ids: optional ``[batch, pos]`` correct tokens.

    Returns:
        ``loop, batch, pos, kl_full_exit`` (KL(full ‖ exit_t), nats), ``same_top1`` (exit_t's
        argmax is the full run's), and with targets ``exit_correct``, ``full_correct``.
    """
    ex, fin = _exit_and_final(exit_logits, final_logits)
    L, B, P, _ = ex.shape
    k = kl(fin.unsqueeze(0).expand_as(ex), ex)
    same = ex.argmax(-1) == fin.argmax(-1).unsqueeze(0)
    ll, bb, pp = _grid(L, B, P)
    out = pd.DataFrame(
        {
            "loop": ll,
            "batch": bb,
            "pos": _pos(positions, P)[pp],
            "kl_full_exit": k.reshape(-1).numpy(),
            "same_top1": same.reshape(-1).numpy(),
        }
    )
    if target_ids is not None:
        tgt = as_int_tensor(target_ids, "target_ids")
        if tuple(tgt.shape) != (B, P):
            raise MythosLensError(f"target_ids has shape {tuple(tgt.shape)}", f"[{B}, {P}]")
        out["exit_correct"] = (ex.argmax(-1) == tgt.unsqueeze(0)).reshape(-1).numpy()
        out["full_correct"] = (
            (fin.argmax(-1) == tgt).unsqueeze(0).expand(L, B, P).reshape(-1).numpy()
        )
    return out


def effective_depth(
    exit_logits: Any, final_logits: Any, kl_tolerance: float = KL_TOLERANCE
) -> torch.Tensor:
    """``[batch, pos]`` number of loop steps each token needs: the smallest D such that every
    exit after D or more steps has the full run's argmax and KL(full ‖ exit) <= `kl_tolerance`.
    D = 1 means loop 0 alone gives the output; D = loop count means the last step still matters.
    """
    tol = check_float("kl_tolerance", kl_tolerance, 0.0)
    ex, fin = _exit_and_final(exit_logits, final_logits)
    L = ex.shape[0]
    ok = (kl(fin.unsqueeze(0).expand_as(ex), ex) <= tol) & (
        ex.argmax(-1) == fin.argmax(-1).unsqueeze(0)
    )
    # D-1 = the first t from which ok holds for every later step (suffix "all").
    suffix_all = torch.flip(torch.cumprod(torch.flip(ok.to(torch.int64), [0]), 0), [0]).bool()
    first = torch.where(
        suffix_all.any(0), suffix_all.to(torch.int64).argmax(0), torch.tensor(L - 1)
    )
    return first + 1


def loops_that_matter(depth: Any, n_loops: int, min_share: float = MIN_SHARE) -> pd.DataFrame:
    """Per loop t: the share of tokens whose effective depth exceeds t (they need step t), and
    whether loop t matters (that share >= `min_share`).

    Args:
        depth: ``[...]`` effective depths (:func:`effective_depth`), any shape.
        n_loops: loop steps that ran.

    Returns:
        ``loop, share_needing, matters`` (loop 0 always matters: every output needs it).
    """
    d = as_int_tensor(depth, "depth").reshape(-1)
    if d.numel() == 0:
        raise MythosLensError("no effective depths", "at least one token")
    L = int(n_loops)
    if int(d.min()) < 1 or int(d.max()) > L:
        raise MythosLensError(f"depths in [{int(d.min())}, {int(d.max())}]", f"depths in [1, {L}]")
    share = check_float("min_share", min_share, 0.0, 1.0)
    need = np.array([float((d > t).double().mean()) for t in range(L)])
    return pd.DataFrame({"loop": np.arange(L), "share_needing": need, "matters": need >= share})


def mark_loops(
    table: pd.DataFrame, matters: pd.DataFrame, by: tuple[str, ...] = ()
) -> pd.DataFrame:
    """`table` with a ``loop_matters`` column from a :func:`loops_that_matter` table.

    The loop column is ``loop``, ``ablated_loop`` or the pair ``loop_a``/``loop_b`` (both must
    matter); rows with no loop (e.g. ``loop = -1``, a model-wide quantity) get ``True``. `by`
    names extra key columns shared by both tables (e.g. ``("checkpoint",)``).
    """
    m = matters.set_index([*by, "loop"])["matters"]

    def lookup(keys: pd.DataFrame, col: str) -> np.ndarray:
        idx = pd.MultiIndex.from_frame(keys[[*by, col]]) if by else pd.Index(keys[col])
        got = m.reindex(idx).to_numpy()
        return np.where(keys[col].to_numpy() < 0, True, np.where(pd.isna(got), False, got))

    out = table.copy()
    if {"loop_a", "loop_b"} <= set(out.columns):
        flag = lookup(out, "loop_a").astype(bool) & lookup(out, "loop_b").astype(bool)
    else:
        col = next((c for c in ("loop", "ablated_loop") if c in out.columns), None)
        if col is None:
            raise MythosLensError(f"table columns {list(out.columns)}", "a loop column to mark")
        flag = lookup(out, col).astype(bool)
    out["loop_matters"] = flag
    return out
