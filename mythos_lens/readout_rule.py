"""What OpenMythos's coda reads: a recipe choice recorded with the model and applied wherever it
runs.

Upstream's coda reads the ACT sum ``Σ_t w_t h_t``; with an ``act_threshold`` out of reach the
weights are the raw halting probabilities p_t, and training can drive them to ~0 after a loop or
two, switching the loop off (DESIGN.md §8). A *readout rule* changes what the coda reads, never
the architecture:

- ``act`` — upstream's sum (the default; nothing is changed);
- ``last`` — the last state h_T (the community's ``disable_act`` switch, OpenMythos PR #58);
- ``normalized`` — ``Σ_t p_t h_t / Σ_t p_t``, the halting probabilities as a distribution.

:func:`set_readout_rule` installs persistent forward hooks on the model, so training, plain
calls, ``generate``, capture, the analyses and the app all see the same rule;
``load_checkpoint`` re-applies the rule a checkpoint records (``metadata.readout_rule``).
"""

from __future__ import annotations

from typing import Any

import torch

from mythos_lens.errors import MythosLensError

RULES = ("act", "last", "normalized")
ATTRIBUTE = "_mythos_lens_readout_rule"


def readout_rule_of(model: Any) -> str:
    """The readout rule installed on `model` (``act`` when none is)."""
    return getattr(model, ATTRIBUTE, (None, "act"))[1]


def combine(rule: str, states: list[torch.Tensor], probs: list[torch.Tensor]) -> torch.Tensor:
    """What the coda reads under `rule` from the states ``h_0 … h_t`` ``[batch, pos, d]`` and
    halting probabilities ``p_0 … p_t`` ``[batch, pos]`` (``act`` is not computed here)."""
    if rule == "last":
        return states[-1]
    if rule == "normalized":
        P = torch.stack(probs)
        H = torch.stack(states)
        return (P.unsqueeze(-1) * H).sum(0) / P.sum(0).clamp_min(1e-12).unsqueeze(-1)
    raise MythosLensError(f"readout rule {rule!r}", f"one of {list(RULES)}")


def set_readout_rule(model: Any, rule: str) -> Any:
    """Make `model`'s coda read according to `rule` from now on (replacing any rule set
    before); returns the model. ``act`` removes the hooks."""
    if rule not in RULES:
        raise MythosLensError(f"readout rule {rule!r}", f"one of {list(RULES)}")
    old = getattr(model, ATTRIBUTE, None)
    if old is not None:
        for h in old[0]:
            h.remove()
        delattr(model, ATTRIBUTE)
    if rule == "act":
        return model
    if model.cfg.act_threshold < 1e8:
        raise MythosLensError(
            f"readout rule {rule!r} with act_threshold {model.cfg.act_threshold}",
            "an act_threshold out of reach (e.g. 1e9): with halting, loops stop early and "
            "halted positions' states are not the ones a rule should read",
        )
    rec = model.recurrent
    seen: dict[str, list[torch.Tensor]] = {"h": [], "p": []}

    def reset(mod, args):
        seen["h"], seen["p"] = [], []

    def on_state(mod, args, out):
        seen["h"].append(out)

    def on_halt(mod, args, out):
        seen["p"].append(out)

    def read(mod, args, out):
        return combine(rule, seen["h"], seen["p"])

    handles = [
        rec.register_forward_pre_hook(reset),
        rec.injection.register_forward_hook(on_state),
        rec.act.register_forward_hook(on_halt),
        rec.register_forward_hook(read),
    ]
    object.__setattr__(model, ATTRIBUTE, (handles, rule))
    return model
