"""Representational similarity across loop steps: linear CKA (biased, debiased, minibatch).

Definitions (X ``[n, d]``, Y ``[n, e]``, rows = tokens, K = XXᵀ, L = YYᵀ):

- **biased** linear CKA (Kornblith et al. 2019): ``‖YcᵀXc‖²_F / (‖XcᵀXc‖_F ‖YcᵀYc‖_F)`` on
  column-centred features.
- **debiased** CKA: the same ratio with the unbiased HSIC estimator of Song et al. (2012),
  ``HSIC_u = [tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1/((n-1)(n-2)) - 2/(n-2)·1ᵀK̃L̃1] / (n(n-3))`` where K̃, L̃ are
  K, L with zeroed diagonals. It is computed here *in feature space*, never forming an n×n Gram:
  with ``a_i = ‖x_i‖²``, ``b_i = ‖y_i‖²``, ``s_x = Σ x_i``, ``s_y = Σ y_i``, ``C = XᵀY``:

  - ``tr(K̃L̃) = ‖C‖²_F - Σ a_i b_i``
  - ``1ᵀK̃1 = ‖s_x‖² - Σ a_i``
  - ``1ᵀK̃L̃1 = s_xᵀ C s_y - s_x·(Σ b_i x_i) - s_y·(Σ a_i y_i) + Σ a_i b_i``

  All are sums over tokens, so they accumulate exactly over batches in O(d²) memory and
  O(n d²) time. The estimator is invariant to translating X or Y, so features may be shifted by
  any constant (here: the first batch's mean) to keep the sums well conditioned.
- **minibatch** CKA (Nguyen et al. 2021): ``Σ_b HSIC_u(X_b, Y_b) / sqrt(Σ_b HSIC_u(X_b, X_b) ·
  Σ_b HSIC_u(Y_b, Y_b))`` — a different (noisier) estimator than the full-data debiased one.

:class:`StreamingCKA` accumulates the exact full-data statistics of all loop pairs; memory is
``(loops·d)²`` floats whatever the number of tokens. ``B·e`` is identical at every loop and inflates
similarity of ``h_t``: compare also the steps Δh_t (:func:`loop_deltas`) and ``block_out``.
"""

from __future__ import annotations

from typing import Any, Literal

import pandas as pd
import torch

from mythos_lens.errors import MythosLensError, check_int
from probes._checks import as_tensor, check_finite, check_ndim

Kind = Literal["biased", "debiased", "minibatch"]
KINDS = ("biased", "debiased", "minibatch")


def _as_float(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor) and x.dtype in (torch.float32, torch.float64):
        return x.detach().cpu()
    return as_tensor(x, name)


def _flatten_loops(x: Any, name: str) -> torch.Tensor:
    """``[loop, batch, pos, d]`` or ``[loop, n, d]`` -> ``[loop, n, d]``."""
    x = _as_float(x, name)
    if x.dim() == 4 and x.numel() > 0:
        x = x.reshape(x.shape[0], -1, x.shape[-1])
    if x.dim() != 3:
        raise MythosLensError(
            f"{name} has shape {tuple(x.shape)}", "[loop, batch, pos, d] or [loop, n, d]"
        )
    if x.numel() == 0:
        raise MythosLensError(f"{name} has shape {tuple(x.shape)}", "no empty axis")
    return x


class StreamingCKA:
    """Exact loop × loop linear CKA from batches of tokens, memory independent of token count.

    Call :meth:`update` with ``[loop, n_b, d]`` (or ``[loop, batch, pos, d]``) batches of the
    same loops and width; then :meth:`matrix` gives the ``[loop, loop]`` CKA of all tokens seen,
    identical (up to rounding) to :func:`cka_matrix` on the concatenation. With
    ``kind="minibatch"`` it instead sums per-batch unbiased HSICs (Nguyen et al. 2021).

    Stored: the upper block triangle of the ``[loop·d, loop·d]`` cross-product (float64), per-loop
    sums, and ``[loop, loop]`` / ``[loop·d, loop]`` moment tables. ``shift`` ``[loop, d]`` is the
    constant subtracted from every token (default: the first batch's mean); accumulators of
    disjoint tokens that share it add up exactly to one over all of them (:meth:`merge`,
    :meth:`state_dict`: what processes all-reduce).
    """

    def __init__(self, n_loops: int, d: int, kind: Kind = "debiased", shift: Any = None) -> None:
        self.n_loops = check_int("n_loops", n_loops, 1)
        self.d = check_int("d", d, 1)
        if kind not in KINDS:
            raise MythosLensError(f"kind={kind!r}", f"one of {KINDS}")
        self.kind = kind
        self.n = 0
        self._shift: torch.Tensor | None = None
        if shift is not None:
            sh = _as_float(shift, "shift")
            if tuple(sh.shape) != (n_loops, d):
                raise MythosLensError(f"shift of shape {tuple(sh.shape)}", f"[{n_loops}, {d}]")
            self._shift = sh.reshape(n_loops, 1, d)
        self._hsic_sum = torch.zeros(n_loops, n_loops, dtype=torch.float64)
        self._reset_moments()

    def _reset_moments(self) -> None:
        L, d = self.n_loops, self.d
        self._G = torch.zeros(L * d, L * d, dtype=torch.float64)  # Σ x_t x_uᵀ (upper blocks)
        self._S = torch.zeros(L, d, dtype=torch.float64)  # Σ x_t
        self._A = torch.zeros(L, dtype=torch.float64)  # Σ ‖x_t‖²
        self._AA = torch.zeros(L, L, dtype=torch.float64)  # Σ ‖x_t‖² ‖x_u‖²
        self._ZA = torch.zeros(L * d, L, dtype=torch.float64)  # Σ x_t ‖x_u‖²
        self._m = 0

    def update(self, x: Any) -> StreamingCKA:
        """Add a batch ``[loop, n_b, d]`` or ``[loop, batch, pos, d]`` of tokens."""
        x = _flatten_loops(x, "x")
        L, nb, d = x.shape
        if (L, d) != (self.n_loops, self.d):
            raise MythosLensError(
                f"batch has {L} loops × width {d}", f"{self.n_loops} loops × width {self.d}"
            )
        check_finite(x, "x")
        if self.kind == "minibatch":
            if nb < 4:
                raise MythosLensError(f"a minibatch of {nb} tokens", ">= 4 tokens per batch")
            self._shift = x.mean(1, keepdim=True)
            self._accumulate(x)
            self._hsic_sum += self._hsic()
            self.n += nb
            self._reset_moments()
            return self
        if self._shift is None:
            self._shift = x.mean(1, keepdim=True)  # any constant shift is exact (invariance)
        self._accumulate(x)
        self.n += nb
        return self

    def _accumulate(self, x: torch.Tensor) -> None:
        """Add the moments of ``x - shift`` (one token-sized copy: ``z``)."""
        L, nb, d = x.shape
        assert self._shift is not None
        z = x.permute(1, 0, 2).reshape(nb, L * d)  # [n_b, L*d], a copy
        z -= self._shift.to(x.dtype).reshape(1, L * d)
        for t in range(L):
            blk = z[:, t * d : (t + 1) * d].transpose(0, 1) @ z[:, t * d :]  # [d, (L-t) d]
            self._G[t * d : (t + 1) * d, t * d :] += blk.to(torch.float64)
        sq = torch.linalg.vector_norm(z.view(nb, L, d), dim=-1).square()  # [n_b, L]
        self._S += z.sum(0).reshape(L, d).to(torch.float64)
        sq64 = sq.to(torch.float64)
        self._A += sq64.sum(0)
        self._AA += sq64.transpose(0, 1) @ sq64
        self._ZA += (z.transpose(0, 1) @ sq).to(torch.float64)
        self._m += nb

    MOMENTS = ("G", "S", "A", "AA", "ZA", "hsic_sum", "n", "m")

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything accumulated: the moments (:data:`MOMENTS`, float64, which add over
        disjoint tokens) and ``shift`` ``[loop, d]`` (absent before the first batch)."""
        state = {"G": self._G, "S": self._S, "A": self._A, "AA": self._AA, "ZA": self._ZA,
                 "hsic_sum": self._hsic_sum, "n": torch.tensor(float(self.n), dtype=torch.float64),
                 "m": torch.tensor(float(self._m), dtype=torch.float64)}  # fmt: skip
        if self._shift is not None:
            state["shift"] = self._shift.reshape(self.n_loops, self.d)
        return {k: v.clone() for k, v in state.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> StreamingCKA:
        """Replace the accumulated state by `state` (from :meth:`state_dict`)."""
        missing = [k for k in self.MOMENTS if k not in state]
        if missing:
            raise MythosLensError(f"CKA state without {missing}", f"keys {list(self.MOMENTS)}")
        L, d = self.n_loops, self.d
        shapes = {"G": (L * d, L * d), "S": (L, d), "A": (L,), "AA": (L, L), "ZA": (L * d, L),
                  "hsic_sum": (L, L), "n": (), "m": ()}  # fmt: skip
        for k, shape in shapes.items():
            if tuple(state[k].shape) != shape:
                raise MythosLensError(f"CKA state {k} of shape {tuple(state[k].shape)}", f"{shape}")
        self._G, self._S, self._A = (state[k].to(torch.float64).clone() for k in ("G", "S", "A"))
        self._AA, self._ZA = state["AA"].double().clone(), state["ZA"].double().clone()
        self._hsic_sum = state["hsic_sum"].double().clone()
        self.n, self._m = int(state["n"]), int(state["m"])
        shift = state.get("shift")
        self._shift = None if shift is None else shift.reshape(L, 1, d).clone()
        return self

    def merge(self, other: StreamingCKA) -> StreamingCKA:
        """Add `other`'s tokens (same loops, width, kind and shift) to this accumulator."""
        if (other.n_loops, other.d, other.kind) != (self.n_loops, self.d, self.kind):
            raise MythosLensError(f"a {other.kind} CKA of {other.n_loops} loops × {other.d}",
                                  f"{self.kind}, {self.n_loops} loops × {self.d}")  # fmt: skip
        mine, theirs = self.state_dict(), other.state_dict()
        if (
            "shift" in mine
            and "shift" in theirs
            and not torch.equal(mine["shift"], theirs["shift"])
        ):
            raise MythosLensError("CKA accumulators with different shifts", "one shared shift")
        merged = {k: mine[k] + theirs[k] for k in self.MOMENTS}
        shift = mine.get("shift", theirs.get("shift"))
        return self.load_state_dict(merged if shift is None else {**merged, "shift": shift})

    def _block(self, t: int, u: int) -> torch.Tensor:
        d = self.d
        if t <= u:
            return self._G[t * d : (t + 1) * d, u * d : (u + 1) * d]
        return self._G[u * d : (u + 1) * d, t * d : (t + 1) * d].transpose(0, 1)

    def _hsic(self) -> torch.Tensor:
        """``[L, L]`` HSIC of the accumulated moments (biased-centred or unbiased)."""
        L, d, n = self.n_loops, self.d, self._m
        H = torch.zeros(L, L, dtype=torch.float64)
        debiased = self.kind != "biased"
        if debiased and n < 4:
            raise MythosLensError(f"{n} tokens", ">= 4 tokens for the unbiased HSIC estimator")
        if n < 2:
            raise MythosLensError(f"{n} tokens", ">= 2 tokens")
        for t in range(L):
            for u in range(t, L):
                C = self._block(t, u)
                sx, sy = self._S[t], self._S[u]
                if not debiased:
                    Cc = C - torch.outer(sx, sy) / n
                    h = (Cc * Cc).sum() / (n - 1) ** 2
                else:
                    ab = self._AA[t, u]
                    tr = (C * C).sum() - ab
                    k1 = sx @ sx - self._A[t]
                    l1 = sy @ sy - self._A[u]
                    bx = self._ZA[t * d : (t + 1) * d, u]  # Σ b_i x_i
                    ay = self._ZA[u * d : (u + 1) * d, t]  # Σ a_i y_i
                    kl1 = sx @ C @ sy - sx @ bx - sy @ ay + ab
                    h = (tr + k1 * l1 / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * kl1) / (n * (n - 3))
                H[t, u] = H[u, t] = h
        return H

    def hsic(self) -> torch.Tensor:
        """``[loop, loop]`` HSIC values (summed over batches for ``kind="minibatch"``)."""
        if self.n == 0:
            raise MythosLensError("no batch was added", "update() called at least once")
        return self._hsic_sum.clone() if self.kind == "minibatch" else self._hsic()

    def matrix(self) -> torch.Tensor:
        """``[loop, loop]`` CKA; NaN where a loop's features are constant (HSIC(X,X) <= 0)."""
        H = self.hsic()
        diag = H.diagonal()
        denom = torch.sqrt(torch.outer(diag, diag))
        out = H / denom
        out[~(torch.outer(diag, diag) > 0)] = float("nan")
        return out

    def table(self, site: str | None = None) -> pd.DataFrame:
        """Tidy ``loop_a, loop_b, site, metric, value`` table of :meth:`matrix`."""
        return matrix_to_table(self.matrix(), f"cka_{self.kind}", site)


def matrix_to_table(m: torch.Tensor, metric: str, site: str | None = None) -> pd.DataFrame:
    """A square ``[loop, loop]`` matrix as a tidy ``loop_a, loop_b, site, metric, value`` table."""
    L = m.shape[0]
    a, b = torch.meshgrid(torch.arange(L), torch.arange(L), indexing="ij")
    return pd.DataFrame(
        {
            "loop_a": a.reshape(-1).numpy(),
            "loop_b": b.reshape(-1).numpy(),
            "site": site if site is not None else "",
            "metric": metric,
            "value": m.reshape(-1).double().numpy(),
        }
    )


def cka_matrix(
    x: Any, kind: Kind = "debiased", *, batch_size: int = 8192, seed: int | None = None
) -> torch.Tensor:
    """Loop × loop linear CKA of ``x`` ``[loop, batch, pos, d]`` (or ``[loop, n, d]``).

    Tokens (batch × pos) are the samples. ``biased`` / ``debiased`` are exact full-data
    estimates, computed in chunks of ``batch_size`` tokens (chunking changes nothing but
    temporary memory). ``minibatch`` averages unbiased HSIC over batches of ``batch_size``
    tokens (Nguyen et al. 2021), in a seeded random token order when ``seed`` is given.
    Returns a float64 ``[loop, loop]`` tensor.
    """
    x = _flatten_loops(x, "x")
    batch_size = check_int("batch_size", batch_size, 1)
    L, n, d = x.shape
    acc = StreamingCKA(L, d, kind)
    if kind == "minibatch" and seed is not None:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        x = x[:, order]
    for start in range(0, n, batch_size):
        chunk = x[:, start : start + batch_size]
        if kind == "minibatch" and chunk.shape[1] < 4:
            break  # a last sliver of < 4 tokens has no unbiased HSIC; drop it
        acc.update(chunk)
    return acc.matrix()


def linear_cka(X: Any, Y: Any, kind: Kind = "debiased") -> float:
    """Linear CKA between two representations of the same tokens, X ``[n, d]`` and Y ``[n, e]``.

    Widths may differ. Same estimators as :func:`cka_matrix` (``minibatch`` uses one batch).
    """
    X = _as_float(X, "X")
    Y = _as_float(Y, "Y")
    check_ndim(X, 2, "X", "[n, d]")
    check_ndim(Y, 2, "Y", "[n, e]")
    if X.shape[0] != Y.shape[0]:
        raise MythosLensError(
            f"X has {X.shape[0]} rows but Y has {Y.shape[0]}", "the same tokens (rows) in both"
        )
    d = max(X.shape[1], Y.shape[1])
    pad = torch.zeros(2, X.shape[0], d, dtype=torch.float64)  # zero columns change no HSIC term
    pad[0, :, : X.shape[1]] = X.double()
    pad[1, :, : Y.shape[1]] = Y.double()
    if kind == "minibatch":
        kind = "debiased"
    return float(cka_matrix(pad, kind, batch_size=max(X.shape[0], 1))[0, 1])


def loop_deltas(x: Any, x0: Any = None) -> torch.Tensor:
    """Steps Δx_t = x_t − x_{t−1} of ``x`` ``[loop, batch, pos, d]``.

    With ``x0`` ``[batch, pos, d]`` (e.g. ``e``, which is h_0 for ``resid_post``) the first step
    is ``x_0 − x0`` and the result keeps ``loop`` steps; without it there are ``loop − 1``.
    """
    x = _as_float(x, "x")
    check_ndim(x, 4, "x", "[loop, batch, pos, d]")
    if x0 is None:
        if x.shape[0] < 2:
            raise MythosLensError(f"{x.shape[0]} loop(s) and no x0", ">= 2 loops, or x0")
        return x[1:] - x[:-1]
    x0 = _as_float(x0, "x0").to(x.dtype)
    if tuple(x0.shape) != tuple(x.shape[1:]):
        raise MythosLensError(f"x0 has shape {tuple(x0.shape)}", f"{tuple(x.shape[1:])}")
    return x - torch.cat([x0.unsqueeze(0), x[:-1]], 0)


def cka_table(
    x: Any,
    kind: Kind = "debiased",
    *,
    site: str | None = None,
    batch_size: int = 8192,
    seed: int | None = None,
) -> pd.DataFrame:
    """Tidy loop × loop CKA of ``x`` ``[loop, batch, pos, d]``.

    Columns ``loop_a, loop_b, site, metric (cka_<kind>), value``.
    """
    m = cka_matrix(x, kind, batch_size=batch_size, seed=seed)
    return matrix_to_table(m, f"cka_{kind}", site)


def loop_similarity_tables(
    sites: dict[str, Any], kind: Kind = "debiased", *, batch_size: int = 8192
) -> pd.DataFrame:
    """Concatenated :func:`cka_table` for several sites, e.g. ``{"resid_post": h,
    "delta_h": loop_deltas(h, e), "block_out": block_out}`` (each ``[loop, batch, pos, d]``)."""
    if not isinstance(sites, dict) or not sites:
        raise MythosLensError(f"sites is {type(sites).__name__}", "a non-empty dict name -> tensor")
    frames = [cka_table(v, kind, site=k, batch_size=batch_size) for k, v in sites.items()]
    return pd.concat(frames, ignore_index=True)
