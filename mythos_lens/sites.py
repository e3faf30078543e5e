"""Site names and, for upstream OpenMythos 0.5.0, where each one is read.

A *site* is a named place whose value is read (or written) during a forward pass. Loop sites fire
once per loop step and are stored with a leading loop axis ``[loop, batch, pos, ...]``; stream sites
fire once per forward ``[batch, pos, ...]``; layer sites fire once per prelude/coda layer and are
stored as ``[layer, batch, pos, d]``.
"""

from __future__ import annotations

from dataclasses import dataclass

from mythos_lens.errors import MythosLensError


@dataclass(frozen=True)
class Site:
    """One site: its name, the upstream module it is read from, its stored shape, what it means."""

    name: str
    module: str
    shape: str
    doc: str
    editable: bool = True
    optional: bool = False  # opt-in: not part of "all" (e.g. attention patterns cost T² memory)
    pos_axis: int = 1  # axis of one step's value that runs over sequence positions


# Order = execution order inside one loop step (interventions must follow it).
LOOP_SITES: dict[str, Site] = {
    s.name: s
    for s in [
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
             editable=False, optional=True, pos_axis=2),
    ]
}  # fmt: skip

STREAM_SITES: dict[str, Site] = {
    s.name: s
    for s in [
        Site("embed", "embed", "[batch, pos, d]", "token embedding"),
        Site("e", "recurrent (input)", "[batch, pos, d]",
             "prelude output: the input injected at every loop and h_0"),
        Site("act_out", "recurrent (output)", "[batch, pos, d]",
             "ACT-weighted sum of the h_t: what the coda receives"),
        Site("logits", "head", "[batch, pos, vocab]", "final logits", editable=False),
    ]
}  # fmt: skip

LAYER_SITES: dict[str, Site] = {
    s.name: s
    for s in [
        Site("prelude", "prelude.{i}", "[layer, batch, pos, d]", "output of each prelude layer"),
        Site("coda", "coda.{i}", "[layer, batch, pos, d]", "output of each coda layer"),
        Site("prelude_attn", "prelude.{i}.attn", "[layer, batch, head, q, k]",
             "attention weights of each prelude layer (opt-in)", editable=False, optional=True,
             pos_axis=2),
        Site("coda_attn", "coda.{i}.attn", "[layer, batch, head, q, k]",
             "attention weights of each coda layer (opt-in)", editable=False, optional=True,
             pos_axis=2),
    ]
}  # fmt: skip

ALL_SITES: dict[str, Site] = {**LOOP_SITES, **STREAM_SITES, **LAYER_SITES}
OPTIONAL_SITES = frozenset(n for n, s in ALL_SITES.items() if s.optional)
ATTENTION_SITES = ("attn_pattern", "prelude_attn", "coda_attn")


def resolve_sites(sites: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Validate a site selection; ``None`` or ``"all"`` selects every site but the opt-in ones
    (attention patterns: name them). Logits are always kept."""
    if sites is None or sites == "all":
        chosen = tuple(n for n in ALL_SITES if n not in OPTIONAL_SITES)
    elif isinstance(sites, str):
        chosen = (sites,)
    else:
        try:
            chosen = tuple(sites)
        except TypeError:
            raise MythosLensError(
                f"sites={sites!r} ({type(sites).__name__})",
                "None, 'all', a site name or a list of site names",
            ) from None
    for s in chosen:
        if not isinstance(s, str) or s not in ALL_SITES:
            raise MythosLensError(f"unknown site {s!r}", f"one of {list(ALL_SITES)}")
    if "logits" not in chosen:
        chosen = chosen + ("logits",)
    return chosen
