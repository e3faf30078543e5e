"""Lenses per loop: read next-token distributions out of every loop step's hidden state.

A *readout* is any callable ``h [..., d] -> logits [..., vocab]``; the model-side ones are in
``mythos_lens.readouts`` (``logit_lens``: ``head(norm(h))``; ``coda_lens``: coda layers then norm
and head, needs full ``[batch, seq, d]`` sequences). The tuned lens (Belrose et al. 2023) learns a
per-loop affine translator ``h + A_t h + b_t`` (zero-initialised: starts as the identity) in
front of a readout, trained to minimise KL(final ‖ lens).

Ranks are 0-based (0 = the lens's top-1), counting tokens with a strictly larger logit.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from mythos_lens.atomic import atomic_path, write_json_atomic
from mythos_lens.errors import MythosLensError, check_int
from probes._checks import as_int_tensor, as_tensor, check_finite, check_ndim
from probes._dist import entropy, kl, rank_of

Readout = Callable[[torch.Tensor], torch.Tensor]
TUNED_LENS_FORMAT = "mythos-lens-tuned-lens/1"


def apply_lens(states: torch.Tensor, readout: Readout) -> torch.Tensor:
    """Lens logits per loop: ``readout`` applied to each loop's ``[batch, pos, d]`` state.

    Args:
        states: ``[loop, batch, pos, d]`` (e.g. ``trace.loop["resid_post"]``; for the coda lens
            every sequence position must be present, in order).
        readout: ``h [batch, pos, d] -> [batch, pos, vocab]``.

    Returns:
        ``[loop, batch, pos, vocab]`` (no gradient).
    """
    if not callable(readout):
        raise MythosLensError(f"readout is a {type(readout).__name__}", "a callable h -> logits")
    if not isinstance(states, torch.Tensor) or not states.is_floating_point():
        raise MythosLensError(f"states is a {type(states).__name__}", "a floating torch.Tensor")
    check_ndim(states, 4, "states", "[loop, batch, pos, d]")
    with torch.no_grad():
        out = [readout(states[t]) for t in range(states.shape[0])]
    for o in out:
        if not isinstance(o, torch.Tensor) or o.shape[:-1] != states.shape[1:3]:
            raise MythosLensError(
                f"readout returned shape {tuple(getattr(o, 'shape', ()))}",
                f"[{states.shape[1]}, {states.shape[2]}, vocab]",
            )
    return torch.stack(out)


def _draw_control(shape: tuple[int, ...], V: int, avoid: list[torch.Tensor], seed: int):
    """Seeded uniformly random token ids per position, different from every id in `avoid`."""
    g = torch.Generator().manual_seed(seed)
    ctrl = torch.randint(0, V, shape, generator=g)
    for _ in range(1000):
        clash = torch.zeros(shape, dtype=torch.bool)
        for a in avoid:
            clash |= ctrl == a
        if not clash.any():
            return ctrl
        ctrl[clash] = torch.randint(0, V, (int(clash.sum()),), generator=g)
    raise MythosLensError(f"no control token found in a vocabulary of {V}", "a larger vocabulary")


def lens_table(
    lens_logits: Any,
    final_logits: Any,
    *,
    target_ids: Any = None,
    control_ids: Any = None,
    control_seed: int = 0,
    k: int = 5,
    positions: Any = None,
    lens: str = "",
) -> pd.DataFrame:
    """Per token × loop lens readings.

    Args:
        lens_logits: ``[loop, batch, pos, vocab]`` (from :func:`apply_lens`).
        final_logits: ``[batch, pos, vocab]`` the model's output logits.
        target_ids: optional ``[batch, pos]`` correct tokens.
        control_ids: optional ``[batch, pos]`` control tokens; by default a seeded
            (``control_seed``) uniformly random token differing from the final prediction and
            the target — its rank is what "no information" looks like (≈ (vocab − 1) / 2).
        k: number of top tokens to list (``top_1`` … ``top_k`` ids, and ``top_1_prob``).
        positions: optional ``[pos]`` sequence positions for the ``pos`` column.
        lens: a name for the ``lens`` column (e.g. "logit", "coda", "tuned").

    Returns:
        One row per (loop, batch, pos): ``lens, loop, batch, pos, top_1..top_k, top_1_prob,
        final_token, final_rank, kl_final_lens`` (KL(final ‖ lens), nats), ``entropy`` (nats),
        ``control_token, control_rank`` and, with targets, ``target_token, target_rank``.
    """
    lg = as_tensor(lens_logits, "lens_logits")
    fin = as_tensor(final_logits, "final_logits")
    check_ndim(lg, 4, "lens_logits", "[loop, batch, pos, vocab]")
    check_ndim(fin, 3, "final_logits", "[batch, pos, vocab]")
    if lg.shape[1:] != fin.shape:
        raise MythosLensError(
            f"lens_logits {tuple(lg.shape)} vs final_logits {tuple(fin.shape)}",
            "lens_logits = [loop, *final_logits.shape]",
        )
    check_finite(lg, "lens_logits")
    check_finite(fin, "final_logits")
    L, B, P, V = lg.shape
    k = check_int("k", k, 1)
    if k > V:
        raise MythosLensError(f"k={k} top tokens from a vocabulary of {V}", "k <= vocab")

    def ids(x: Any, name: str) -> torch.Tensor:
        t = as_int_tensor(x, name)
        if t.shape != (B, P):
            raise MythosLensError(f"{name} has shape {tuple(t.shape)}", f"[{B}, {P}] [batch, pos]")
        if t.min() < 0 or t.max() >= V:
            raise MythosLensError(f"{name} outside the vocabulary", f"ids in [0, {V})")
        return t

    final_tok = fin.argmax(-1)
    tgt = ids(target_ids, "target_ids") if target_ids is not None else None
    if control_ids is None:
        avoid = [final_tok] + ([tgt] if tgt is not None else [])
        ctrl = _draw_control((B, P), V, avoid, control_seed)
    else:
        ctrl = ids(control_ids, "control_ids")

    grids = np.meshgrid(np.arange(L), np.arange(B), np.arange(P), indexing="ij")
    pos = np.arange(P) if positions is None else np.asarray(as_int_tensor(positions, "positions"))
    if pos.shape != (P,):
        raise MythosLensError(f"positions has shape {pos.shape}", f"[{P}]")
    df = pd.DataFrame({"lens": lens, "loop": grids[0].ravel(), "batch": grids[1].ravel()})
    df["pos"] = pos[grids[2].ravel()]
    top = lg.topk(k, dim=-1)
    for j in range(k):
        df[f"top_{j + 1}"] = top.indices[..., j].reshape(-1).numpy()
    df["top_1_prob"] = torch.softmax(lg, -1).gather(-1, top.indices[..., :1]).reshape(-1).numpy()

    def per_loop(tok: torch.Tensor) -> torch.Tensor:
        return tok.unsqueeze(0).expand(L, B, P)

    df["final_token"] = per_loop(final_tok).reshape(-1).numpy()
    df["final_rank"] = rank_of(lg, per_loop(final_tok)).reshape(-1).numpy()
    df["kl_final_lens"] = kl(fin.unsqueeze(0).expand_as(lg), lg).reshape(-1).numpy()
    df["entropy"] = entropy(lg).reshape(-1).numpy()
    df["control_token"] = per_loop(ctrl).reshape(-1).numpy()
    df["control_rank"] = rank_of(lg, per_loop(ctrl)).reshape(-1).numpy()
    if tgt is not None:
        df["target_token"] = per_loop(tgt).reshape(-1).numpy()
        df["target_rank"] = rank_of(lg, per_loop(tgt)).reshape(-1).numpy()
    return df


def lens_long(table: pd.DataFrame) -> pd.DataFrame:
    """The numeric readings of :func:`lens_table` as tidy ``lens, loop, batch, pos, metric,
    value`` rows (for plotting token × loop heatmaps of any metric)."""
    metrics = [
        c
        for c in [
            "final_rank",
            "target_rank",
            "control_rank",
            "kl_final_lens",
            "entropy",
            "top_1_prob",
        ]
        if c in table.columns
    ]
    if not metrics:
        raise MythosLensError("table has no lens metric column", "a lens_table() result")
    long = table.melt(
        id_vars=["lens", "loop", "batch", "pos"], value_vars=metrics, var_name="metric"
    )
    long["value"] = long["value"].astype("float64")
    return long


class TunedLens(torch.nn.Module):
    """Per-loop affine translators ``h -> h + A_t h + b_t`` (``A`` ``[loop, d, d]``, ``b``
    ``[loop, d]``), zero-initialised so an untrained tuned lens equals the plain readout."""

    def __init__(self, n_loops: int, d: int) -> None:
        super().__init__()
        self.n_loops = check_int("n_loops", n_loops, 1)
        self.d = check_int("d", d, 1)
        self.A = torch.nn.Parameter(torch.zeros(n_loops, d, d))
        self.b = torch.nn.Parameter(torch.zeros(n_loops, d))
        self.meta: dict[str, Any] = {}

    def translate(self, h: torch.Tensor, loop: int) -> torch.Tensor:
        """``h [..., d]`` at loop ``loop`` -> translated ``[..., d]``."""
        if isinstance(loop, bool) or not isinstance(loop, (int, np.integer)):
            raise MythosLensError(f"loop={loop!r}", "an integer loop index")
        if not 0 <= loop < self.n_loops:
            raise MythosLensError(f"loop={loop}", f"0 <= loop < {self.n_loops} (trained loops)")
        if h.shape[-1] != self.d:
            raise MythosLensError(f"h has width {h.shape[-1]}", f"width {self.d}")
        h = h.to(self.A.dtype)
        return h + h @ self.A[loop].T + self.b[loop]

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """``[loop, ..., d] -> [loop, ..., d]``: each loop's states through its translator."""
        if states.dim() < 2 or states.shape[0] != self.n_loops:
            raise MythosLensError(
                f"states has shape {tuple(states.shape)}", f"[{self.n_loops} loops, ..., {self.d}]"
            )
        return torch.stack([self.translate(states[t], t) for t in range(self.n_loops)])

    def logits(self, states: torch.Tensor, readout: Readout) -> torch.Tensor:
        """Tuned-lens logits ``[loop, batch, pos, vocab]`` of ``states`` ``[loop, batch, pos, d]``."""
        with torch.no_grad():
            return apply_lens(self.forward(states), readout)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``tuned_lens.safetensors`` (A, b) and ``tuned_lens.json`` into ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        with atomic_path(d / "tuned_lens.safetensors") as tmp:
            tensors = {"A": self.A.detach().contiguous(), "b": self.b.detach().contiguous()}
            save_file(tensors, str(tmp))
        info = {"format": TUNED_LENS_FORMAT, "n_loops": self.n_loops, "d": self.d, **self.meta}
        write_json_atomic(d / "tuned_lens.json", info)
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike) -> TunedLens:
        """Read a lens written by :meth:`save` (safetensors + JSON, never pickle); validated."""
        d = Path(directory)
        try:
            info = json.loads((d / "tuned_lens.json").read_text())
            tensors = load_file(str(d / "tuned_lens.safetensors"))
        except Exception as exc:
            raise MythosLensError(f"{d} could not be read ({exc})", "a saved tuned lens") from None
        if info.get("format") != TUNED_LENS_FORMAT:
            raise MythosLensError(f"{d} has format {info.get('format')!r}", TUNED_LENS_FORMAT)
        L, dim = info.get("n_loops"), info.get("d")
        A, b = tensors.get("A"), tensors.get("b")
        if A is None or b is None or A.shape != (L, dim, dim) or b.shape != (L, dim):
            raise MythosLensError(
                f"{d} holds A {getattr(A, 'shape', None)}, b {getattr(b, 'shape', None)}",
                f"A [{L}, {dim}, {dim}] and b [{L}, {dim}] as the JSON says",
            )
        lens = cls(L, dim)
        with torch.no_grad():
            lens.A.copy_(A)
            lens.b.copy_(b)
        lens.meta = {k: v for k, v in info.items() if k not in ("format", "n_loops", "d")}
        return lens


def fit_tuned_lens(
    states: Any,
    final_logits: Any,
    readout: Readout,
    *,
    steps: int = 300,
    lr: float = 1e-3,
    batch_tokens: int = 512,
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool = True,
) -> TunedLens:
    """Train a :class:`TunedLens` on captured states to minimise KL(final ‖ lens).

    Args:
        states: ``[loop, batch, pos, d]`` hidden states (e.g. ``resid_post``).
        final_logits: ``[batch, pos, vocab]`` the model's logits for the same tokens.
        readout: a *per-token* readout ``[..., d] -> [..., vocab]`` (the logit lens; gradients
            flow through it but must not change it — ``mythos_lens.readouts`` detaches params).
        steps, lr, batch_tokens, weight_decay: Adam on random token minibatches (all loops
            each step; loss = mean over loops of the mean KL).
        seed: seeds the minibatch sampling (initialisation is zeros), so training is
            deterministic. ``progress``: tqdm bar.

    The lens's ``meta`` records the training settings and the loss per loop before and after.
    """
    h = as_tensor(states, "states").float()
    fin = as_tensor(final_logits, "final_logits").float()
    check_ndim(h, 4, "states", "[loop, batch, pos, d]")
    check_ndim(fin, 3, "final_logits", "[batch, pos, vocab]")
    if h.shape[1:3] != fin.shape[:2]:
        raise MythosLensError(
            f"states tokens {tuple(h.shape[1:3])} vs final_logits {tuple(fin.shape[:2])}",
            "the same [batch, pos]",
        )
    check_finite(h, "states")
    steps = check_int("steps", steps, 1)
    batch_tokens = check_int("batch_tokens", batch_tokens, 1)
    L, B, P, d = h.shape
    flat_h = h.reshape(L, B * P, d)
    flat_f = fin.reshape(B * P, -1)
    lens = TunedLens(L, d)
    opt = torch.optim.Adam(lens.parameters(), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)

    def loss_per_loop(idx: torch.Tensor) -> torch.Tensor:
        f = flat_f[idx]
        return torch.stack(
            [kl(f, readout(lens.translate(flat_h[t, idx], t))).mean() for t in range(L)]
        )

    everything = torch.arange(B * P)
    with torch.no_grad():
        before = loss_per_loop(everything)
    for _ in tqdm(range(steps), desc="tuned lens", disable=not progress):
        idx = torch.randint(0, B * P, (min(batch_tokens, B * P),), generator=g)
        loss = loss_per_loop(idx).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = loss_per_loop(everything)
    lens.meta = {
        "objective": "KL(final || lens)",
        "steps": steps,
        "lr": lr,
        "batch_tokens": batch_tokens,
        "weight_decay": weight_decay,
        "seed": seed,
        "n_tokens": B * P,
        "kl_before": before.tolist(),
        "kl_after": after.tolist(),
    }
    return lens
