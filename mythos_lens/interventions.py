"""Interventions per loop step: each is a visitor passed to ``capture(..., interventions=[...])``
or ``run(..., visitors=[...])``.

- :class:`AblateLora` — remove the depth-wise LoRA delta at chosen loops.
- :class:`SetLoraScale` — recompute the LoRA delta at chosen loops with another scale vector
  (e.g. the mean over loops).
- :class:`Patch` — replace a site's value at a loop (e.g. ``resid_post`` from another input's trace).
- :class:`ForceExperts` — make the router choose given experts at a loop.
- :class:`FreezeRouter` — reuse the experts chosen at one loop for later loops, in the same pass.
- :class:`EditSite` — call your own function on a site (what ``run_with_hooks`` does).
- :class:`SkipStep` — a step leaves a state site as it was (any looped model).

Running more loops than trained is ``capture(model, ids, n_loops=N)``; ``run_all_loops=True``
keeps ACT from stopping early.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from mythos_lens.errors import MythosLensError, check_int
from mythos_lens.events import SiteEvent
from mythos_lens.trace import Trace


def _loop_set(loops: Any) -> frozenset[int] | None:
    if loops is None:
        return None
    if isinstance(loops, (int, np.integer)) or (
        isinstance(loops, torch.Tensor) and loops.ndim == 0
    ):
        loops = [loops]
    try:
        items = list(loops)
    except TypeError:
        raise MythosLensError(f"loops={loops!r}", "None, a loop index or a list of them") from None
    return frozenset(check_int("loop index", t, 0) for t in items)


def _check_loop(loop: Any) -> int:
    return check_int("loop", loop, 0)


def _as_tensor(value: Any, what: str, *, integer: bool) -> torch.Tensor:
    """A tensor from a tensor, numpy array or nested list; integer or floating as asked."""
    try:
        t = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise MythosLensError(
            f"{what} is a {type(value).__name__}", "a tensor or nested list"
        ) from None
    ok = (not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool) if integer \
        else t.is_floating_point()  # fmt: skip
    if not ok:
        raise MythosLensError(
            f"{what} has dtype {t.dtype}", "integer ids" if integer else "floating values"
        )
    return t


class AblateLora:
    """Zero the LoRA delta at `loops` (all loops when ``None``); other loops are untouched."""

    def __init__(self, loops: int | Iterable[int] | None = None) -> None:
        self.loops = _loop_set(loops)
        self.target_loops = self.loops
        self.requires = ("lora_delta",)

    def __repr__(self) -> str:
        return f"AblateLora(loops={sorted(self.loops) if self.loops is not None else 'all'})"

    def __call__(self, event: SiteEvent, value: torch.Tensor) -> torch.Tensor | None:
        if event.site != "lora_delta" or (self.loops is not None and event.loop not in self.loops):
            return None
        return torch.zeros_like(value)


class SetLoraScale:
    """At `loops`, recompute the LoRA delta as ``(down(x) * scale) @ B`` with `scale` ``[rank]``
    instead of the loop's own row; ``scale="mean"`` uses the mean row over the trained loops."""

    def __init__(
        self, loops: int | Iterable[int] | None, scale: torch.Tensor | str = "mean"
    ) -> None:
        self.loops = _loop_set(loops)
        self.target_loops = self.loops
        self.requires = ("lora_delta",)
        if isinstance(scale, str):
            if scale != "mean":
                raise MythosLensError(f"scale={scale!r}", "a [rank] tensor or 'mean'")
        else:
            scale = _as_tensor(scale, "LoRA scale", integer=False)
        self.scale = scale

    def __repr__(self) -> str:
        s = self.scale if isinstance(self.scale, str) else "tensor"
        return f"SetLoraScale(loops={sorted(self.loops or [])}, scale={s})"

    def __call__(self, event: SiteEvent, value: torch.Tensor) -> torch.Tensor | None:
        if event.site != "lora_delta" or (self.loops is not None and event.loop not in self.loops):
            return None
        lora = event.model.recurrent.lora
        table = lora.scale.weight
        s = table.mean(0) if isinstance(self.scale, str) else self.scale
        s = s.to(device=table.device, dtype=table.dtype)
        if s.shape != table.shape[1:]:
            raise MythosLensError(f"LoRA scale of shape {tuple(s.shape)}", f"[{table.shape[1]}]")
        x = event.inputs[0]
        return (lora.down(x) * s) @ lora.B


class Patch:
    """Replace `site` at `loop` (``None`` for stream sites such as ``e``) with `value`.

    `value` is ``[batch, seq, ...]`` for the whole sequence, or ``[batch, len(positions), ...]``
    when `positions` is given (only those positions are replaced). :meth:`from_trace` takes the
    value from another run's trace (which must hold those positions).
    """

    def __init__(
        self,
        site: str,
        loop: int | None,
        value: torch.Tensor,
        positions: Iterable[int] | None = None,
    ) -> None:
        if not isinstance(site, str):
            raise MythosLensError(f"site={site!r}", "a site name")
        # Whether the model has the site, can edit it, and fires it per loop is checked when
        # it runs (each model's adapter lists its sites).
        loop = None if loop is None else _check_loop(loop)
        self.site, self.loop = site, loop
        self.edits = True
        self.value = _as_tensor(value, f"patch value for {site!r}", integer=False).detach()
        self.target_loops = None if loop is None else frozenset([loop])
        self.positions = None
        if positions is not None:
            pos = _as_tensor(positions, "patch positions", integer=True).reshape(-1)
            if pos.numel() == 0 or int(pos.min()) < 0:
                raise MythosLensError(f"patch positions {pos.tolist()}", "positions >= 0")
            self.positions = pos.to(torch.long)

    @classmethod
    def from_trace(
        cls,
        trace: Trace,
        site: str,
        loop: int | None,
        positions: Iterable[int] | None = None,
        to_loop: int | None = None,
    ) -> Patch:
        """Patch with `trace`'s value of `site` at `loop` (at `positions`, default all kept),
        written at the same loop or, for a cross-step transplant, at `to_loop`."""
        if to_loop is not None:
            if site not in trace.loop:
                raise MythosLensError(f"to_loop for stream site {site!r}", "a loop site")
            p = cls.from_trace(trace, site, loop, positions)
            return cls(site, _check_loop(to_loop), p.value, positions=p.positions)
        if site in trace.loop:
            loop = _check_loop(loop)
            if loop >= trace[site].shape[0]:
                raise MythosLensError(
                    f"loop {loop} of a trace that ran {trace.n_loops} loops",
                    f"a loop in [0, {trace.n_loops - 1}]",
                )
            src = trace[site][loop]
        else:
            src = trace[site]
        kept = trace.positions.tolist()
        if positions is None:
            if kept != list(range(trace.input_ids.shape[1])):
                return cls(site, loop, src, positions=kept)
            return cls(site, loop, src)
        idx = []
        for p in positions:
            if p not in kept:
                raise MythosLensError(f"position {p} is not in the trace", f"one of {kept}")
            idx.append(kept.index(p))
        return cls(site, loop, src[:, idx], positions=list(positions))

    def __repr__(self) -> str:
        return f"Patch({self.site!r}, loop={self.loop}, positions={self.positions})"

    def __call__(self, event: SiteEvent, value: torch.Tensor) -> torch.Tensor | None:
        if event.site != self.site or event.loop != self.loop:
            return None
        new = self.value.to(device=value.device, dtype=value.dtype)
        if self.positions is None:
            if new.shape != value.shape:
                raise MythosLensError(
                    f"patch for {self.site!r} has shape {tuple(new.shape)}",
                    f"{tuple(value.shape)}",
                )
            return new
        out = value.clone()
        pos = self.positions.to(value.device)
        if int(pos.max()) >= value.shape[1]:
            raise MythosLensError(
                f"patch position {int(pos.max())} for a sequence of {value.shape[1]}",
                f"positions in [0, {value.shape[1] - 1}]",
            )
        if new.shape != (value.shape[0], len(pos), *value.shape[2:]):
            raise MythosLensError(
                f"patch for {self.site!r} at {len(pos)} positions has shape {tuple(new.shape)}",
                f"{(value.shape[0], len(pos), *value.shape[2:])}",
            )
        out[:, pos] = new
        return out


def force_router_logits(
    logits: torch.Tensor, router_bias: torch.Tensor, expert_ids: torch.Tensor
) -> torch.Tensor:
    """Shift `logits` ``[batch, seq, E]`` so upstream's top-k picks `expert_ids` ``[batch, seq, k]``.

    The same constant is added to every chosen expert of a token, so the renormalised gate over
    the chosen experts (upstream's weights) stays the model's own.
    """
    E = logits.shape[-1]
    ids = expert_ids.to(device=logits.device, dtype=torch.long)
    if ids.shape[:-1] != logits.shape[:-1]:
        raise MythosLensError(
            f"forced expert ids of shape {tuple(ids.shape)}",
            f"[{', '.join(map(str, logits.shape[:-1]))}, k]",
        )
    if int(ids.min()) < 0 or int(ids.max()) >= E:
        raise MythosLensError("forced expert id outside the routed experts", f"ids in [0, {E - 1}]")
    mask = torch.zeros_like(logits).scatter_(-1, ids, 1.0)
    if not torch.equal(mask.sum(-1), torch.full_like(mask[..., 0], ids.shape[-1])):
        raise MythosLensError("forced expert ids repeat within a token", "k distinct ids per token")
    biased = logits + router_bias
    margin = biased.amax(-1, keepdim=True) - biased.amin(-1, keepdim=True) + 1.0
    return logits + margin * mask


class ForceExperts:
    """At `loop`, make the router choose `expert_ids` ``[batch, seq, k]`` (k = the model's top-k)."""

    def __init__(self, loop: int, expert_ids: torch.Tensor) -> None:
        self.loop = _check_loop(loop)
        self.target_loops = frozenset([self.loop])
        self.requires = ("router_logits",)
        self.expert_ids = _as_tensor(expert_ids, "forced expert ids", integer=True)
        if self.expert_ids.dim() < 1:
            raise MythosLensError("forced expert ids are a scalar", "[batch, seq, k] ids")

    def __repr__(self) -> str:
        return f"ForceExperts(loop={self.loop})"

    def __call__(self, event: SiteEvent, value: torch.Tensor) -> torch.Tensor | None:
        if event.site != "router_logits" or event.loop != self.loop:
            return None
        ffn = event.model.recurrent.block.ffn
        if self.expert_ids.shape[-1] != ffn.topk:
            raise MythosLensError(
                f"{self.expert_ids.shape[-1]} forced experts per token", f"{ffn.topk}"
            )
        return force_router_logits(value, ffn.router_bias, self.expert_ids)


class FreezeRouter:
    """Reuse the experts chosen at `source_loop` at every later loop in `loops` (default: all later
    loops), within the same forward pass."""

    def __init__(self, source_loop: int = 0, loops: int | Iterable[int] | None = None) -> None:
        self.source_loop = _check_loop(source_loop)
        self.loops = _loop_set(loops)
        self.target_loops = frozenset([self.source_loop, *(self.loops or ())])
        self.requires = ("router_logits",)
        self._ids: torch.Tensor | None = None

    def __repr__(self) -> str:
        return f"FreezeRouter(source_loop={self.source_loop}, loops={self.loops or 'later'})"

    def __call__(self, event: SiteEvent, value: torch.Tensor) -> torch.Tensor | None:
        if event.site != "router_logits":
            return None
        ffn = event.model.recurrent.block.ffn
        if event.loop == self.source_loop:
            self._ids = (value + ffn.router_bias).topk(ffn.topk, dim=-1).indices
            return None
        targeted = event.loop > self.source_loop if self.loops is None else event.loop in self.loops
        if not targeted or self._ids is None:
            return None
        return force_router_logits(value, ffn.router_bias, self._ids)


class EditSite:
    """Call ``fn(value, event) -> value | None`` at `site` for loops in `loops` (all when None)."""

    def __init__(
        self,
        site: str,
        fn: Callable[[torch.Tensor, SiteEvent], torch.Tensor | None],
        loops: int | Iterable[int] | None = None,
    ) -> None:
        if not isinstance(site, str):
            raise MythosLensError(f"site={site!r}", "a site name")
        if not callable(fn):
            raise MythosLensError(f"fn is a {type(fn).__name__}", "a callable (value, event)")
        self.site, self.fn, self.loops = site, fn, _loop_set(loops)
        self.target_loops = self.loops
        self.edits = True

    def __repr__(self) -> str:
        return f"EditSite({self.site!r}, loops={sorted(self.loops) if self.loops else 'all'})"

    def __call__(self, event: SiteEvent, value: torch.Tensor) -> torch.Tensor | None:
        if event.site != self.site:
            return None
        if self.loops is not None and event.loop not in self.loops:
            return None
        return self.fn(value, event)


class SkipStep:
    """Skip step `loop` of a stepped state site: the site keeps its value from the step before
    (OpenMythos ``resid_post``: h_t = h_{t−1}; HRM-Text ``L_out``: z_L unchanged by that L call).
    Later steps run on from there. Step 0 has no previous value: use ``Patch`` for it."""

    def __init__(self, site: str, loop: int) -> None:
        if not isinstance(site, str):
            raise MythosLensError(f"site={site!r}", "a site name")
        self.site, self.loop = site, check_int("loop", loop, 1)
        self.target_loops = frozenset([self.loop])
        self.edits = True
        self._previous: torch.Tensor | None = None

    def __repr__(self) -> str:
        return f"SkipStep({self.site!r}, loop={self.loop})"

    def __call__(self, event: SiteEvent, value: torch.Tensor) -> torch.Tensor | None:
        if event.site != self.site:
            return None
        if event.loop == self.loop - 1:
            self._previous = value
            return None
        if event.loop == self.loop and self._previous is not None:
            return self._previous
        return None
