"""The ALBERT adapter (``transformers.AlbertForMaskedLM``, unmodified): shared layers repeated.

ALBERT's encoder calls a layer group (with shared weights) ``num_hidden_layers`` times; each
call is one step of kind ``layer`` … named ``repeat`` here (``layer`` names non-looped layer
sites), labelled ``(group, i)``. Calls carry no step argument, so steps are counted. The
readout of a state is the masked-LM head (``predictions``); the head of the last call's output
is the model's output, exactly. ``n_loops`` sets ``num_hidden_layers`` for the call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from mythos_lens.adapters.base import Adapter, StepKind
from mythos_lens.errors import MythosLensError
from mythos_lens.inputs import as_input_ids
from mythos_lens.sites import Site, SiteTable

SITES = SiteTable([
    Site("embed", "albert.embeddings", "[batch, pos, e]", "embeddings (embedding size)",
         step=None),
    Site("repeat_in", "albert.encoder.albert_layer_groups.{g} (input)",
         "[repeat, batch, pos, d]", "what the shared layer group reads at this repeat",
         step="repeat"),
    Site("repeat_out", "albert.encoder.albert_layer_groups.{g}", "[repeat, batch, pos, d]",
         "the hidden state after this repeat of the shared layers", step="repeat"),
    Site("logits", "predictions", "[batch, pos, vocab]", "masked-LM logits", step=None,
         editable=False),
])  # fmt: skip


def install(session: Any) -> None:
    """Register ALBERT's hooks on ``session.model`` (an ``AlbertForMaskedLM``)."""
    m = session.model
    cfg = m.config
    encoder = m.albert.encoder

    def on_embed(mod, args, kwargs, out):
        return session.emit("embed", out, args)

    def pre(g: int):
        def hook(mod, args, kwargs):
            i = session.counts["repeat"] + 1
            expected = int(i / (cfg.num_hidden_layers / cfg.num_hidden_groups))
            if expected != g:
                raise MythosLensError(f"layer group {g} called at repeat {i}",
                                      "the call order of transformers' AlbertTransformer")  # fmt: skip
            session.next_step("repeat", (g, i))
            x = args[0]
            new = session.emit("repeat_in", x, args)
            return None if new is x else ((new, *args[1:]), kwargs)

        return hook

    def post(mod, args, kwargs, out):
        return session.emit("repeat_out", out, args)

    session.hook(m.albert.embeddings, on_embed)
    for g, group in enumerate(encoder.albert_layer_groups):
        session.hook(group, pre(g), pre=True)
        session.hook(group, post)


@contextlib.contextmanager
def _repeats(model: Any, n: int) -> Iterator[None]:
    before = model.config.num_hidden_layers
    try:
        model.config.num_hidden_layers = n
        yield
    finally:
        model.config.num_hidden_layers = before


def run(model: Any, ids: torch.Tensor, n_steps: int, run_all_steps: bool, session: Any, **kw: Any):
    """One forward with the shared layers repeated `n_steps` times."""
    with _repeats(model, n_steps):
        return model(input_ids=ids).logits


def mlm_lens(model: Any):
    """``h [..., d] -> predictions(h)``: the masked-LM head, as the model reads its last state."""
    head = model.predictions

    def readout(h: torch.Tensor) -> torch.Tensor:
        if not isinstance(h, torch.Tensor) or h.shape[-1] != model.config.hidden_size:
            raise MythosLensError(f"lens input of shape {tuple(getattr(h, 'shape', ()))}",
                                  f"[..., {model.config.hidden_size}]")  # fmt: skip
        with torch.no_grad():
            return head(h)

    return readout


def _matches(model: Any) -> bool:
    try:
        from transformers import AlbertForMaskedLM
    except ImportError:
        return False
    return isinstance(model, AlbertForMaskedLM)


ADAPTER = Adapter(
    name="albert",
    description="ALBERT (transformers): one layer group with shared weights, repeated",
    matches=_matches,
    sites=SITES,
    steps=(StepKind("repeat", "one call of the shared layer group", "repeats"),),
    primary="repeat",
    roles={"state": "repeat_out"},
    install=install,
    run=run,
    default_steps=lambda model: model.config.num_hidden_layers,
    check_ids=lambda ids, model: as_input_ids(
        ids,
        vocab_size=model.config.vocab_size,
        max_len=model.config.max_position_embeddings,
        device=model.predictions.decoder.weight.device,
    ),  # fmt: skip
    readouts={"logit": mlm_lens},
    exit_logits=lambda model, trace: torch.stack([mlm_lens(model)(h) for h in trace["repeat_out"]]),
    exit_sites=("repeat_out",),
    entry=lambda model: model.albert.embeddings,
    head=lambda model: model.predictions,
    meta=lambda model, steps_run: {"num_hidden_layers": model.config.num_hidden_layers},
    pages=("trajectories", "loops"),
)
