"""Exit rules per token: when would each rule stop the loop, and is the answer right by then?

Every rule reads per-loop tensors and returns, per token, the loop step after which it would
exit (``-1``: never within the loops that ran):

- ``act``: upstream's ACT halting (cumulative halting probability reaches the threshold);
- ``kl``: KL(p_{t−1} ‖ p_t) below a threshold (Huginn exits at ~5e-4; Geiping et al. 2025);
- ``entropy``: the entropy of p_t below a threshold;
- ``rel_step``: the relative latent step ‖h_t − h_{t−1}‖ / ‖h_{t−1}‖ below a threshold;
- ``accel``: the second-order step (Pappone et al. 2025) ‖Δ_t − Δ_{t−1}‖ / ‖h_{t−1}‖ below a
  threshold at two consecutive steps (their "two-hit" rule), Δ_t = h_t − h_{t−1};
- ``stable_argmax``: the argmax of p unchanged for k consecutive steps;

beside two references: ``first_correct`` (the first step whose readout is the target) and
``settled`` (the effective depth − 1: from there on the output no longer changes). p_t should be
the exit lens (what a run stopped after step t outputs: ``mythos_lens.readouts.exit_states``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from mythos_lens.errors import MythosLensError, check_float, check_int
from probes._checks import as_int_tensor, as_tensor, check_finite, check_ndim
from probes._dist import entropy
from probes.convergence import successive_kl
from probes.effective_depth import KL_TOLERANCE, effective_depth

KL_EXIT_THRESHOLD = 5e-4  # Huginn-style exit: KL(p_{t-1} ‖ p_t) below this
ENTROPY_THRESHOLD = 0.1  # nats
REL_STEP_THRESHOLD = 1e-2
ACCEL_THRESHOLD = 1e-2
STABLE_STEPS = 2
RULES = ("act", "kl", "entropy", "rel_step", "accel", "stable_argmax")


def first_true(cond: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """``[...]`` first index along axis 0 where `cond` ``[steps, ...]`` holds, plus `offset`;
    −1 where it never holds."""
    any_ = cond.any(0)
    idx = cond.to(torch.int64).argmax(0) + offset
    return torch.where(any_, idx, torch.full_like(idx, -1))


def act_halting_step(cum_halt_prob: Any, threshold: float) -> torch.Tensor:
    """``[batch, pos]`` first loop t at which ``cum_halt_prob`` ``[loop, batch, pos]`` reaches
    ``threshold`` (upstream's ``halted = cumulative_p >= act_threshold``); −1 if never."""
    c = as_tensor(cum_halt_prob, "cum_halt_prob")
    check_ndim(c, 3, "cum_halt_prob", "[loop, batch, pos]")
    thr = check_float("threshold", threshold)
    return first_true(c >= thr)


def kl_exit_step(logits: Any, threshold: float = KL_EXIT_THRESHOLD) -> torch.Tensor:
    """``[batch, pos]`` first loop u ≥ 1 with KL(p_{u−1} ‖ p_u) < ``threshold`` (an exit after
    loop u), from readout logits ``[loop, batch, pos, vocab]``; −1 if never."""
    thr = check_float("threshold", threshold, 0.0, lo_open=True)
    return first_true(successive_kl(logits) < thr, offset=1)


def _state_steps(h: torch.Tensor, h0: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Relative step ``[loop, B, P]`` (NaN where undefined) and relative second-order step."""
    if h0 is not None:
        h = torch.cat([h0.unsqueeze(0), h], 0)
    delta = h[1:] - h[:-1]  # Δ into each state
    prev = h[:-1].norm(dim=-1)
    rel = torch.where(prev > 0, delta.norm(dim=-1) / prev, torch.full_like(prev, torch.nan))
    acc = torch.full_like(rel, torch.nan)
    if delta.shape[0] > 1:
        acc[1:] = torch.where(prev[1:] > 0, (delta[1:] - delta[:-1]).norm(dim=-1) / prev[1:],
                              torch.full_like(prev[1:], torch.nan))  # fmt: skip
    if h0 is None:  # the first state has no step into it
        nan = torch.full_like(rel[:1], torch.nan)
        rel, acc = torch.cat([nan, rel]), torch.cat([nan, acc])
    return rel, acc


def exit_steps(
    logits: Any,
    final_logits: Any,
    states: Any,
    *,
    h0: Any = None,
    cum_halt_prob: Any = None,
    act_threshold: float | None = None,
    target_ids: Any = None,
    kl_threshold: float = KL_EXIT_THRESHOLD,
    entropy_threshold: float = ENTROPY_THRESHOLD,
    rel_step_threshold: float = REL_STEP_THRESHOLD,
    accel_threshold: float = ACCEL_THRESHOLD,
    stable_steps: int = STABLE_STEPS,
    kl_tolerance: float = KL_TOLERANCE,
    positions: Any = None,
) -> pd.DataFrame:
    """Per token, the step at which each rule exits (see the module docstring).

    Args:
        logits: ``[loop, batch, pos, vocab]`` per-step readouts (the exit lens).
        final_logits: ``[batch, pos, vocab]`` the full run's output.
        states: ``[loop, batch, pos, d]`` h_t; ``h0`` ``[batch, pos, d]`` the state before
            loop 0 (``e``), so loop 0 has a step too.
        cum_halt_prob, act_threshold: for the ``act`` rule (omitted when not given).
        target_ids: ``[batch, pos]`` for ``first_correct`` and each rule's ``*_correct``.

    Returns:
        ``batch, pos, n_loops, settled`` and per rule ``<rule>_step`` (−1 = never), with targets
        ``first_correct`` and ``<rule>_correct`` (the readout at the exit step — the last step
        when the rule never fires — is the target).
    """
    lg = as_tensor(logits, "logits")
    check_ndim(lg, 4, "logits", "[loop, batch, pos, vocab]")
    check_finite(lg, "logits")
    h = as_tensor(states, "states")
    check_ndim(h, 4, "states", "[loop, batch, pos, d]")
    L, B, P, _ = lg.shape
    if h.shape[:3] != lg.shape[:3]:
        raise MythosLensError(f"states {tuple(h.shape)} vs logits {tuple(lg.shape)}",
                              "the same [loop, batch, pos]")  # fmt: skip
    h0t = None if h0 is None else as_tensor(h0, "h0")
    if h0t is not None and h0t.shape != h.shape[1:]:
        raise MythosLensError(f"h0 has shape {tuple(h0t.shape)}", f"{tuple(h.shape[1:])}")
    k = check_int("stable_steps", stable_steps, 1)
    steps: dict[str, torch.Tensor] = {}
    if cum_halt_prob is not None:
        if act_threshold is None:
            raise MythosLensError("cum_halt_prob without act_threshold", "both or neither")
        steps["act"] = act_halting_step(cum_halt_prob, act_threshold)
    never = torch.full((B, P), -1, dtype=torch.long)
    steps["kl"] = kl_exit_step(lg, kl_threshold) if L > 1 else never
    steps["entropy"] = first_true(
        entropy(lg) < check_float("entropy_threshold", entropy_threshold, 0.0, lo_open=True)
    )
    rel, acc = _state_steps(h, h0t)
    steps["rel_step"] = first_true(rel < check_float("rel_step_threshold", rel_step_threshold, 0.0))
    below = acc < check_float("accel_threshold", accel_threshold, 0.0)
    steps["accel"] = first_true(below[1:] & below[:-1], offset=1) if L > 1 else never
    top = lg.argmax(-1)
    if L >= k:
        same = torch.stack([(top[i : i + k] == top[i]).all(0) for i in range(L - k + 1)])
        steps["stable_argmax"] = first_true(same, offset=k - 1)
    else:
        steps["stable_argmax"] = never
    bb, pp = (g.ravel() for g in np.meshgrid(np.arange(B), np.arange(P), indexing="ij"))
    pos = pp if positions is None else np.asarray(positions)[pp]
    out = pd.DataFrame({"batch": bb, "pos": pos, "n_loops": L})
    out["settled"] = (effective_depth(lg, final_logits, kl_tolerance) - 1).reshape(-1).numpy()
    for rule, s in steps.items():
        out[f"{rule}_step"] = s.reshape(-1).numpy()
    if target_ids is not None:
        tgt = as_int_tensor(target_ids, "target_ids")
        if tuple(tgt.shape) != (B, P):
            raise MythosLensError(f"target_ids has shape {tuple(tgt.shape)}", f"[{B}, {P}]")
        right = top == tgt.unsqueeze(0)  # [L, B, P]
        out["first_correct"] = first_true(right).reshape(-1).numpy()
        for rule, s in steps.items():
            at = torch.where(s >= 0, s, torch.full_like(s, L - 1))
            out[f"{rule}_correct"] = right.gather(0, at.unsqueeze(0)).squeeze(0).reshape(-1).numpy()
    return out


def exit_rule_summary(steps: pd.DataFrame) -> pd.DataFrame:
    """One row per rule of an :func:`exit_steps` table: ``rule, fired`` (share of tokens where
    it exits within the loops), ``mean_step`` (loops run if it exits: step + 1, else all),
    ``accuracy`` (with targets), ``before_settled`` (share of tokens where it exits before the
    output has settled — an exit that changes the answer)."""
    rows = []
    L = int(steps["n_loops"].iloc[0]) if len(steps) else 0
    for rule in [r for r in RULES if f"{r}_step" in steps.columns]:
        s = steps[f"{rule}_step"].to_numpy()
        used = np.where(s >= 0, s + 1, L)
        row = {"rule": rule, "fired": float((s >= 0).mean()), "mean_loops": float(used.mean()),
               "before_settled": float(((s >= 0) & (s < steps["settled"])).mean())}  # fmt: skip
        if f"{rule}_correct" in steps.columns:
            row["accuracy"] = float(steps[f"{rule}_correct"].mean())
        rows.append(row)
    return pd.DataFrame(rows)
