"""Convergence and stability of the loop: step sizes, successive-lens KL, exits, spectral radius.

Probes see tensors only. The loop map's Jacobian needs the model: build a callable
``step(h) -> h_next`` model-side (``mythos_lens.readouts.loop_step``) and pass it to
:func:`spectral_radius`, which only needs Jacobian-vector products of that callable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch

from mythos_lens.errors import MythosLensError, check_int
from probes._checks import (
    as_tensor,
    check_finite,
    check_ndim,
)
from probes._dist import kl

KL_EXIT_THRESHOLD = 5e-4  # Huginn-style exit: KL(p_{t-1} ‖ p_t) below this


def _long(values: dict[str, torch.Tensor], loops: np.ndarray, positions: Any) -> pd.DataFrame:
    """Tidy ``loop, batch, pos, metric, value`` from ``{metric: [loop, batch, pos]}``."""
    frames = []
    for metric, v in values.items():
        L, B, P = v.shape
        ll, bb, pp = np.meshgrid(loops, np.arange(B), np.arange(P), indexing="ij")
        pos = pp.ravel() if positions is None else np.asarray(positions)[pp.ravel()]
        frames.append(
            pd.DataFrame(
                {
                    "loop": ll.ravel(),
                    "batch": bb.ravel(),
                    "pos": pos,
                    "metric": metric,
                    "value": v.reshape(-1).double().numpy(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _positions(positions: Any, P: int) -> np.ndarray | None:
    if positions is None:
        return None
    p = np.asarray(positions.cpu() if isinstance(positions, torch.Tensor) else positions)
    if p.shape != (P,):
        raise MythosLensError(f"positions has shape {p.shape}", f"[{P}] (one per pos)")
    return p


def step_table(h: Any, h0: Any = None, positions: Any = None) -> pd.DataFrame:
    """Relative step norm and direction change of the carried state, per token and loop.

    Args:
        h: ``[loop, batch, pos, d]`` states h_t (e.g. ``resid_post``).
        h0: optional ``[batch, pos, d]`` state before loop 0 (``e`` for resid_post).
        positions: optional ``[pos]`` sequence positions for the ``pos`` column.

    Returns:
        Tidy ``loop, batch, pos, metric, value``. At loop u (the step *into* h_u):
        ``rel_step`` = ‖h_u − h_{u−1}‖ / ‖h_{u−1}‖ and ``cos_prev_step`` = cos(Δ_u, Δ_{u−1}) with
        Δ_u = h_u − h_{u−1}. Without ``h0`` the first row is loop 1. NaN where a norm is 0.
    """
    h = as_tensor(h, "h")
    check_ndim(h, 4, "h", "[loop, batch, pos, d]")
    check_finite(h, "h")
    first = 0
    if h0 is not None:
        h0 = as_tensor(h0, "h0")
        if tuple(h0.shape) != tuple(h.shape[1:]):
            raise MythosLensError(f"h0 has shape {tuple(h0.shape)}", f"{tuple(h.shape[1:])}")
        h = torch.cat([h0.unsqueeze(0), h], 0)
        first = -1
    if h.shape[0] < 2:
        raise MythosLensError(f"{h.shape[0]} state(s)", ">= 2 states (loops, or h0 and 1 loop)")
    pos = _positions(positions, h.shape[2])
    delta = h[1:] - h[:-1]
    prev_norm = h[:-1].norm(dim=-1)
    rel = delta.norm(dim=-1) / prev_norm
    rel[prev_norm == 0] = float("nan")
    cos = torch.full_like(rel, float("nan"))
    if delta.shape[0] > 1:
        cos[1:] = torch.nn.functional.cosine_similarity(delta[1:], delta[:-1], dim=-1, eps=0.0)
    loops = np.arange(delta.shape[0]) + first + 1
    return _long({"rel_step": rel, "cos_prev_step": cos}, loops, pos)


def successive_kl(logits: Any) -> torch.Tensor:
    """``[loop-1, batch, pos]`` KL(p_{u−1} ‖ p_u) between successive lens distributions, from
    per-loop lens logits ``[loop, batch, pos, vocab]``."""
    lg = as_tensor(logits, "logits")
    check_ndim(lg, 4, "logits", "[loop, batch, pos, vocab]")
    if lg.shape[0] < 2:
        raise MythosLensError(f"{lg.shape[0]} loop(s) of logits", ">= 2 loops")
    return kl(lg[:-1], lg[1:])


def lens_kl_table(logits: Any, positions: Any = None) -> pd.DataFrame:
    """Tidy ``loop, batch, pos, metric="kl_prev", value``: KL(p_{u−1} ‖ p_u) at loop u ≥ 1."""
    k = successive_kl(logits)
    return _long({"kl_prev": k}, np.arange(1, k.shape[0] + 1), _positions(positions, k.shape[2]))


def rho_A(A: Any) -> float:
    """Spectral radius of the diagonal injection matrix ``A`` ``[d]``: max |A_i|."""
    a = as_tensor(A, "A")
    check_ndim(a, 1, "A", "[d]")
    if a.numel() == 0:
        raise MythosLensError("A is empty", "[d] with d >= 1")
    check_finite(a, "A")
    return float(a.abs().max())


def spectral_radius(
    step: Callable[[torch.Tensor], torch.Tensor],
    h: torch.Tensor,
    *,
    n_iter: int = 60,
    seed: int = 0,
    with_norm: bool = True,
) -> dict[str, float]:
    """Estimate the spectral radius of the Jacobian J = ∂step/∂h at ``h`` (any shape; the map
    must return the same shape) by power iteration with Jacobian-vector products.

    ρ is the geometric mean growth ‖J v_i‖ over the second half of ``n_iter`` normalised
    iterations from a seeded Gaussian start — by Gelfand's formula this converges to ρ(J) also
    when the dominant eigenvalues are a complex pair (where plain Rayleigh quotients oscillate).
    With ``with_norm`` it also returns the spectral norm σ_max(J) (power iteration on JᵀJ via
    vector-Jacobian products), an upper bound on ρ. ρ < 1 means the loop map is locally
    contracting at ``h``.

    Returns ``{"spectral_radius", "spectral_norm" (NaN if not computed), "n_iter"}``.
    """
    if not callable(step):
        raise MythosLensError(f"step is a {type(step).__name__}", "a callable h -> h_next")
    if not isinstance(h, torch.Tensor) or not h.is_floating_point():
        raise MythosLensError(f"h is a {type(h).__name__}", "a floating torch.Tensor")
    n_iter = check_int("n_iter", n_iter, 2)
    h = h.detach()
    g = torch.Generator().manual_seed(seed)
    v0 = torch.randn(h.shape, generator=g, dtype=h.dtype).to(h.device)
    v = v0 / v0.norm()
    out = step(h)
    if not isinstance(out, torch.Tensor) or out.shape != h.shape:
        raise MythosLensError(
            f"step(h) returned shape {getattr(out, 'shape', None)}", f"{tuple(h.shape)} like h"
        )
    logs = []
    for _ in range(n_iter):
        _, w = torch.func.jvp(step, (h,), (v,))
        nrm = w.norm()
        if not torch.isfinite(nrm):
            raise MythosLensError("the Jacobian-vector product is not finite", "a finite map")
        if nrm == 0:
            logs.append(float("-inf"))
            break
        logs.append(float(nrm.log()))
        v = w / nrm
    tail = logs[len(logs) // 2 :]
    rho = 0.0 if tail and tail[-1] == float("-inf") else float(np.exp(np.mean(tail)))
    sigma = float("nan")
    if with_norm:
        _, vjp_fn = torch.func.vjp(step, h)
        u = v0 / v0.norm()
        for _ in range(n_iter):
            _, ju = torch.func.jvp(step, (h,), (u,))
            (w,) = vjp_fn(ju)  # JᵀJ u
            nrm = w.norm()
            if nrm == 0:
                sigma = 0.0
                break
            u = w / nrm
            sigma = float(nrm.sqrt())
    return {"spectral_radius": rho, "spectral_norm": sigma, "n_iter": float(len(logs))}
