"""Model-side callables that the model-free probes consume.

- :func:`logit_lens` and :func:`coda_lens`: readouts ``h -> logits`` for ``probes.lens``.
- :func:`loop_step`: the loop map ``h_{t-1} -> h_t`` at one loop step, for
  ``probes.convergence.spectral_radius``.

Every callable runs the model's modules with *detached* parameters (``torch.func.functional_call``),
so gradients taken through a readout (e.g. training a tuned lens) never touch the model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from open_mythos.main import OpenMythos, loop_index_embedding
from torch.func import functional_call

from mythos_lens.dispatch import is_dispatched
from mythos_lens.errors import MythosLensError
from mythos_lens.model import require_openmythos


def _frozen(module: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """`module`'s detached parameters and buffers; None when accelerate dispatched it (its own
    forward then loads its offloaded weights, which ``dispatch`` froze)."""
    if is_dispatched(module):
        return None
    state = {k: v.detach() for k, v in module.named_parameters()}
    state.update({k: v.detach() for k, v in module.named_buffers()})
    return state


def _call(module: torch.nn.Module, params: dict[str, torch.Tensor] | None, *args):
    """`module` on `args` with the parameters :func:`_frozen` gave."""
    return module(*args) if params is None else functional_call(module, params, args)


def _check_width(h: torch.Tensor, model: OpenMythos, what: str) -> None:
    if not isinstance(h, torch.Tensor) or not h.is_floating_point():
        raise MythosLensError(f"{what} input is a {type(h).__name__}", "a floating torch.Tensor")
    if h.dim() < 1 or h.shape[-1] != model.cfg.dim:
        raise MythosLensError(
            f"{what} input has shape {tuple(h.shape)}", f"[..., {model.cfg.dim}] (model dim)"
        )


def _rope_and_mask(model: OpenMythos, T: int, device: torch.device):
    """RoPE slice and causal mask exactly as ``OpenMythos.forward`` builds them (start_pos 0)."""
    if T > model.cfg.max_seq_len:
        raise MythosLensError(
            f"sequence of {T} positions", f"<= max_seq_len={model.cfg.max_seq_len}"
        )
    freqs = (model.freqs_cis_mla if model.cfg.attn_type == "mla" else model.freqs_cis)[:T]
    mask = model._causal_mask(T, device) if T > 1 else None
    return freqs.detach(), mask


def logit_lens(model: OpenMythos) -> Callable[[torch.Tensor], torch.Tensor]:
    """``h [..., d] -> head(norm(h)) [..., vocab]``: the model's final norm and unembedding."""
    model = require_openmythos(model)
    norm_p, head_p = _frozen(model.norm), _frozen(model.head)

    def readout(h: torch.Tensor) -> torch.Tensor:
        _check_width(h, model, "logit lens")
        h = h.to(model.head.weight.dtype)
        return _call(model.head, head_p, _call(model.norm, norm_p, h))

    return readout


def coda_lens(model: OpenMythos) -> Callable[[torch.Tensor], torch.Tensor]:
    """``h [..., batch, seq, d] -> head(norm(coda(h))) [..., batch, seq, vocab]``.

    Runs every coda layer on the *full* sequence (position 0 .. seq-1; attention mixes
    positions, so a subset of positions cannot be lensed alone) with the model's RoPE slice
    (``freqs_cis`` or ``freqs_cis_mla`` per ``attn_type``) and ``OpenMythos._causal_mask``, as
    upstream's forward does. Leading dims beyond ``batch`` (e.g. loop) are folded into batch.
    Applied to ``trace.stream["act_out"]`` it reproduces the model's logits.
    """
    model = require_openmythos(model)
    layers = [(layer, _frozen(layer)) for layer in model.coda]
    norm_p, head_p = _frozen(model.norm), _frozen(model.head)

    def readout(h: torch.Tensor) -> torch.Tensor:
        _check_width(h, model, "coda lens")
        if h.dim() < 3:
            raise MythosLensError(
                f"coda lens input has shape {tuple(h.shape)}", "[..., batch, seq, d]"
            )
        lead = h.shape[:-2]
        T = h.shape[-2]
        x = h.reshape(-1, T, h.shape[-1]).to(model.head.weight.dtype)
        freqs, mask = _rope_and_mask(model, T, x.device)
        for layer, params in layers:
            x = _call(layer, params, x, freqs, mask)
        out = _call(model.head, head_p, _call(model.norm, norm_p, x))
        return out.reshape(*lead, T, -1)

    return readout


def loop_step(model: OpenMythos, e: torch.Tensor, t: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The loop map at loop ``t``: ``h_{t-1} [batch, seq, d] -> h_t [batch, seq, d]``.

    Mirrors ``RecurrentBlock.forward``: ``h_t = A·h + B·e + (block(norm(h + loop_emb(t) + e)) +
    lora(·, t))``, with ``e`` the prelude output ``[batch, seq, d]`` (``trace.stream["e"]``,
    captured on all positions) and h_{-1} = e. No ACT weighting (it does not feed back into h).
    The router's top-k choice is piecewise constant, so the Jacobian is that of the chosen
    experts. Parameters are detached; use with ``probes.convergence.spectral_radius``.
    """
    model = require_openmythos(model)
    _check_width(e, model, "loop_step e")
    if e.dim() != 3:
        raise MythosLensError(f"e has shape {tuple(e.shape)}", "[batch, seq, d]")
    if isinstance(t, bool) or not isinstance(t, int) or t < 0:
        raise MythosLensError(f"t={t!r}", "a loop index >= 0")
    rec = model.recurrent
    e = e.detach().to(model.head.weight.dtype)
    freqs, mask = _rope_and_mask(model, e.shape[1], e.device)
    p_norm, p_block = _frozen(rec.norm), _frozen(rec.block)
    p_lora, p_inj = _frozen(rec.lora), _frozen(rec.injection)

    def step(h: torch.Tensor) -> torch.Tensor:
        if not isinstance(h, torch.Tensor) or h.shape != e.shape:
            raise MythosLensError(
                f"h has shape {tuple(getattr(h, 'shape', ()))}", f"{tuple(e.shape)} like e"
            )
        h_loop = loop_index_embedding(h, t, rec.loop_dim)
        combined = _call(rec.norm, p_norm, h_loop + e)
        out = _call(rec.block, p_block, combined, freqs, mask, None, f"loop_{t}")
        out = out + _call(rec.lora, p_lora, out, t)
        return _call(rec.injection, p_inj, h, e, out)

    return step


def exit_states(act_weight: torch.Tensor, resid_post: torch.Tensor) -> torch.Tensor:
    """What the coda would receive had the loop stopped after step t: ``[loop, batch, pos, d]``.

    Upstream's ACT sum ``h_out = Σ_s w_s h_s`` runs forward in t and no weight depends on later
    steps (a run stopped by ``n_loops`` adds no remainder), so stopping after step t gives the
    prefix ``Σ_{s<=t} w_s h_s``. It is accumulated with upstream's own operations, in upstream's
    order, so ``coda_lens`` of row t equals the logits of a real run with ``n_loops=t+1``.

    Args:
        act_weight: ``[loop, batch, pos]`` (``trace["act_weight"]``).
        resid_post: ``[loop, batch, pos, d]`` (``trace["resid_post"]``), same positions.
    """
    for name, x, nd in (("act_weight", act_weight, 3), ("resid_post", resid_post, 4)):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != nd:
            raise MythosLensError(f"{name} is {getattr(x, 'shape', type(x).__name__)}",
                                  f"a floating tensor with {nd} dims")  # fmt: skip
    if act_weight.shape != resid_post.shape[:3]:
        raise MythosLensError(
            f"act_weight {tuple(act_weight.shape)} vs resid_post {tuple(resid_post.shape)}",
            "act_weight = resid_post.shape[:3]",
        )
    acc = torch.zeros_like(resid_post[0])
    out = []
    for w, h in zip(act_weight, resid_post, strict=True):
        acc = acc + w.unsqueeze(-1) * h
        out.append(acc)
    return torch.stack(out)
