"""Hooks in, trace out: per-step capture of an unmodified looped model.

The model's adapter (``mythos_lens.adapters``) installs one forward hook per module that holds a
site and says when a step starts; a :class:`~mythos_lens.session.HookSession` turns the forward
pass into a stream of *site events* ``(site, step t, value)``. Visitors (capture,
interventions, TransformerLens hook points) see each event in order and may return a
replacement value. Hooks are removed in ``finally``. Nothing here knows a model family.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch

from mythos_lens.adapters import adapter_for
from mythos_lens.adapters.base import Adapter
from mythos_lens.dispatch import onloaded
from mythos_lens.errors import MythosLensError
from mythos_lens.events import SiteEvent, Visitor, check_loops_reached
from mythos_lens.inputs import check_positions, check_store_dtype
from mythos_lens.model import check_finite_weights, check_n_loops
from mythos_lens.session import HookSession
from mythos_lens.sites import SiteTable
from mythos_lens.trace import LazyStack, Trace


class CaptureVisitor:
    """Keeps the chosen sites, sliced to `positions`, cast to `dtype` and moved to `device`."""

    def __init__(
        self,
        table: SiteTable,
        sites: Sequence[str],
        positions: torch.Tensor | None,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        self.table = table
        self.sites = set(sites)
        self.positions = positions
        self.device = None if device is None else torch.device(device)
        self.dtype = dtype
        # Per-step tensors are kept by reference (upstream never edits them in place); the
        # trace stacks them into [loop, ...] when a site is first read (LazyStack).
        self.loop: dict[str, list[torch.Tensor]] = {}
        self.stream: dict[str, torch.Tensor] = {}
        self.layers: dict[str, list[torch.Tensor]] = {}

    def _store(self, site: str, value: torch.Tensor) -> torch.Tensor:
        x = value.detach()
        axis = self.table[site].pos_axis
        if self.positions is not None and x.dim() > axis:
            x = x.index_select(axis, self.positions.to(x.device))
        # Tensor.to costs ~10 us even when it has nothing to do: call it only when it must move.
        dtype = self.dtype if (self.dtype is not None and x.is_floating_point()) else x.dtype
        device = self.device if self.device is not None else x.device
        if dtype != x.dtype or device != x.device:
            x = x.to(device=device, dtype=dtype)
        return x

    def __call__(self, event: SiteEvent, value: torch.Tensor) -> None:
        if event.site not in self.sites:
            return None
        spec = self.table[event.site]
        if spec.stepped:
            self.loop.setdefault(event.site, []).append(self._store(event.site, value))
        elif spec.step is not None:
            self.layers.setdefault(event.site, []).append(self._store(event.site, value))
        else:
            self.stream[event.site] = self._store(event.site, value)
        return None


def check_sites_exist(visitors: Sequence[Visitor], adapter: Adapter) -> None:
    """Refuse visitors aimed at sites this model does not have (or cannot edit)."""
    for v in visitors:
        site = getattr(v, "site", None)
        if isinstance(site, str) and site not in adapter.sites:
            raise MythosLensError(
                f"{v!r} targets site {site!r}, which {adapter.name} models do not have",
                f"one of {list(adapter.sites)}",
            )
        if isinstance(site, str):
            spec = adapter.sites[site]
            if getattr(v, "edits", False) and (not spec.editable or spec.step == "layer"):
                editable = [n for n in adapter.sites.editable if adapter.sites[n].step != "layer"]
                raise MythosLensError(f"{v!r}: cannot edit site {site!r}", f"one of {editable}")
            loops = getattr(v, "target_loops", None)
            if not spec.stepped and loops:
                raise MythosLensError(
                    f"{v!r} names loops for {site!r}, which fires once per forward", "loop=None"
                )
            if (
                spec.stepped
                and getattr(v, "edits", False)
                and hasattr(v, "loop")
                and v.loop is None
            ):
                raise MythosLensError(f"{v!r}: {site!r} fires at every loop", "a loop index")
        needs = getattr(v, "requires", ())
        missing = [s for s in needs if s not in adapter.sites]
        if missing:
            raise MythosLensError(
                f"{v!r} needs site(s) {missing}, which {adapter.name} models do not have",
                f"an intervention for this model's sites ({list(adapter.sites)})",
            )


def run(
    model: Any,
    input_ids: Any,
    *,
    n_loops: int | None = None,
    visitors: Sequence[Visitor] = (),
    run_all_loops: bool = False,
    grad: bool = False,
    optional_sites: Sequence[str] = (),
    step_options: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, int]:
    """Run one forward pass with visitors attached; returns ``(logits [batch, seq, vocab],
    steps_run)`` (steps of the adapter's primary kind: loops for OpenMythos).

    ``run_all_loops=True`` keeps the model from stopping early (OpenMythos: passes upstream an
    empty KV cache, which disables ACT's early exit without changing any value).
    ``optional_sites`` (e.g. ``attn_pattern``) are computed and emitted only when named here.
    ``step_options`` are the adapter's extra step controls (e.g. HRM-Text's ``L_cycles``).
    """
    adapter = adapter_for(model)
    check_finite_weights(model)
    ids = adapter.check_ids(input_ids, model)
    n = check_n_loops(adapter.default_steps(model) if n_loops is None else n_loops)
    check_sites_exist(visitors, adapter)
    by_kind: dict[str, list[Visitor]] = {}
    for v in visitors:
        site = getattr(v, "site", None)
        kind = adapter.sites[site].step if site in adapter.sites else None
        by_kind.setdefault(kind if kind and kind != "layer" else adapter.primary, []).append(v)
    primary = by_kind.get(adapter.primary, [])
    check_loops_reached(primary, n, n, False)  # before running: loops beyond n_loops
    options = dict(step_options or {})
    unknown = sorted(set(options) - set(adapter.step_options))
    if unknown:
        raise MythosLensError(f"step options {unknown} for {adapter.name}",
                              f"some of {list(adapter.step_options)}")  # fmt: skip
    session = HookSession(adapter, model, visitors, optional_sites)
    grad_ctx = contextlib.nullcontext() if grad else torch.no_grad()
    with session.installed(), grad_ctx:
        logits = adapter.run(model, ids, n, run_all_loops, session, **options)
        logits = session.emit("logits", logits)
    ran = session.steps_run()
    check_loops_reached(primary, ran, n, ran < n)
    for kind, vs in by_kind.items():  # nested step kinds: checked against what ran
        if kind != adapter.primary:
            check_loops_reached(vs, session.steps_run(kind), session.steps_run(kind), False)
    return logits, ran


def capture(
    model: Any,
    input_ids: Any,
    *,
    n_loops: int | None = None,
    sites: str | Sequence[str] | None = None,
    positions: Any = None,
    store_device: torch.device | str | None = "cpu",
    store_dtype: torch.dtype | None = None,
    interventions: Sequence[Visitor] = (),
    run_all_loops: bool = False,
    step_options: dict[str, Any] | None = None,
) -> Trace:
    """Run one forward pass of `model` on `input_ids` ``[batch, seq]`` and capture every step.

    Args:
        n_loops: steps of the model's primary kind (OpenMythos: loops, default
            ``max_loop_iters``, may exceed it; HRM-Text: H cycles). A model may run fewer (ACT):
            the trace holds exactly the steps that ran (``trace.n_loops``).
        sites: site names to keep (default all but the opt-in ones; the model's adapter lists
            them: ``trace.site_table``). Logits are always kept.
        positions: sequence positions to keep on the ``pos`` axis (default all).
        store_device / store_dtype: where and in what floating dtype captured tensors are kept
            (``None`` = as computed).
        interventions: visitors applied before capture sees a value (see
            ``mythos_lens.interventions``); the trace records the intervened run.
        run_all_loops: keep the model from stopping early (values unchanged).
        step_options: the adapter's extra step controls (e.g. ``{"L_cycles": 2}``).

    Returns:
        A :class:`Trace` whose stepped sites are ``[step, batch, pos, ...]``.
    """
    adapter = adapter_for(model)
    chosen = adapter.sites.resolve(sites, always=("logits",))
    ids = adapter.check_ids(input_ids, model)
    pos = check_positions(positions, ids.shape[1])
    n_req = check_n_loops(adapter.default_steps(model) if n_loops is None else n_loops)
    keeper = CaptureVisitor(
        adapter.sites, chosen, pos, store_device, check_store_dtype(store_dtype)
    )
    labels = StepLabels()
    _, steps_run = run(
        model,
        ids,
        n_loops=n_req,
        visitors=[*interventions, labels, keeper],
        run_all_loops=run_all_loops,
        optional_sites=[s for s in chosen if s in adapter.sites.optional],
        step_options=step_options,
    )
    meta = {
        **adapter.meta(model, steps_run),
        "adapter": adapter.name,
        "run_all_loops": run_all_loops,
        "interventions": [repr(v) for v in interventions],
        "step_options": dict(step_options or {}),
        "site_shapes": {s: adapter.sites[s].shape for s in adapter.sites},
    }
    return Trace(
        input_ids=ids.detach().cpu(),
        positions=(pos if pos is not None else torch.arange(ids.shape[1])).cpu(),
        n_loops=steps_run,
        n_loops_requested=n_req,
        loop=LazyStack(keeper.loop),
        stream=dict(keeper.stream),
        layers=LazyStack(keeper.layers),
        params=read_params(adapter, model),
        meta=meta,
        steps=labels.by_kind(adapter),
        site_steps={s: adapter.sites[s].step for s in keeper.loop},
    )


def read_params(adapter: Adapter, model: Any) -> dict[str, torch.Tensor]:
    """The adapter's per-model parameters, read with offloaded weights loaded (accelerate)."""
    with onloaded(model):
        return adapter.params(model)


class StepLabels:
    """Records every step's label, per step kind, from the events (a read-only visitor)."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, int], Any] = {}
        self.kinds: dict[str, str] = {}

    def __call__(self, event: SiteEvent, value: torch.Tensor) -> None:
        if event.loop is not None:
            self.seen[(event.site, event.loop)] = event.label
        return None

    def by_kind(self, adapter: Adapter) -> dict[str, list[Any]]:
        """``{step kind: [label of step 0, step 1, …]}``."""
        out: dict[str, dict[int, Any]] = {}
        for (site, t), label in self.seen.items():
            kind = adapter.sites[site].step
            out.setdefault(kind, {})[t] = label
        return {k: [v[t] for t in sorted(v)] for k, v in out.items()}


__all__ = ["CaptureVisitor", "StepLabels", "capture", "run", "check_sites_exist", "read_params"]
