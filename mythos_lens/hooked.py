"""TransformerLens idioms with a step axis: one HookPoint per step and site.

TransformerLens keeps only the last call of a HookPoint that fires several times per forward, so
every step gets its own: ``{prefix}.{t}.hook_{site}`` for each stepped site (the prefix is the
adapter's, e.g. ``recurrent.loop`` for OpenMythos, ``L_steps`` / ``H_steps`` for HRM-Text), plus
``{group}.{i}.hook_resid_post`` for layer sites (OpenMythos's ``prelude`` / ``coda``),
``{group}.{i}.hook_attn_pattern`` for their attention, and ``hook_{site}`` for stream sites. With
``attention=True`` the opt-in attention patterns fire too. ``run_with_cache`` returns a
:class:`LoopCache`: ``cache["resid_post"]`` is ``[loop, ...]``, ``cache["resid_post", 3]`` one
loop, full hook names work as in TransformerLens. ``run_with_hooks`` may edit any editable site;
a hook named for a step that does not run raises.

Deliberately not mapped: individual experts' outputs inside the block (not sites of ours).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from mythos_lens.adapters import adapter_for
from mythos_lens.adapters.base import layer_hook
from mythos_lens.capture import run
from mythos_lens.errors import MythosLensError
from mythos_lens.events import SiteEvent
from mythos_lens.model import check_n_loops
from mythos_lens.sites import LAYER


class _Hooks(nn.Module):
    def __init__(self, names: list[str]) -> None:
        super().__init__()
        for name in names:
            self.add_module(name, HookPoint())


class LoopCache(dict):
    """``run_with_cache``'s result: hook name -> value, plus the step axis.

    ``cache[site]`` stacks a stepped site over its steps (``[step, batch, pos, ...]``),
    ``cache[site, t]`` is step t, and any full hook name works as in TransformerLens.
    """

    def __init__(self, values: dict[str, torch.Tensor], names: dict[str, list[str]]) -> None:
        super().__init__(values)
        self._names = names  # site -> hook names of its steps, in step order

    def __getitem__(self, key: Any) -> torch.Tensor:
        if isinstance(key, tuple) and len(key) == 2 and key[0] in self._names:
            site, t = key
            names = self._names[site]
            if not isinstance(t, int) or not -len(names) <= t < len(names):
                raise MythosLensError(f"step {t!r} of {site!r}", f"a step in [0, {len(names) - 1}]")
            return dict.__getitem__(self, names[t])
        if isinstance(key, str) and key in self._names and not dict.__contains__(self, key):
            return self.stack_activation(key)
        return dict.__getitem__(self, key)

    def stack_activation(self, site: str) -> torch.Tensor:
        """``[step, ...]``: `site` at every step that ran and was cached."""
        names = self._names.get(site, [])
        if not names:
            raise MythosLensError(f"{site!r} has no cached step", f"one of {list(self._names)}")
        return torch.stack([dict.__getitem__(self, n) for n in names])

    def steps(self, site: str) -> int:
        """How many steps of `site` were cached."""
        return len(self._names.get(site, []))


class HookedMythos(HookedRootModule):
    """A TransformerLens ``HookedRootModule`` around an unmodified looped model (any model
    with an adapter; the name is historical).

    ``max_loops`` hook-point sets are made for the primary step kind (default:
    ``max(16, 2 * default steps)``; other kinds scale by their steps per primary step);
    running more loops than that raises. The wrapped model is not a submodule
    (TransformerLens's ``setup`` would write names onto its modules): move the model itself.
    """

    def __init__(self, model: Any, max_loops: int | None = None, attention: bool = False) -> None:
        super().__init__()
        adapter = adapter_for(model)
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "adapter", adapter)
        self.attention = bool(attention)
        n = max_loops if max_loops is not None else max(16, 2 * adapter.default_steps(model))
        self.max_loops = check_n_loops(n)
        sites = adapter.sites
        self._prefix: dict[str, str] = {}
        for kind in adapter.steps:
            names = [f"hook_{s}" for s in sites.names(step=kind.name)]
            count = self.max_loops * kind.per_primary(model)
            self._add_path(kind.hook_prefix, nn.ModuleList(_Hooks(names) for _ in range(count)))
            self._prefix[kind.name] = kind.hook_prefix
        groups: dict[str, list[str]] = {}
        for s in sites.layers:
            group, hook = layer_hook(s, sites[s].attention)
            groups.setdefault(group, []).append(hook)
        for group, hooks in groups.items():
            count = adapter.layer_count(model, group)
            self.add_module(group, nn.ModuleList(_Hooks(hooks) for _ in range(count)))
        for s in sites.stream:
            self.add_module(f"hook_{s}", HookPoint())
        self.setup()

    def _add_path(self, path: str, leaf: nn.Module) -> None:
        parts = path.split(".")
        mod: nn.Module = self
        for p in parts[:-1]:
            if p not in mod._modules:  # never walk into the wrapped model's attributes
                mod.add_module(p, nn.Module())
            mod = mod._modules[p]
        mod.add_module(parts[-1], leaf)

    def _get_path(self, path: str) -> nn.Module:
        mod: nn.Module = self
        for p in path.split("."):
            mod = mod._modules[p]
        return mod

    def hook_name(self, site: str, step: int | None = None, layer: int | None = None) -> str:
        """The hook name of `site` (at `step` for stepped sites, `layer` for layer sites)."""
        return self.adapter.hook_name(site, step, layer)

    def _hook_point(self, event: SiteEvent) -> HookPoint:
        spec = self.adapter.sites[event.site]
        if spec.stepped:
            steps = self._get_path(self._prefix[spec.step])
            if event.loop >= len(steps):
                raise MythosLensError(
                    f"step {event.loop} of {event.site!r} but only {len(steps)} have hook points",
                    f"HookedMythos(model, max_loops=...) with more loops than {self.max_loops}",
                )
            return getattr(steps[event.loop], f"hook_{event.site}")
        if spec.step == LAYER:
            group, hook = layer_hook(event.site, spec.attention)
            return getattr(getattr(self, group)[event.layer], hook)
        return getattr(self, f"hook_{event.site}")

    def _visit(self, event: SiteEvent, value: torch.Tensor) -> torch.Tensor:
        return self._hook_point(event)(value)

    def run_with_hooks(self, *model_args: Any, fwd_hooks: Any = (), bwd_hooks: Any = (), **kw: Any):
        """TransformerLens's ``run_with_hooks``; a hook named for a loop step that does not run
        (``recurrent.loop.7.…`` with ``n_loops=4``, or after ACT stopped early) raises instead of
        silently doing nothing."""
        names = [n for n, _ in [*fwd_hooks, *bwd_hooks] if isinstance(n, str)]
        prefix = re.escape(self._prefix[self.adapter.primary])
        pattern = re.compile(rf"{prefix}\.(\d+)\.")
        self._hook_targets = [_HookTarget(n, int(m.group(1))) for n in names
                              if (m := pattern.match(n))]  # fmt: skip
        try:
            return super().run_with_hooks(
                *model_args, fwd_hooks=fwd_hooks, bwd_hooks=bwd_hooks, **kw
            )
        finally:
            self._hook_targets = []

    def run_with_cache(self, *model_args: Any, **kw: Any) -> tuple[torch.Tensor, LoopCache]:
        """TransformerLens's ``run_with_cache``, returning a :class:`LoopCache`."""
        logits, cache = super().run_with_cache(*model_args, **kw)
        values = dict(cache)
        names: dict[str, list[str]] = {}
        for site in self.adapter.sites.names(stepped=True):
            prefix = self._prefix[self.adapter.sites[site].step]
            steps = sorted(
                int(m.group(1))
                for n in values
                if (m := re.fullmatch(rf"{re.escape(prefix)}\.(\d+)\.hook_{site}", n))
            )
            if steps:
                names[site] = [f"{prefix}.{t}.hook_{site}" for t in steps]
        return logits, LoopCache(values, names)

    def forward(
        self, input_ids: Any, n_loops: int | None = None, run_all_loops: bool = False
    ) -> torch.Tensor:
        """Logits ``[batch, seq, vocab]`` of the wrapped model, with every HookPoint called."""
        n = check_n_loops(self.adapter.default_steps(self.model) if n_loops is None else n_loops)
        if n > self.max_loops:
            raise MythosLensError(
                f"n_loops={n} but only {self.max_loops} loops have hook points",
                f"n_loops <= {self.max_loops} (or HookedMythos(model, max_loops={n}))",
            )
        targets = getattr(self, "_hook_targets", [])
        optional = self.adapter.sites.optional if self.attention else ()
        logits, _ = run(self.model, input_ids, n_loops=n, visitors=[self._visit, *targets],
                        run_all_loops=run_all_loops, optional_sites=optional)  # fmt: skip
        return logits


class _HookTarget:
    """A hook name as a visitor that only declares the loop step it needs (see ``run``)."""

    def __init__(self, name: str, loop: int) -> None:
        self.name, self.target_loops = name, frozenset([loop])

    def __repr__(self) -> str:
        return f"hook {self.name!r}"

    def __call__(self, event: SiteEvent, value: torch.Tensor) -> None:
        return None
