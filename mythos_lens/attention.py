"""Attention patterns of upstream's attention modules, recomputed exactly from their inputs.

Upstream computes ``softmax(q kᵀ · scale + mask)`` inside ``GQAttention`` / ``MLAttention`` and
returns only ``wo(pattern @ v)``; no module outputs the pattern. Capture therefore records the
module's inputs (``x``, the RoPE slice, the mask, the KV cache entry after the call) and replays
upstream's arithmetic for q and k here. The result is ``[batch, head, q, k]``; with a KV cache,
k runs over every cached position (``[batch, head, q, cache + q]``).

Patterns are an opt-in site: they cost memory ``batch · heads · T²`` per loop step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_mythos.main import GQAttention, MLAttention, apply_rope

from mythos_lens.errors import MythosLensError


def _gqa_qkv(
    attn: GQAttention, x: torch.Tensor, freqs: torch.Tensor, cached: dict | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    B, T, _ = x.shape
    q = apply_rope(attn.wq(x).view(B, T, attn.n_heads, attn.head_dim), freqs)
    if cached is not None:  # the cache entry after the call holds every position's k and v
        k, v = cached["k"], cached["v"]
    else:
        k = apply_rope(attn.wk(x).view(B, T, attn.n_kv_heads, attn.head_dim), freqs)
        v = attn.wv(x).view(B, T, attn.n_kv_heads, attn.head_dim)
    k = k.repeat_interleave(attn.groups, dim=2)
    v = v.repeat_interleave(attn.groups, dim=2)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn.head_dim**-0.5


def _mla_qkv(
    attn: MLAttention, x: torch.Tensor, freqs: torch.Tensor, cached: dict | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    B, T, _ = x.shape
    H = attn.n_heads
    c_q = attn.q_norm(attn.q_down(x))
    q_nope = attn.q_up_nope(c_q).view(B, T, H, attn.qk_nope_dim)
    q_rope = apply_rope(attn.q_up_rope(c_q).view(B, T, H, attn.qk_rope_dim), freqs)
    q = torch.cat([q_nope, q_rope], dim=-1)
    if cached is not None:
        c_kv, k_rope = cached["c_kv"], cached["k_rope"]
    else:
        kv_raw = attn.kv_down(x)
        c_kv = kv_raw[..., : attn.kv_lora_rank]
        k_rope = kv_raw[..., attn.kv_lora_rank :].unsqueeze(2).expand(B, T, H, attn.qk_rope_dim)
        k_rope = apply_rope(k_rope.contiguous(), freqs)
    S = c_kv.shape[1]
    kv = attn.kv_up(attn.kv_norm(c_kv)).view(B, S, H, attn.qk_nope_dim + attn.v_dim)
    k = torch.cat([kv[..., : attn.qk_nope_dim], k_rope], dim=-1)
    v = kv[..., attn.qk_nope_dim :]
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn.q_head_dim**-0.5


def attention_qkv(
    attn: torch.nn.Module,
    x: torch.Tensor,
    freqs_cis: torch.Tensor,
    cached: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Upstream's q ``[B, H, T, dk]``, k ``[B, H, S, dk]``, v ``[B, H, S, dv]`` and scale for
    attention module `attn` on input `x` ``[B, T, d]`` (after its norm). `cached` is the
    module's KV-cache entry *after* the call, when a cache was used."""
    if isinstance(attn, GQAttention):
        return _gqa_qkv(attn, x, freqs_cis, cached)
    if isinstance(attn, MLAttention):
        return _mla_qkv(attn, x, freqs_cis, cached)
    raise MythosLensError(f"attention module {type(attn).__name__}", "GQAttention or MLAttention")


def attention_pattern(
    attn: torch.nn.Module,
    x: torch.Tensor,
    freqs_cis: torch.Tensor,
    mask: torch.Tensor | None,
    cached: dict | None = None,
) -> torch.Tensor:
    """``[batch, head, q, k]`` softmax attention weights, as upstream computes them (dropout
    excluded: patterns are read in eval mode)."""
    q, k, _, scale = attention_qkv(attn, x, freqs_cis, cached)
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    if mask is not None:
        scores = scores + mask
    return F.softmax(scores, dim=-1)
