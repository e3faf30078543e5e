"""The OpenMythos 0.5.0 adapter: one recurrent block looped ``n_loops`` times.

Steps: kind ``loop``; a step starts when the recurrent block's input norm runs (the first thing
each loop step does), and the count is checked against the loop index upstream hands the LoRA
adapter. One forward hook per upstream module reads each site; derived sites (expert choice and
gate, ACT weights) replay upstream's arithmetic op for op, so they are bit-identical.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from open_mythos.main import OpenMythos

from mythos_lens.adapters.base import Adapter, StepKind
from mythos_lens.attention import attention_pattern
from mythos_lens.errors import MythosLensError
from mythos_lens.inputs import as_input_ids
from mythos_lens.model import config_to_dict
from mythos_lens.readout_rule import combine, readout_rule_of
from mythos_lens.readouts import coda_lens, exit_states, logit_lens, loop_step
from mythos_lens.sites import LAYER, Site, SiteTable

# Order = execution order inside one loop step (interventions must follow it).
SITES = SiteTable([
    Site("block_in", "recurrent.norm", "[loop, batch, pos, d]",
         "norm(h_{t-1} + loop-index embedding + e): what the shared block reads"),
    Site("router_logits", "recurrent.block.ffn.router", "[loop, batch, pos, n_experts]",
         "unbiased router logits of the MoE feed-forward"),
    Site("expert_ids", "recurrent.block.ffn.router", "[loop, batch, pos, k]",
         "routed experts chosen: top-k of logits + router_bias (shared experts excluded)",
         editable=False),
    Site("expert_weights", "recurrent.block.ffn.router", "[loop, batch, pos, k]",
         "gate weights of the chosen experts: unbiased softmax renormalised over the k",
         editable=False),
    Site("block_out", "recurrent.block", "[loop, batch, pos, d]",
         "Transformer(h_t, e): the shared block's output before LoRA"),
    Site("lora_delta", "recurrent.lora", "[loop, batch, pos, d]",
         "depth-wise LoRA delta added to block_out at this loop"),
    Site("resid_post", "recurrent.injection", "[loop, batch, pos, d]",
         "h_t = A*h_{t-1} + B*e + block_out + lora_delta: the carried state after injection"),
    Site("halt_prob", "recurrent.act", "[loop, batch, pos]", "ACT halting probability p_t"),
    Site("act_weight", "recurrent.act", "[loop, batch, pos]",
         "weight of h_t in the ACT sum the coda receives (0 once a position halted)",
         editable=False),
    Site("cum_halt_prob", "recurrent.act", "[loop, batch, pos]",
         "cumulative halting probability after this loop", editable=False),
    Site("attn_pattern", "recurrent.block.attn", "[loop, batch, head, q, k]",
         "attention weights of the shared block (recomputed from its inputs; opt-in)",
         editable=False, optional=True, pos_axis=2, attention=True),
    Site("embed", "embed", "[batch, pos, d]", "token embedding", step=None),
    Site("e", "recurrent (input)", "[batch, pos, d]",
         "prelude output: the input injected at every loop and h_0", step=None),
    Site("act_out", "recurrent (output)", "[batch, pos, d]",
         "ACT-weighted sum of the h_t: what the coda receives", step=None),
    Site("logits", "head", "[batch, pos, vocab]", "final logits", step=None, editable=False),
    Site("prelude", "prelude.{i}", "[layer, batch, pos, d]", "output of each prelude layer",
         step=LAYER, editable=False),
    Site("coda", "coda.{i}", "[layer, batch, pos, d]", "output of each coda layer",
         step=LAYER, editable=False),
    Site("prelude_attn", "prelude.{i}.attn", "[layer, batch, head, q, k]",
         "attention weights of each prelude layer (opt-in)", step=LAYER, editable=False,
         optional=True, pos_axis=2, attention=True),
    Site("coda_attn", "coda.{i}.attn", "[layer, batch, head, q, k]",
         "attention weights of each coda layer (opt-in)", step=LAYER, editable=False,
         optional=True, pos_axis=2, attention=True),
])  # fmt: skip

ROLES = {
    "state": "resid_post", "state_in": "e", "block_out": "block_out", "block_in": "block_in",
    "router_logits": "router_logits", "experts": "expert_ids", "lora": "lora_delta",
    "halt": "halt_prob", "act_weight": "act_weight", "cum_halt": "cum_halt_prob",
    "attention": "attn_pattern",
}  # fmt: skip


def install(session: Any) -> None:
    """Register upstream OpenMythos's hooks on ``session.model``."""
    m = session.model
    rec = m.recurrent
    st = session.state
    emit = session.emit

    def on_embed(mod, args, kwargs, out):
        return emit("embed", out, args)

    def on_layer(group: str, i: int):
        def hook(mod, args, kwargs, out):
            return emit(group, out, args, layer=i)

        return hook

    def on_recurrent_pre(mod, args, kwargs):
        h = args[0] if args else kwargs["h"]
        e = args[1] if len(args) > 1 else kwargs["e"]
        st["batch"], st["seq"] = h.shape[0], h.shape[1]
        st["cum_p"] = torch.zeros(h.shape[0], h.shape[1], device=h.device)
        st["halted"] = torch.zeros(h.shape[0], h.shape[1], device=h.device, dtype=torch.bool)
        new_e = emit("e", e, args)
        if new_e is e:
            return None
        # h_0 is the prelude output too: a patched e is the patched starting state.
        rest = args[2:] if len(args) > 2 else ()
        return (new_e, new_e, *rest), kwargs

    def on_block_in(mod, args, kwargs, out):
        session.next_step("loop")  # the block's input norm runs first in every loop step, once
        return emit("block_in", out, args)

    def on_router(mod, args, kwargs, out):
        B, T = st["batch"], st["seq"]
        logits = out.view(B, T, -1)
        new = emit("router_logits", logits, args)
        ffn = rec.block.ffn
        # Exactly upstream's selection: top-k of biased logits, unbiased renormalised gate.
        flat = new.reshape(B * T, -1)
        scores = F.softmax(flat, dim=-1)
        _, ids = (flat + ffn.router_bias).topk(ffn.topk, dim=-1)
        w = scores.gather(-1, ids)
        w = w / w.sum(dim=-1, keepdim=True)
        emit("expert_ids", ids.view(B, T, ffn.topk), args)
        emit("expert_weights", w.view(B, T, ffn.topk), args)
        return None if new is logits else new.reshape(out.shape)

    def on_block(mod, args, kwargs, out):
        return emit("block_out", out, args)

    def on_lora(mod, args, kwargs, out):
        t = args[1] if len(args) > 1 else kwargs["loop_t"]
        if int(t) != session.counts["loop"]:
            raise MythosLensError(
                f"loop counter {session.counts['loop']} disagrees with upstream loop index "
                f"{int(t)}",
                "the call order of open-mythos 0.5.0's RecurrentBlock",
            )
        return emit("lora_delta", out, args)

    rule = readout_rule_of(m)

    def on_injection(mod, args, kwargs, out):
        h = emit("resid_post", out, args)
        st.setdefault("hs", []).append(h)  # the values the loop goes on with (after edits)
        return h

    def on_act(mod, args, kwargs, out):
        p = emit("halt_prob", out, args)
        # Replays upstream's ACT bookkeeping op for op, so the values are bit-identical.
        thr = m.cfg.act_threshold
        still = ~st["halted"]
        remainder = (1.0 - st["cum_p"]).clamp(min=0)
        weight = torch.where(st["cum_p"] + p >= thr, remainder, p) * still.float()
        st["cum_p"] = st["cum_p"] + p * still.float()
        st["halted"] = st["halted"] | (st["cum_p"] >= thr)
        emit("act_weight", weight, args)
        emit("cum_halt_prob", st["cum_p"], args)
        st.setdefault("ps", []).append(p)
        return None if p is out else p

    def on_recurrent(mod, args, kwargs, out):
        if rule != "act":  # the model's readout rule, from this forward's (edited) values
            out = combine(rule, st["hs"], st["ps"])
        return emit("act_out", out, args)

    def on_attention(site: str, layer: int | None):
        def hook(mod, args, kwargs, out):
            x, freqs, mask = args[0], args[1], args[2] if len(args) > 2 else None
            cache = args[3] if len(args) > 3 else kwargs.get("kv_cache")
            key = args[4] if len(args) > 4 else kwargs.get("cache_key", "default")
            cached = cache.get(key) if cache is not None else None
            with torch.no_grad():
                pattern = attention_pattern(mod, x, freqs, mask, cached)
            emit(site, pattern, args, layer=layer)

        return hook

    hook = session.hook
    hook(m.embed, on_embed)
    for i, layer in enumerate(m.prelude):
        hook(layer, on_layer("prelude", i))
    hook(rec, on_recurrent_pre, pre=True)
    hook(rec.norm, on_block_in)
    hook(rec.block.ffn.router, on_router)
    hook(rec.block, on_block)
    hook(rec.lora, on_lora)
    hook(rec.injection, on_injection)
    hook(rec.act, on_act)
    hook(rec, on_recurrent)
    for i, layer in enumerate(m.coda):
        hook(layer, on_layer("coda", i))
    if session.wants("attn_pattern"):
        hook(rec.block.attn, on_attention("attn_pattern", None))
    for group in ("prelude", "coda"):
        if session.wants(f"{group}_attn"):
            for i, layer in enumerate(getattr(m, group)):
                hook(layer.attn, on_attention(f"{group}_attn", i))


def run(model: OpenMythos, ids: torch.Tensor, n_steps: int, run_all_steps: bool) -> torch.Tensor:
    """One forward with `n_steps` loops. ``run_all_steps`` passes upstream an empty KV cache,
    which disables ACT's early exit without changing any value."""
    return model(ids, n_loops=n_steps, kv_cache={} if run_all_steps else None)


def exit_logits(model: OpenMythos, trace: Any) -> torch.Tensor:
    """``[loop, batch, pos, vocab]``: the coda on what a run stopped after loop t hands it
    (the ACT sum so far, :func:`~mythos_lens.readouts.exit_states`, or the model's readout
    rule applied to the loops so far); row t equals a run with ``n_loops=t+1`` bit for bit.
    Needs every position, ``resid_post`` and ``act_weight`` (or ``halt_prob``)."""
    coda = coda_lens(model)
    rule = readout_rule_of(model)
    if rule == "act":
        states = exit_states(trace["act_weight"], trace["resid_post"])
    else:
        hs, ps = list(trace["resid_post"]), list(trace["halt_prob"])
        states = torch.stack([combine(rule, hs[: t + 1], ps[: t + 1]) for t in range(len(hs))])
    with torch.no_grad():
        return torch.stack([coda(states[t]) for t in range(states.shape[0])])


def params(model: OpenMythos) -> dict[str, torch.Tensor]:
    """Per-model parameters the instruments use: injection A and B, LoRA scales, router bias."""
    rec = model.recurrent
    with torch.no_grad():
        return {
            "injection_A": rec.injection.get_A().detach().cpu().float(),
            "injection_B": rec.injection.B.detach().cpu().float(),
            "lora_scale": rec.lora.scale.weight.detach().cpu().float(),
            "router_bias": rec.block.ffn.router_bias.detach().cpu().float(),
        }


def meta(model: OpenMythos, loops_run: int) -> dict[str, Any]:
    """JSON-ready facts recorded in every trace (``lora_row``: the LoRA scale row each loop
    used; loops beyond ``max_loop_iters`` reuse the last; ``readout_rule``: what the coda
    reads)."""
    cfg = model.cfg
    return {
        "readout_rule": readout_rule_of(model),
        "lora_row": [min(t, cfg.max_loop_iters - 1) for t in range(loops_run)],
        "config": config_to_dict(cfg),
        "act_threshold": cfg.act_threshold,
        "loop_dim": cfg.dim // 8,
        "n_experts": cfg.n_experts,
        "top_k": cfg.n_experts_per_tok,
        "n_shared_experts": cfg.n_shared_experts,
        "max_loop_iters": cfg.max_loop_iters,
    }


ADAPTER = Adapter(
    name="openmythos",
    description="OpenMythos 0.5.0: prelude, one recurrent block looped n times (MoE, depth-wise "
    "LoRA, ACT), coda",
    matches=lambda model: isinstance(model, OpenMythos),
    sites=SITES,
    steps=(StepKind("loop", "one pass of the recurrent block", "recurrent.loop"),),
    primary="loop",
    roles=ROLES,
    install=install,
    run=lambda model, ids, n, run_all, session, **options: run(model, ids, n, run_all),
    default_steps=lambda model: model.cfg.max_loop_iters,
    check_ids=lambda ids, model: as_input_ids(ids, model),
    readouts={"logit": logit_lens, "coda": coda_lens},
    exit_logits=exit_logits,
    exit_sites=("resid_post", "act_weight", "halt_prob"),  # halt_prob: rules other than act
    loop_step=loop_step,
    generate=lambda model, ids, new, n, session, **options: model.generate(
        ids, max_new_tokens=new, n_loops=n, **options
    ),
    params=params,
    meta=meta,
    entry=lambda model: model.embed,
    head=lambda model: model.head,
    pages=("trajectories", "experts", "loops", "causal", "lora", "compare"),
    layers=lambda model: {"prelude": len(model.prelude), "coda": len(model.coda)},
)
