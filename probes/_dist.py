"""Distribution helpers on logits (last axis = vocabulary), float64 and numerically stable."""

from __future__ import annotations

import torch


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the last axis, in float64."""
    return torch.log_softmax(logits.to(torch.float64), dim=-1)


def kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) in nats over the last axis, for logits of the same shape ``[..., V]``."""
    lp, lq = log_probs(p_logits), log_probs(q_logits)
    p = lp.exp()
    # 0 · log 0 = 0; where p > 0 and q = 0 the KL is +inf, as it should be
    terms = torch.where(p > 0, p * (lp - lq), torch.zeros_like(p))
    return terms.sum(-1).clamp(min=0.0)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats over the last axis."""
    lp = log_probs(logits)
    p = lp.exp()
    return -torch.where(p > 0, p * lp, torch.zeros_like(p)).sum(-1)


def rank_of(logits: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """0-based rank of ``token`` ``[...]`` under ``logits`` ``[..., V]``: the number of tokens
    with a strictly larger logit (rank 0 = top-1; ties share the better rank)."""
    val = logits.gather(-1, token.unsqueeze(-1))
    return (logits > val).sum(-1)
