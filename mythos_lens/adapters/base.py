"""What an adapter is: the data describing one looped architecture.

An adapter says which modules are the shared blocks and how their calls map to step indices
(one loop, or nested cycles with labels), where each site lives (its :class:`SiteTable`), which
sites play which *role* for the instruments (the carried state, the block output, the router,
LoRA, halting …; a model lacks the roles it lacks), how to read logits out of a state, and how
to run n steps. Capture, the trace, interventions and the analyses read this data; none of them
branches on a model's type.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from mythos_lens.sites import LAYER, SiteTable

Readout = Callable[[torch.Tensor], torch.Tensor]

# Roles the instruments know. An adapter maps the ones its model has to site names.
ROLES = {
    "state": "the carried state after each step, [step, batch, pos, d] (CKA, convergence, lenses)",
    "state_in": "the state before step 0, [batch, pos, d] (h_0, for step sizes)",
    "block_out": "the shared block's output at each step, before it is added to the state",
    "block_in": "what the shared block reads at each step",
    "router_logits": "MoE router logits per step",
    "experts": "routed experts chosen per step, [step, batch, pos, k]",
    "lora": "the depth-wise LoRA delta per step",
    "halt": "halting probability per step",
    "act_weight": "weight of each step's state in what the readout reads",
    "cum_halt": "cumulative halting probability per step (ACT's exit rule)",
    "attention": "attention pattern of the shared block per step (opt-in)",
}


def layer_hook(site: str, attention: bool) -> tuple[str, str]:
    """(group, hook name) of a layer site: ``coda`` -> (coda, hook_resid_post);
    ``coda_attn`` -> (coda, hook_attn_pattern)."""
    if attention:
        return site.removesuffix("_attn"), "hook_attn_pattern"
    return site, "hook_resid_post"


@dataclass(frozen=True)
class StepKind:
    """A kind of step: its name, what one step is, the TransformerLens hook prefix of its
    steps (``{hook_prefix}.{t}.hook_{site}``) and how many of its steps one step of the
    primary kind holds (HRM-Text: ``L_cycles`` L-steps per H-step)."""

    name: str
    doc: str
    hook_prefix: str
    per_primary: Callable[[Any], int] = lambda model: 1


@dataclass(frozen=True)
class Adapter:
    """One looped architecture, described as data (see the module docstring).

    Callables take the model first. ``install(session)`` registers the hooks that turn a
    forward into site events (``session.hook``, ``session.next_step``, ``session.emit``).
    ``run(model, ids, n_steps, run_all_steps, session, **options)`` runs one forward with
    `n_steps` steps of the primary kind and returns logits ``[batch, seq, vocab]``. ``readouts[name](model)``
    gives ``h [batch, pos, d] -> logits``; ``exit_logits(model, trace)`` gives, per primary
    step t, the output a run stopped after step t would produce ``[step, batch, pos, vocab]``.
    """

    name: str
    description: str
    matches: Callable[[Any], bool]
    sites: SiteTable
    steps: tuple[StepKind, ...]
    primary: str
    roles: Mapping[str, str]
    install: Callable[[Any], None]
    run: Callable[..., torch.Tensor]
    default_steps: Callable[[Any], int]
    check_ids: Callable[[Any, Any], torch.Tensor]
    readouts: Mapping[str, Callable[[Any], Readout]]
    exit_logits: Callable[[Any, Any], torch.Tensor] | None = None
    exit_sites: tuple[str, ...] = ()  # the sites a trace needs for `exit_logits`
    # generate(model, ids, max_new_tokens, n_steps, session, **options) -> all ids [batch, T+new]
    generate: Callable[..., torch.Tensor] | None = None
    # loop_step(model, state_in, t) -> (h_{t-1} -> h_t): the loop map, for its Jacobian
    loop_step: Callable[..., Callable[[torch.Tensor], torch.Tensor]] | None = None
    # The first module each forward calls (its pre-hook starts a new step count: generate may
    # call `forward` directly, bypassing the root's hooks) and the module whose output is the
    # logits.
    entry: Callable[[Any], torch.nn.Module] = lambda model: model
    head: Callable[[Any], torch.nn.Module] = lambda model: model
    params: Callable[[Any], dict[str, torch.Tensor]] = lambda model: {}
    meta: Callable[[Any, int], dict[str, Any]] = lambda model, steps_run: {}
    step_options: tuple[str, ...] = ()  # extra keyword options of `run` (e.g. inner cycles)
    layers: Callable[[Any], dict[str, int]] = lambda model: {}  # layer-site group -> layers
    pages: tuple[str, ...] = field(default_factory=tuple)  # app pages that apply

    def site(self, role: str) -> str | None:
        """The site that plays `role`, or None when the model has no such thing."""
        return self.roles.get(role)

    def layer_count(self, model: Any, group: str) -> int:
        """How many layers a layer-site group (e.g. ``coda``) has in `model`."""
        return self.layers(model).get(group, 0)

    def hook_name(self, site: str, step: int | None = None, layer: int | None = None) -> str:
        """`site`'s TransformerLens hook name (``HookedMythos`` and ``collect`` columns):
        ``{prefix}.{step}.hook_{site}`` for a stepped site (``recurrent.loop.3.hook_resid_post``),
        ``{group}.{layer}.hook_resid_post`` / ``.hook_attn_pattern`` for a layer site,
        ``hook_{site}`` for a stream site."""
        spec = self.sites[site]
        if spec.stepped:
            prefix = next(k.hook_prefix for k in self.steps if k.name == spec.step)
            return f"{prefix}.{step}.hook_{site}"
        if spec.step == LAYER:
            group, hook = layer_hook(site, spec.attention)
            return f"{group}.{layer}.{hook}"
        return f"hook_{site}"

    def has(self, *roles: str) -> bool:
        """Whether the model has every one of `roles`."""
        return all(r in self.roles for r in roles)
