"""A hook session: one model's hooks, live for a ``with`` block, turning forwards into site
events ``(site, step, value)`` dispatched to visitors in order.

The model's adapter installs the hooks (where each site lives and when a step starts is its
data); the session counts steps per kind, builds :class:`~mythos_lens.events.SiteEvent`s,
applies visitors' replacements (shape-checked; derived sites are read-only) and removes every
hook in ``finally``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from mythos_lens.adapters.base import Adapter
from mythos_lens.errors import MythosLensError
from mythos_lens.events import SiteEvent, Visitor


class HookSession:
    """Installs an adapter's hooks on `model` and dispatches its site events to `visitors`.

    ``optional_sites`` (e.g. attention patterns) are computed only when named. ``state`` is a
    dict the adapter may use for per-forward bookkeeping (reset by :meth:`begin_forward`).
    """

    def __init__(
        self,
        adapter: Adapter,
        model: Any,
        visitors: Sequence[Visitor],
        optional_sites: Sequence[str] = (),
        emit_logits: bool = False,
    ) -> None:
        self.adapter = adapter
        self.emit_logits = emit_logits  # at the end of every forward (generation)
        self.model = model
        self.visitors = list(visitors)
        self.optional_sites = frozenset(optional_sites)
        self.state: dict[str, Any] = {}
        self.forward = -1
        self.counts: dict[str, int] = {}
        self.labels: dict[str, list[Any]] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    # -- steps --------------------------------------------------------------------------------
    def begin_forward(self) -> None:
        """A new forward pass starts: step counters and per-forward state are reset."""
        self.forward += 1
        self.state = {}
        self.counts = {k.name: -1 for k in self.adapter.steps}
        self.labels = {k.name: [] for k in self.adapter.steps}

    def next_step(self, kind: str, label: Any = None) -> int:
        """A step of `kind` starts; returns its index (labelled `label`, default the index)."""
        self.counts[kind] += 1
        self.labels[kind].append(self.counts[kind] if label is None else label)
        return self.counts[kind]

    def steps_run(self, kind: str | None = None) -> int:
        """Steps of `kind` (default: the adapter's primary kind) in the last forward."""
        return self.counts.get(kind or self.adapter.primary, -1) + 1

    def wants(self, site: str) -> bool:
        """Whether `site` is computed in this session (opt-in sites only when named)."""
        return site not in self.adapter.sites.optional or site in self.optional_sites

    # -- dispatch -----------------------------------------------------------------------------
    def emit(
        self,
        site: str,
        value: torch.Tensor,
        inputs: tuple = (),
        layer: int | None = None,
        read_only: bool | None = None,
    ) -> torch.Tensor:
        """Tell every visitor `site`'s value; return it, or the visitors' replacement."""
        spec = self.adapter.sites[site]
        loop = label = None
        if spec.stepped:
            loop = self.counts[spec.step]
            label = self.labels[spec.step][loop] if loop >= 0 else None
        event = SiteEvent(site, loop, layer, self.model, inputs, label, self.forward)
        fixed = (not spec.editable) if read_only is None else read_only
        for visit in self.visitors:
            out = visit(event, value)
            if out is None or out is value:
                continue
            if not isinstance(out, torch.Tensor):
                raise MythosLensError(
                    f"a visitor returned a {type(out).__name__} for site {site!r}",
                    "a torch.Tensor replacement or None",
                )
            if fixed:
                raise MythosLensError(
                    f"a hook replaced the read-only site {site!r}",
                    f"edits at an editable site ({self.adapter.sites.editable})",
                )
            if out.shape != value.shape:
                raise MythosLensError(
                    f"replacement for {site!r} has shape {tuple(out.shape)}",
                    f"shape {tuple(value.shape)}",
                )
            value = out.to(dtype=value.dtype, device=value.device)
        return value

    # -- hooks --------------------------------------------------------------------------------
    def hook(self, module: torch.nn.Module, fn: Any, pre: bool = False) -> None:
        """Register a forward (or pre-) hook with kwargs; it is removed with the session."""
        if pre:
            h = module.register_forward_pre_hook(fn, with_kwargs=True)
        else:
            h = module.register_forward_hook(fn, with_kwargs=True)
        self._handles.append(h)

    def remove(self) -> None:
        """Remove every hook this session installed."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    @contextlib.contextmanager
    def installed(self) -> Iterator[HookSession]:
        """Hooks live exactly for the ``with`` body, also when it raises."""

        def on_start(mod, args, kwargs):
            self.begin_forward()

        def on_end(mod, args, kwargs, out):
            self.emit("logits", out)

        try:
            # every forward starts a new step count
            self.hook(self.adapter.entry(self.model), on_start, pre=True)
            if self.emit_logits:
                self.hook(self.adapter.head(self.model), on_end)
            self.adapter.install(self)
            yield self
        finally:
            self.remove()
