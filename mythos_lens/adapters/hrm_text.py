"""The HRM-Text adapter (``transformers.HrmTextForCausalLM``, unmodified): nested recurrence.

Per forward, for h in 0 … H_cycles−1: the L stack runs L_cycles times on ``z_L + z_H``, then the
H stack once on ``z_H + z_L``. Two step kinds: ``L`` (label ``(h, l)``) and ``H`` (label
``h``, the primary kind: ``n_loops`` sets ``H_cycles``; the option ``L_cycles`` sets the inner
count). Each stack call carries a ``cycle_offset`` keyword from which the label is read (and
checked against the call order). Each stack ends in a weightless RMS norm and the model has no
other final norm, so the readout of any state is ``lm_head(state)``; ``lm_head`` of the last H
output is the model's output, exactly (the exit lens).

Sites a model lacks (router, LoRA, halting) are absent. Attention patterns need
``attn_implementation="eager"``; when one is requested the model is switched to eager for the
call and back afterwards (eager and sdpa logits differ by ~1e-8).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from mythos_lens.adapters.base import Adapter, StepKind
from mythos_lens.dispatch import is_dispatched
from mythos_lens.errors import MythosLensError, check_int
from mythos_lens.inputs import as_input_ids
from mythos_lens.sites import Site, SiteTable


def _stack_sites(kind: str, other: str) -> list[Site]:
    label = "(h, l)" if kind == "L" else "h"
    return [
        Site(f"{kind}_in", f"model.{kind}_module (input)", f"[{kind}-step, batch, pos, d]",
             f"what the {kind} stack reads at step {label}: z_{kind} + z_{other}", step=kind),
        Site(f"{kind}_layer_out", f"model.{kind}_module.layers.{{i}}",
             f"[{kind}-step, layer, batch, pos, d]",
             f"each layer's output inside the {kind} stack (before its final norm)",
             step=kind, editable=False, pos_axis=2),
        Site(f"{kind}_attn", f"model.{kind}_module.layers.{{i}}.self_attn",
             f"[{kind}-step, layer, batch, head, q, k]",
             f"attention weights of each {kind}-stack layer (opt-in; eager attention)",
             step=kind, editable=False, optional=True, pos_axis=3, attention=True),
        Site(f"{kind}_out", f"model.{kind}_module", f"[{kind}-step, batch, pos, d]",
             f"z_{kind} after step {label}: the {kind} stack's output (normed)", step=kind),
    ]  # fmt: skip


SITES = SiteTable([
    Site("embed", "model.embed_tokens", "[batch, pos, d]", "token embedding (before scaling)",
         step=None),
    Site("z_H0", "model (embedding × embedding_scale)", "[batch, pos, d]",
         "the initial high-level state z_H", step=None, editable=False),
    *_stack_sites("L", "H"),
    *_stack_sites("H", "L"),
    Site("logits", "lm_head", "[batch, pos, vocab]", "final logits", step=None, editable=False),
])  # fmt: skip

ROLES = {"state": "H_out", "state_in": "z_H0", "fast_state": "L_out"}


def _label(offset: int, n_layers: int, l_cycles: int) -> tuple[int, Any]:
    """(h, l) of a stack call from its ``cycle_offset`` (upstream's cache-slot layout)."""
    h, r = divmod(offset // n_layers, l_cycles + 1)
    return h, ("H" if r == l_cycles else r)


def install(session: Any) -> None:
    """Register HRM-Text's hooks on ``session.model`` (a ``HrmTextForCausalLM``)."""
    m = session.model
    core = m.model
    cfg = m.config
    st = session.state
    emit = session.emit

    def on_embed(mod, args, kwargs, out):
        new = emit("embed", out, args)
        emit("z_H0", new * core.embedding_scale, args)  # upstream's own multiplication
        return new

    def stack_pre(kind: str):
        def hook(mod, args, kwargs):
            offset = int(kwargs.get("cycle_offset", 0))
            h, l = _label(offset, cfg.num_layers_per_stack, cfg.L_cycles)
            expected = session.counts[kind] + 1  # the index this call will get
            if (kind == "H") != (l == "H") or (kind == "H" and h != expected):
                raise MythosLensError(
                    f"{kind} stack call with cycle_offset {offset} (label {(h, l)})",
                    "the call order of transformers' HrmTextModel",
                )
            session.next_step(kind, h if kind == "H" else (h, l))
            st[f"{kind}_layers"], st[f"{kind}_attn"] = [], []
            x = args[0]
            new = emit(f"{kind}_in", x, args)
            return None if new is x else ((new, *args[1:]), kwargs)

        return hook

    def stack_post(kind: str):
        def hook(mod, args, kwargs, out):
            if st[f"{kind}_layers"]:
                emit(f"{kind}_layer_out", torch.stack(st[f"{kind}_layers"]), args)
            if st[f"{kind}_attn"]:
                emit(f"{kind}_attn", torch.stack(st[f"{kind}_attn"]), args)
            return emit(f"{kind}_out", out, args)

        return hook

    def layer_post(kind: str):
        def hook(mod, args, kwargs, out):
            st[f"{kind}_layers"].append(out)

        return hook

    def attn_post(kind: str):
        def hook(mod, args, kwargs, out):
            if out[1] is None:
                raise MythosLensError(
                    "HRM-Text attention returned no weights", "attn_implementation='eager'"
                )
            st[f"{kind}_attn"].append(out[1])

        return hook

    session.hook(core.embed_tokens, on_embed)
    for kind in ("L", "H"):
        stack = getattr(core, f"{kind}_module")
        session.hook(stack, stack_pre(kind), pre=True)
        session.hook(stack, stack_post(kind))
        for layer in stack.layers:
            session.hook(layer, layer_post(kind))
            if session.wants(f"{kind}_attn"):
                session.hook(layer.self_attn, attn_post(kind))


@contextlib.contextmanager
def _cycles(model: Any, h_cycles: int, l_cycles: int | None, eager: bool) -> Iterator[None]:
    """Run with `h_cycles` (and `l_cycles`) set on the config, eager attention if asked;
    everything restored afterwards."""
    cfg = model.config
    before = (cfg.H_cycles, cfg.L_cycles, cfg._attn_implementation)
    try:
        cfg.H_cycles = h_cycles
        if l_cycles is not None:
            cfg.L_cycles = check_int("L_cycles", l_cycles, 1)
        if eager and before[2] != "eager":
            model.set_attn_implementation("eager")
        yield
    finally:
        cfg.H_cycles, cfg.L_cycles = before[0], before[1]
        if eager and before[2] != "eager":
            model.set_attn_implementation(before[2])


def run(
    model: Any, ids: torch.Tensor, n_steps: int, run_all_steps: bool, session: Any, **options: Any
) -> torch.Tensor:
    """One forward with ``H_cycles = n_steps`` (and ``L_cycles`` from `options`); no cache, so
    any cycle counts run (the cache's slot layout is fixed at the configured counts)."""
    eager = any(session.wants(s) for s in SITES.optional)
    with _cycles(model, n_steps, options.get("L_cycles"), eager):
        return model(input_ids=ids, use_cache=False).logits


def generate(
    model: Any, ids: torch.Tensor, new: int, n_steps: int, session: Any, **options: Any
) -> torch.Tensor:
    """transformers' ``generate`` (greedy unless `options` say otherwise) at the configured
    cycles: the KV cache's slot layout is fixed by them."""
    if n_steps != model.config.H_cycles:
        raise MythosLensError(
            f"n_loops={n_steps} while generating",
            f"the configured H_cycles={model.config.H_cycles}",
        )
    eager = any(session.wants(s) for s in SITES.optional)
    options.setdefault("do_sample", False)
    options.setdefault("pad_token_id", model.config.pad_token_id or 0)
    with _cycles(model, n_steps, None, eager):
        mask = torch.ones_like(ids)
        return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, **options)


def logit_lens(model: Any):
    """``h [..., d] -> lm_head(h)``: the stacks end in a weightless norm, so this reads any
    L or H state the way the model reads its last H state. A head accelerate dispatched runs
    its own forward (its hook loads the offloaded weight)."""
    head = model.lm_head
    head_w = None if is_dispatched(head) else head.weight.detach()
    width = model.config.hidden_size

    def readout(h: torch.Tensor) -> torch.Tensor:
        if not isinstance(h, torch.Tensor) or h.shape[-1] != width:
            raise MythosLensError(
                f"logit lens input of shape {tuple(getattr(h, 'shape', ()))}",
                f"[..., {width}] (hidden size)",
            )
        if head_w is None:
            return head(h)
        return torch.nn.functional.linear(h.to(head_w.dtype), head_w)

    return readout


def exit_logits(model: Any, trace: Any) -> torch.Tensor:
    """``[H-step, batch, pos, vocab]``: the output a run stopped after H step t gives
    (``lm_head`` of that H output; the last equals the logits exactly)."""
    lens = logit_lens(model)
    with torch.no_grad():
        return torch.stack([lens(h) for h in trace["H_out"]])


def _matches(model: Any) -> bool:
    try:
        from transformers import HrmTextForCausalLM
    except ImportError:
        return False
    return isinstance(model, HrmTextForCausalLM)


def _check_ids(ids: Any, model: Any) -> torch.Tensor:
    cfg = model.config
    device = model.lm_head.weight.device
    return as_input_ids(ids, vocab_size=cfg.vocab_size, max_len=cfg.max_position_embeddings,
                        device=device)  # fmt: skip


ADAPTER = Adapter(
    name="hrm_text",
    description="HRM-Text (transformers): an L stack called L_cycles times per H cycle, then an "
    "H stack, for H_cycles cycles",
    matches=_matches,
    sites=SITES,
    steps=(
        StepKind("H", "one call of the H stack (one cycle)", "H_steps"),
        StepKind(
            "L",
            "one call of the L stack",
            "L_steps",
            per_primary=lambda model: model.config.L_cycles,
        ),
    ),  # fmt: skip
    primary="H",
    roles=ROLES,
    install=install,
    run=run,
    default_steps=lambda model: model.config.H_cycles,
    check_ids=_check_ids,
    readouts={"logit": logit_lens},
    exit_logits=exit_logits,
    exit_sites=("H_out",),
    generate=generate,
    entry=lambda model: model.model.embed_tokens,
    head=lambda model: model.lm_head,
    meta=lambda model, steps_run: {
        "config": {k: v for k, v in model.config.to_dict().items() if _jsonable(v)},
        "H_cycles": model.config.H_cycles,
        "L_cycles": model.config.L_cycles,
    },
    step_options=("L_cycles",),
    pages=("trajectories", "loops"),
)


def _jsonable(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool, type(None), list, dict))
