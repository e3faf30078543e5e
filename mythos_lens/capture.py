"""Hooks in, trace out: per-loop capture of an unmodified upstream OpenMythos.

One torch forward hook per upstream module turns the forward pass into a stream of *site events*
``(site, loop t, value)``. A loop counter advances each time the recurrent block's input norm runs
(once per loop step, before anything else in the step) and is checked against the loop index that
upstream hands the LoRA adapter. Visitors (capture, interventions, TransformerLens hook points) see
each event in order and may return a replacement value. Hooks are removed in ``finally``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from open_mythos.main import OpenMythos

from mythos_lens.attention import attention_pattern
from mythos_lens.errors import MythosLensError
from mythos_lens.events import SiteEvent, Visitor, check_loops_reached
from mythos_lens.inputs import as_input_ids, check_positions, check_store_dtype
from mythos_lens.model import (
    check_finite_weights,
    check_n_loops,
    config_to_dict,
    require_openmythos,
)
from mythos_lens.sites import ALL_SITES, LAYER_SITES, LOOP_SITES, OPTIONAL_SITES, resolve_sites
from mythos_lens.trace import LazyStack, Trace


@dataclass
class _ForwardState:
    loop: int = -1
    batch: int = 0
    seq: int = 0
    cum_p: torch.Tensor | None = None
    halted: torch.Tensor | None = None
    visitors: list = field(default_factory=list)


class LoopSession:
    """Installs the hooks for one or more forwards and dispatches site events to visitors."""

    def __init__(
        self, model: OpenMythos, visitors: Sequence[Visitor], optional_sites: Sequence[str] = ()
    ) -> None:
        self.model = require_openmythos(model)
        self.visitors = list(visitors)
        self.optional_sites = frozenset(optional_sites)  # computed only when someone asks
        self.state = _ForwardState()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    # -- dispatch -----------------------------------------------------------------------------
    def emit(
        self,
        site: str,
        value: torch.Tensor,
        inputs: tuple = (),
        layer: int | None = None,
        read_only: bool = False,
    ) -> torch.Tensor:
        loop = self.state.loop if site in LOOP_SITES else None
        event = SiteEvent(site, loop, layer, self.model, inputs)
        for visit in self.visitors:
            out = visit(event, value)
            if out is None or out is value:
                continue
            if not isinstance(out, torch.Tensor):
                raise MythosLensError(
                    f"a visitor returned a {type(out).__name__} for site {site!r}",
                    "a torch.Tensor replacement or None",
                )
            if read_only:
                raise MythosLensError(
                    f"a hook replaced the derived site {site!r}",
                    "edits at router_logits (or force_experts) for expert choices, at "
                    "halt_prob for ACT; derived sites are read-only",
                )
            if out.shape != value.shape:
                raise MythosLensError(
                    f"replacement for {site!r} has shape {tuple(out.shape)}",
                    f"shape {tuple(value.shape)}",
                )
            value = out.to(dtype=value.dtype, device=value.device)
        return value

    # -- hooks --------------------------------------------------------------------------------
    def _hook(self, module: torch.nn.Module, fn: Any, pre: bool = False) -> None:
        if pre:
            h = module.register_forward_pre_hook(fn, with_kwargs=True)
        else:
            h = module.register_forward_hook(fn, with_kwargs=True)
        self._handles.append(h)

    def _install(self) -> None:
        m = self.model
        rec = m.recurrent
        st = self.state

        def on_embed(mod, args, kwargs, out):
            return self.emit("embed", out, args)

        def on_layer(group: str, i: int):
            def hook(mod, args, kwargs, out):
                return self.emit(group, out, args, layer=i)

            return hook

        def on_recurrent_pre(mod, args, kwargs):
            h = args[0] if args else kwargs["h"]
            e = args[1] if len(args) > 1 else kwargs["e"]
            st.loop = -1
            st.batch, st.seq = h.shape[0], h.shape[1]
            st.cum_p = torch.zeros(st.batch, st.seq, device=h.device)
            st.halted = torch.zeros(st.batch, st.seq, device=h.device, dtype=torch.bool)
            new_e = self.emit("e", e, args)
            if new_e is e:
                return None
            # h_0 is the prelude output too: a patched e is the patched starting state.
            rest = args[2:] if len(args) > 2 else ()
            return (new_e, new_e, *rest), kwargs

        def on_block_in(mod, args, kwargs, out):
            st.loop += 1  # the block's input norm runs first in every loop step, once
            return self.emit("block_in", out, args)

        def on_router(mod, args, kwargs, out):
            logits = out.view(st.batch, st.seq, -1)
            new = self.emit("router_logits", logits, args)
            ffn = rec.block.ffn
            # Exactly upstream's selection: top-k of biased logits, unbiased renormalised gate.
            flat = new.reshape(st.batch * st.seq, -1)
            scores = F.softmax(flat, dim=-1)
            _, ids = (flat + ffn.router_bias).topk(ffn.topk, dim=-1)
            w = scores.gather(-1, ids)
            w = w / w.sum(dim=-1, keepdim=True)
            shape = (st.batch, st.seq, ffn.topk)
            self.emit("expert_ids", ids.view(shape), args, read_only=True)
            self.emit("expert_weights", w.view(shape), args, read_only=True)
            return None if new is logits else new.reshape(out.shape)

        def on_block(mod, args, kwargs, out):
            return self.emit("block_out", out, args)

        def on_lora(mod, args, kwargs, out):
            t = args[1] if len(args) > 1 else kwargs["loop_t"]
            if int(t) != st.loop:
                raise MythosLensError(
                    f"loop counter {st.loop} disagrees with upstream loop index {int(t)}",
                    "the call order of open-mythos 0.5.0's RecurrentBlock",
                )
            return self.emit("lora_delta", out, args)

        def on_injection(mod, args, kwargs, out):
            return self.emit("resid_post", out, args)

        def on_act(mod, args, kwargs, out):
            p = self.emit("halt_prob", out, args)
            # Replays upstream's ACT bookkeeping op for op, so the values are bit-identical.
            thr = m.cfg.act_threshold
            still = ~st.halted
            remainder = (1.0 - st.cum_p).clamp(min=0)
            weight = torch.where(st.cum_p + p >= thr, remainder, p) * still.float()
            st.cum_p = st.cum_p + p * still.float()
            st.halted = st.halted | (st.cum_p >= thr)
            self.emit("act_weight", weight, args, read_only=True)
            self.emit("cum_halt_prob", st.cum_p, args, read_only=True)
            return None if p is out else p

        def on_recurrent(mod, args, kwargs, out):
            return self.emit("act_out", out, args)

        def on_attention(site: str, layer: int | None):
            def hook(mod, args, kwargs, out):
                x, freqs, mask = args[0], args[1], args[2] if len(args) > 2 else None
                cache = args[3] if len(args) > 3 else kwargs.get("kv_cache")
                key = args[4] if len(args) > 4 else kwargs.get("cache_key", "default")
                cached = cache.get(key) if cache is not None else None
                with torch.no_grad():
                    pattern = attention_pattern(mod, x, freqs, mask, cached)
                self.emit(site, pattern, args, layer=layer, read_only=True)

            return hook

        self._hook(m.embed, on_embed)
        for i, layer in enumerate(m.prelude):
            self._hook(layer, on_layer("prelude", i))
        self._hook(rec, on_recurrent_pre, pre=True)
        self._hook(rec.norm, on_block_in)
        self._hook(rec.block.ffn.router, on_router)
        self._hook(rec.block, on_block)
        self._hook(rec.lora, on_lora)
        self._hook(rec.injection, on_injection)
        self._hook(rec.act, on_act)
        self._hook(rec, on_recurrent)
        for i, layer in enumerate(m.coda):
            self._hook(layer, on_layer("coda", i))
        if "attn_pattern" in self.optional_sites:
            self._hook(rec.block.attn, on_attention("attn_pattern", None))
        for group in ("prelude", "coda"):
            if f"{group}_attn" in self.optional_sites:
                for i, layer in enumerate(getattr(m, group)):
                    self._hook(layer.attn, on_attention(f"{group}_attn", i))

    def remove(self) -> None:
        """Remove every hook this session installed."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    @contextlib.contextmanager
    def installed(self) -> Iterator[LoopSession]:
        """Hooks live exactly for the ``with`` body, also when it raises."""
        self._install()
        try:
            yield self
        finally:
            self.remove()

    @property
    def loops_run(self) -> int:
        """Loop steps run by the last forward."""
        return self.state.loop + 1


class CaptureVisitor:
    """Keeps the chosen sites, sliced to `positions`, cast to `dtype` and moved to `device`."""

    def __init__(
        self,
        sites: Sequence[str],
        positions: torch.Tensor | None,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        self.sites = set(sites)
        self.positions = positions
        self.device = None if device is None else torch.device(device)
        self.dtype = dtype
        # Per-step tensors are kept by reference (upstream never edits them in place); the
        # trace stacks them into [loop, ...] when a site is first read (LazyStack).
        self.loop: dict[str, list[torch.Tensor]] = {}
        self.stream: dict[str, torch.Tensor] = {}
        self.layers: dict[str, list[torch.Tensor]] = {}

    def _store(self, site: str, value: torch.Tensor) -> torch.Tensor:
        x = value.detach()
        axis = ALL_SITES[site].pos_axis
        if self.positions is not None and x.dim() > axis:
            x = x.index_select(axis, self.positions.to(x.device))
        # Tensor.to costs ~10 us even when it has nothing to do: call it only when it must move.
        dtype = self.dtype if (self.dtype is not None and x.is_floating_point()) else x.dtype
        device = self.device if self.device is not None else x.device
        if dtype != x.dtype or device != x.device:
            x = x.to(device=device, dtype=dtype)
        return x

    def __call__(self, event: SiteEvent, value: torch.Tensor) -> None:
        if event.site not in self.sites:
            return None
        if event.site in LOOP_SITES:
            self.loop.setdefault(event.site, []).append(self._store(event.site, value))
        elif event.site in LAYER_SITES:
            self.layers.setdefault(event.site, []).append(self._store(event.site, value))
        else:
            self.stream[event.site] = self._store(event.site, value)
        return None


_TOKEN_ID = re.compile(r"[0-9]+")


def _model_params(model: OpenMythos) -> dict[str, torch.Tensor]:
    rec = model.recurrent
    with torch.no_grad():
        return {
            "injection_A": rec.injection.get_A().detach().cpu().float(),
            "injection_B": rec.injection.B.detach().cpu().float(),
            "lora_scale": rec.lora.scale.weight.detach().cpu().float(),
            "router_bias": rec.block.ffn.router_bias.detach().cpu().float(),
        }


def run(
    model: OpenMythos,
    input_ids: Any,
    *,
    n_loops: int | None = None,
    visitors: Sequence[Visitor] = (),
    run_all_loops: bool = False,
    grad: bool = False,
    optional_sites: Sequence[str] = (),
) -> tuple[torch.Tensor, int]:
    """Run one forward pass with visitors attached; returns ``(logits [batch, seq, vocab],
    loops_run)``.

    ``run_all_loops=True`` passes upstream an empty KV cache, which disables ACT's early exit
    without changing any value: halted positions keep contributing zero weight.
    ``optional_sites`` (e.g. ``attn_pattern``) are computed and emitted only when named here.
    """
    model = require_openmythos(model)
    check_finite_weights(model)
    ids = as_input_ids(input_ids, model)
    n = check_n_loops(n_loops, model)
    check_loops_reached(visitors, n, n, False)  # before running: loops beyond n_loops
    session = LoopSession(model, visitors, optional_sites)
    grad_ctx = contextlib.nullcontext() if grad else torch.no_grad()
    with session.installed(), grad_ctx:
        logits = model(ids, n_loops=n, kv_cache={} if run_all_loops else None)
        logits = session.emit("logits", logits, read_only=True)
    check_loops_reached(visitors, session.loops_run, n, session.loops_run < n)
    return logits, session.loops_run


def capture(
    model: OpenMythos,
    input_ids: Any,
    *,
    n_loops: int | None = None,
    sites: str | Sequence[str] | None = None,
    positions: Any = None,
    store_device: torch.device | str | None = "cpu",
    store_dtype: torch.dtype | None = None,
    interventions: Sequence[Visitor] = (),
    run_all_loops: bool = False,
) -> Trace:
    """Run one forward pass of `model` on `input_ids` ``[batch, seq]`` and capture every loop step.

    Args:
        n_loops: loop steps requested (default ``max_loop_iters``; may exceed it). ACT may run
            fewer: the trace holds exactly the steps that ran (``trace.n_loops``).
        sites: site names to keep (default all; see ``mythos_lens.sites``). Logits are always kept.
        positions: sequence positions to keep on the ``pos`` axis (default all).
        store_device / store_dtype: where and in what floating dtype captured tensors are kept
            (``None`` = as computed).
        interventions: visitors applied before capture sees a value (see
            ``mythos_lens.interventions``); the trace records the intervened run.
        run_all_loops: disable ACT early exit (values unchanged) so every requested loop runs.

    Returns:
        A :class:`Trace` whose loop sites are ``[loop, batch, pos, ...]``.
    """
    model = require_openmythos(model)
    chosen = resolve_sites(sites)
    ids = as_input_ids(input_ids, model)
    pos = check_positions(positions, ids.shape[1])
    n_req = check_n_loops(n_loops, model)
    keeper = CaptureVisitor(chosen, pos, store_device, check_store_dtype(store_dtype))
    _, loops_run = run(
        model,
        ids,
        n_loops=n_req,
        visitors=[*interventions, keeper],
        run_all_loops=run_all_loops,
        optional_sites=[s for s in chosen if s in OPTIONAL_SITES],
    )
    cfg = model.cfg
    max_row = cfg.max_loop_iters - 1
    meta = {
        "config": config_to_dict(cfg),
        "act_threshold": cfg.act_threshold,
        "loop_dim": cfg.dim // 8,
        "n_experts": cfg.n_experts,
        "top_k": cfg.n_experts_per_tok,
        "n_shared_experts": cfg.n_shared_experts,
        "lora_row": [min(t, max_row) for t in range(loops_run)],
        "run_all_loops": run_all_loops,
        "interventions": [repr(v) for v in interventions],
    }
    return Trace(
        input_ids=ids.detach().cpu(),
        positions=(pos if pos is not None else torch.arange(ids.shape[1])).cpu(),
        n_loops=loops_run,
        n_loops_requested=n_req,
        loop=LazyStack(keeper.loop),
        stream=dict(keeper.stream),
        layers=LazyStack(keeper.layers),
        params=_model_params(model),
        meta=meta,
    )


__all__ = ["LoopSession", "CaptureVisitor", "capture", "run"]
