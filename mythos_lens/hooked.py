"""TransformerLens idioms with a loop axis: one HookPoint per loop step and site.

TransformerLens keeps only the last call of a HookPoint that fires several times per forward, so
every loop step gets its own: ``recurrent.loop.{t}.hook_{site}`` for each loop site, plus
``prelude.{i}.hook_resid_post``, ``coda.{i}.hook_resid_post``, ``hook_embed``, ``hook_e``,
``hook_act_out`` and ``hook_logits``. With ``attention=True`` the attention patterns fire too:
``recurrent.loop.{t}.hook_attn_pattern``, ``prelude.{i}.hook_attn_pattern``,
``coda.{i}.hook_attn_pattern`` (``[batch, head, q, k]``, read-only). ``run_with_cache`` keeps
every loop; ``run_with_hooks`` may edit any editable site (derived sites such as ``expert_ids``
are read-only).

Deliberately not mapped: individual experts' outputs inside the block (not sites of ours).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from open_mythos.main import OpenMythos
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from mythos_lens.capture import run
from mythos_lens.errors import MythosLensError
from mythos_lens.events import SiteEvent
from mythos_lens.model import check_n_loops, require_openmythos
from mythos_lens.sites import ATTENTION_SITES, LOOP_SITES


class _LoopHooks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        for site in LOOP_SITES:
            self.add_module(f"hook_{site}", HookPoint())


class _LayerHooks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hook_resid_post = HookPoint()
        self.hook_attn_pattern = HookPoint()


class HookedMythos(HookedRootModule):
    """A TransformerLens ``HookedRootModule`` around an unmodified OpenMythos.

    ``max_loops`` HookPoint sets are made (default: ``max(16, 2 * max_loop_iters)``); running more
    loops than that raises. The wrapped model is not a submodule (TransformerLens's ``setup``
    would write names onto upstream modules): move the OpenMythos itself between devices.
    """

    def __init__(
        self, model: OpenMythos, max_loops: int | None = None, attention: bool = False
    ) -> None:
        super().__init__()
        model = require_openmythos(model)
        object.__setattr__(self, "model", model)
        self.attention = bool(attention)
        cfg = model.cfg
        n = max_loops if max_loops is not None else max(16, 2 * cfg.max_loop_iters)
        self.max_loops = check_n_loops(n, model)
        self.hook_embed = HookPoint()
        self.hook_e = HookPoint()
        self.hook_act_out = HookPoint()
        self.hook_logits = HookPoint()
        self.prelude = nn.ModuleList(_LayerHooks() for _ in range(cfg.prelude_layers))
        self.recurrent = nn.Module()
        self.recurrent.loop = nn.ModuleList(_LoopHooks() for _ in range(self.max_loops))
        self.coda = nn.ModuleList(_LayerHooks() for _ in range(cfg.coda_layers))
        self.setup()

    def _hook_point(self, event: SiteEvent) -> HookPoint:
        if event.site in LOOP_SITES:
            return getattr(self.recurrent.loop[event.loop], f"hook_{event.site}")
        if event.layer is not None:
            group, _, attn = event.site.partition("_")  # "prelude" / "coda" / "coda_attn"
            layer = getattr(self, group)[event.layer]
            return layer.hook_attn_pattern if attn else layer.hook_resid_post
        return getattr(self, f"hook_{event.site}")

    def _visit(self, event: SiteEvent, value: torch.Tensor) -> torch.Tensor:
        return self._hook_point(event)(value)

    def run_with_hooks(self, *model_args: Any, fwd_hooks: Any = (), bwd_hooks: Any = (), **kw: Any):
        """TransformerLens's ``run_with_hooks``; a hook named for a loop step that does not run
        (``recurrent.loop.7.…`` with ``n_loops=4``, or after ACT stopped early) raises instead of
        silently doing nothing."""
        names = [n for n, _ in [*fwd_hooks, *bwd_hooks] if isinstance(n, str)]
        self._hook_targets = [_HookTarget(n, int(m.group(1))) for n in names
                              if (m := _LOOP_HOOK.match(n))]  # fmt: skip
        try:
            return super().run_with_hooks(
                *model_args, fwd_hooks=fwd_hooks, bwd_hooks=bwd_hooks, **kw
            )
        finally:
            self._hook_targets = []

    def forward(
        self, input_ids: Any, n_loops: int | None = None, run_all_loops: bool = False
    ) -> torch.Tensor:
        """Logits ``[batch, seq, vocab]`` of the wrapped model, with every HookPoint called."""
        n = check_n_loops(n_loops, self.model)
        if n > self.max_loops:
            raise MythosLensError(
                f"n_loops={n} but only {self.max_loops} loops have hook points",
                f"n_loops <= {self.max_loops} (or HookedMythos(model, max_loops={n}))",
            )
        targets = getattr(self, "_hook_targets", [])
        logits, _ = run(
            self.model,
            input_ids,
            n_loops=n,
            visitors=[self._visit, *targets],
            run_all_loops=run_all_loops,
            optional_sites=ATTENTION_SITES if self.attention else (),
        )
        return logits


_LOOP_HOOK = re.compile(r"recurrent\.loop\.(\d+)\.")


class _HookTarget:
    """A hook name as a visitor that only declares the loop step it needs (see ``run``)."""

    def __init__(self, name: str, loop: int) -> None:
        self.name, self.target_loops = name, frozenset([loop])

    def __repr__(self) -> str:
        return f"hook {self.name!r}"

    def __call__(self, event: SiteEvent, value: torch.Tensor) -> None:
        return None
