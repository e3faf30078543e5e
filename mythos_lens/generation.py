"""Capture while generating: every step of every forward of ``generate``, labelled.

A generation runs one forward for the prompt (*prefill*, every prompt position) and one per new
token (*decode k*, one position, reading the KV cache). The hooks stay installed for the whole
generation; each forward's site events go into their own :class:`~mythos_lens.trace.Trace`
(``trace.meta["generation"]`` says which forward and which positions). Capture reads values
only, so the generated ids are the same with and without it (same seed, same ids).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mythos_lens.adapters import adapter_for
from mythos_lens.capture import CaptureVisitor, check_sites_exist, read_params
from mythos_lens.errors import MythosLensError, check_int
from mythos_lens.events import SiteEvent, Visitor
from mythos_lens.inputs import check_store_dtype
from mythos_lens.model import check_finite_weights, check_n_loops
from mythos_lens.session import HookSession
from mythos_lens.trace import LazyStack, Trace


@dataclass
class GenerationTrace:
    """The prompt, the generated ids, and one :class:`Trace` per forward (``steps[0]`` is the
    prefill, ``steps[k]`` the forward that produced token k+1 of the continuation)."""

    prompt_ids: torch.Tensor
    output_ids: torch.Tensor
    steps: list[Trace] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, k: int) -> Trace:
        return self.steps[k]

    @property
    def new_ids(self) -> torch.Tensor:
        """``[batch, new]``: the generated continuation."""
        return self.output_ids[:, self.prompt_ids.shape[1] :]


class _PerForward:
    """Routes each forward's events into its own capture visitor."""

    def __init__(self, make: Any) -> None:
        self.make = make
        self.keepers: list[CaptureVisitor] = []
        self.labels: list[dict[tuple[str, int], Any]] = []

    def __call__(self, event: SiteEvent, value: torch.Tensor) -> None:
        while len(self.keepers) <= event.forward:
            self.keepers.append(self.make())
            self.labels.append({})
        if event.loop is not None:
            self.labels[event.forward][(event.site, event.loop)] = event.label
        return self.keepers[event.forward](event, value)


def capture_generate(
    model: Any,
    input_ids: Any,
    *,
    max_new_tokens: int = 8,
    n_loops: int | None = None,
    sites: str | Sequence[str] | None = None,
    store_device: torch.device | str | None = "cpu",
    store_dtype: torch.dtype | None = None,
    interventions: Sequence[Visitor] = (),
    **generate_options: Any,
) -> GenerationTrace:
    """Run the model's own ``generate`` on `input_ids` ``[batch, prompt]`` with every site
    captured at every step of every forward.

    `n_loops` is the primary step count per forward (OpenMythos: loops; HRM-Text: must equal
    its configured H cycles, whose KV-cache layout is fixed). `generate_options` go to the
    model's ``generate`` (OpenMythos: ``temperature``, ``top_k``; transformers: e.g.
    ``do_sample``); seed torch yourself for sampling.
    """
    adapter = adapter_for(model)
    if adapter.generate is None:
        raise MythosLensError(f"{adapter.name} models cannot generate here", "a generative model")
    check_finite_weights(model)
    chosen = adapter.sites.resolve(sites, always=("logits",))
    ids = adapter.check_ids(input_ids, model)
    new = check_int("max_new_tokens", max_new_tokens, 1)
    n = check_n_loops(adapter.default_steps(model) if n_loops is None else n_loops)
    check_sites_exist(interventions, adapter)
    dtype = check_store_dtype(store_dtype)
    router = _PerForward(lambda: CaptureVisitor(adapter.sites, chosen, None, store_device, dtype))
    optional = [s for s in chosen if s in adapter.sites.optional]
    session = HookSession(adapter, model, [*interventions, router], optional, emit_logits=True)
    with session.installed(), torch.no_grad():
        out = adapter.generate(model, ids, new, n, session, **generate_options)
    steps = []
    prompt = ids.shape[1]
    for k, keeper in enumerate(router.keepers):
        kinds: dict[str, dict[int, Any]] = {}
        for (site, t), label in router.labels[k].items():
            kinds.setdefault(adapter.sites[site].step, {})[t] = label
        labels = {kind: [v[t] for t in sorted(v)] for kind, v in kinds.items()}
        width = prompt if k == 0 else 1
        start = 0 if k == 0 else prompt + k - 1
        primary = labels.get(adapter.primary, [])
        steps.append(Trace(
            input_ids=out[:, start : start + width].detach().cpu(),
            positions=torch.arange(start, start + width),
            n_loops=len(primary), n_loops_requested=n,
            loop=LazyStack(keeper.loop), stream=dict(keeper.stream),
            layers=LazyStack(keeper.layers), params=read_params(adapter, model),
            meta={**adapter.meta(model, len(primary)), "adapter": adapter.name,
                  "site_shapes": {s: adapter.sites[s].shape for s in adapter.sites},
                  "generation": {"forward": k, "phase": "prefill" if k == 0 else "decode",
                                 "first_position": start, "positions": width}},
            steps=labels, site_steps={s: adapter.sites[s].step for s in keeper.loop},
        ))  # fmt: skip
    return GenerationTrace(ids.detach().cpu(), out.detach().cpu(), steps)
