"""Depth-wise LoRA differentiation: how different the per-loop adapters are, how large, and
what removing them does (from logits of ablation runs made model-side).

Upstream's LoRA shares ``down`` and ``B`` across loops; only ``lora.scale[t]`` ``[rank]`` differs
per loop (loops beyond ``max_loop_iters`` reuse the last row).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from mythos_lens.errors import MythosLensError
from probes._checks import as_int_tensor, as_tensor, check_finite, check_ndim, check_same_shape
from probes._dist import kl

ZERO_NOTE = "zero scale vector: no direction, cosine undefined"


def lora_scale_cosine(lora_scale: Any) -> pd.DataFrame:
    """Cosine similarity between the per-loop LoRA scale vectors.

    Args:
        lora_scale: ``[max_loop_iters, rank]`` (``trace.params["lora_scale"]``).

    Returns:
        ``loop_a, loop_b, metric="cosine", value, note`` for every ordered pair. A pair involving
        an all-zero scale vector (LoRA off at that loop) has value NaN and a note, not 0.
    """
    s = as_tensor(lora_scale, "lora_scale")
    check_ndim(s, 2, "lora_scale", "[max_loop_iters, rank]")
    check_finite(s, "lora_scale")
    n = s.norm(dim=-1)
    zero = n == 0
    unit = s / torch.where(zero, torch.ones_like(n), n).unsqueeze(-1)
    cos = unit @ unit.T
    bad = zero.unsqueeze(0) | zero.unsqueeze(1)
    cos[bad] = float("nan")
    L = s.shape[0]
    a, b = np.meshgrid(np.arange(L), np.arange(L), indexing="ij")
    return pd.DataFrame(
        {
            "loop_a": a.ravel(),
            "loop_b": b.ravel(),
            "metric": "cosine",
            "value": cos.reshape(-1).numpy(),
            "note": np.where(bad.reshape(-1).numpy(), ZERO_NOTE, ""),
        }
    )


def lora_delta_ratio(lora_delta: Any, block_out: Any) -> pd.DataFrame:
    """Size of the LoRA delta relative to the block output it is added to, per loop.

    Args:
        lora_delta, block_out: ``[loop, batch, pos, d]``.

    Returns:
        ``loop, metric, value`` with ``norm_ratio`` = ‖delta_t‖_F / ‖block_out_t‖_F over all
        tokens, and ``mean_token_ratio`` = mean over tokens of ‖delta‖ / ‖block_out‖ (tokens
        with a zero block output are skipped). NaN when the denominator is zero.
    """
    dl = as_tensor(lora_delta, "lora_delta")
    bo = as_tensor(block_out, "block_out")
    check_ndim(dl, 4, "lora_delta", "[loop, batch, pos, d]")
    check_same_shape(dl, bo, "lora_delta", "block_out")
    check_finite(dl, "lora_delta")
    check_finite(bo, "block_out")
    rows = []
    for t in range(dl.shape[0]):
        num, den = dl[t].norm(), bo[t].norm()
        tn, td = dl[t].norm(dim=-1), bo[t].norm(dim=-1)
        ok = td > 0
        rows.append(
            {
                "loop": t,
                "metric": "norm_ratio",
                "value": float(num / den) if den > 0 else float("nan"),
            }
        )
        rows.append(
            {
                "loop": t,
                "metric": "mean_token_ratio",
                "value": float((tn[ok] / td[ok]).mean()) if ok.any() else float("nan"),
            }
        )
    return pd.DataFrame(rows, columns=["loop", "metric", "value"])


def ablation_effects(
    baseline_logits: Any,
    ablated_logits: dict[int, Any],
    target_ids: Any = None,
    mask: Any = None,
) -> pd.DataFrame:
    """Effect of ablating LoRA at each loop, from logits of runs made elsewhere.

    Args:
        baseline_logits: ``[batch, pos, vocab]`` of the unablated run.
        ablated_logits: ``{loop: [batch, pos, vocab]}`` of the run with LoRA ablated at ``loop``.
        target_ids: optional ``[batch, pos]`` correct next tokens (for accuracy).
        mask: optional ``[batch, pos]`` bool: which tokens to average over (default all).

    Returns:
        One row per ablated loop × metric (``ablated_loop, metric, value``): ``kl`` = mean
        KL(baseline ‖ ablated), ``top1_changed`` = fraction of tokens whose argmax changed, and
        with targets ``acc_baseline``, ``acc_ablated``, ``delta_acc`` = ablated − baseline.
        All effects are exactly 0 when the ablated logits equal the baseline.
    """
    base = as_tensor(baseline_logits, "baseline_logits")
    check_ndim(base, 3, "baseline_logits", "[batch, pos, vocab]")
    check_finite(base, "baseline_logits")
    if not isinstance(ablated_logits, dict) or not ablated_logits:
        raise MythosLensError(
            f"ablated_logits is a {type(ablated_logits).__name__}",
            "a non-empty dict loop -> logits",
        )
    if mask is None:
        m = torch.ones(base.shape[:2], dtype=torch.bool)
    else:
        m = as_tensor(mask, "mask", floating=False).to(torch.bool)
        if m.shape != base.shape[:2]:
            raise MythosLensError(f"mask has shape {tuple(m.shape)}", f"{tuple(base.shape[:2])}")
        if not m.any():
            raise MythosLensError("mask selects no token", "at least one token")
    tgt = None
    if target_ids is not None:
        tgt = as_int_tensor(target_ids, "target_ids")
        if tgt.shape != base.shape[:2]:
            raise MythosLensError(
                f"target_ids has shape {tuple(tgt.shape)}", f"{tuple(base.shape[:2])} [batch, pos]"
            )
        if tgt.min() < 0 or tgt.max() >= base.shape[-1]:
            raise MythosLensError(
                "target_ids out of the vocabulary", f"ids in [0, {base.shape[-1]})"
            )
    base_top = base.argmax(-1)
    rows = []
    for loop, lg in sorted(ablated_logits.items()):
        if isinstance(loop, bool) or not isinstance(loop, (int, np.integer)) or loop < 0:
            raise MythosLensError(f"ablated loop key {loop!r}", "loop indices >= 0")
        ab = as_tensor(lg, f"ablated_logits[{loop}]")
        check_same_shape(ab, base, f"ablated_logits[{loop}]", "baseline_logits")
        check_finite(ab, f"ablated_logits[{loop}]")
        vals = {
            "kl": float(kl(base, ab)[m].mean()),
            "top1_changed": float((ab.argmax(-1) != base_top)[m].double().mean()),
        }
        if tgt is not None:
            acc_b = float((base_top == tgt)[m].double().mean())
            acc_a = float((ab.argmax(-1) == tgt)[m].double().mean())
            vals.update(acc_baseline=acc_b, acc_ablated=acc_a, delta_acc=acc_a - acc_b)
        rows += [{"ablated_loop": int(loop), "metric": k, "value": v} for k, v in vals.items()]
    return pd.DataFrame(rows, columns=["ablated_loop", "metric", "value"])
