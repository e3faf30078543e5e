"""Tables from activation patching (``mythos_lens.patching``): logit difference between the
source and target answers, the fraction of it a patch restores, and answer flips."""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from mythos_lens.errors import MythosLensError
from probes._checks import as_int_tensor, as_tensor, check_finite, check_ndim
from probes._dist import kl


def _answers(x: Any, default: torch.Tensor, name: str) -> torch.Tensor:
    if x is None:
        return default
    a = as_int_tensor(x, name).reshape(-1)
    if a.shape != default.shape:
        raise MythosLensError(f"{name} has {a.numel()} entries", f"{default.numel()} (the batch)")
    return a


def patch_effects(
    patched: Any,
    baseline: Any,
    source: Any,
    source_answer: Any = None,
    target_answer: Any = None,
) -> pd.DataFrame:
    """Per patched copy and example: how far a patch moves the target run toward the source.

    Args:
        patched: ``[cell, batch, vocab]`` logits at the query position.
        baseline: ``[batch, vocab]`` the target run unpatched, or ``[cell, batch, vocab]`` one
            unpatched run per copy (as ``mythos_lens.patching`` returns it).
        source: ``[batch, vocab]`` the run the patched values come from.
        source_answer, target_answer: ``[batch]`` the answers of the two runs (default: their
            argmax).

    Returns:
        ``cell, batch, logit_diff`` (logit of the source answer minus the target answer's),
        ``restored`` ((LD_patched − LD_baseline) / (LD_source − LD_baseline): 0 = no effect,
        1 = the source's preference fully restored; NaN where the two runs agree),
        ``flipped`` (the patched argmax is the source answer while the baseline's was not),
        ``kl_source`` (KL(source ‖ patched)) and ``delta_kl`` (KL(source ‖ patched) minus
        KL(source ‖ baseline): < 0 moves toward the source).
    """
    p = as_tensor(patched, "patched")
    base = as_tensor(baseline, "baseline")
    src = as_tensor(source, "source")
    check_ndim(p, 3, "patched", "[cell, batch, vocab]")
    if base.shape == p.shape[1:]:
        base = base.unsqueeze(0).expand_as(p)
    if base.shape != p.shape:
        raise MythosLensError(f"baseline has shape {tuple(base.shape)}", f"{tuple(p.shape)}")
    if src.shape != p.shape[1:]:
        raise MythosLensError(f"source has shape {tuple(src.shape)}", f"{tuple(p.shape[1:])}")
    for name, x in (("patched", p), ("baseline", base), ("source", src)):
        check_finite(x, name)
    C, B, _ = p.shape
    a_src = _answers(source_answer, src.argmax(-1), "source_answer")
    a_tgt = _answers(target_answer, base[0].argmax(-1), "target_answer")

    def ld(x: torch.Tensor) -> torch.Tensor:
        return x.gather(-1, a_src.expand(x.shape[:-1]).unsqueeze(-1)).squeeze(-1) - x.gather(
            -1, a_tgt.expand(x.shape[:-1]).unsqueeze(-1)
        ).squeeze(-1)

    ld_p, ld_b, ld_s = ld(p), ld(base), ld(src)
    span = ld_s - ld_b
    restored = torch.where(span.abs() > 0, (ld_p - ld_b) / span, torch.full_like(span, torch.nan))
    kl_p = kl(src.expand_as(p), p)
    kl_b = kl(src.expand_as(base), base)
    flipped = (p.argmax(-1) == a_src) & (base.argmax(-1) != a_src)
    cc, bb = torch.meshgrid(torch.arange(C), torch.arange(B), indexing="ij")
    return pd.DataFrame(
        {
            "cell": cc.reshape(-1).numpy(),
            "batch": bb.reshape(-1).numpy(),
            "logit_diff": ld_p.reshape(-1).numpy(),
            "restored": restored.reshape(-1).numpy(),
            "flipped": flipped.reshape(-1).numpy(),
            "kl_source": kl_p.reshape(-1).numpy(),
            "delta_kl": (kl_p - kl_b).reshape(-1).numpy(),
        }
    )


def sweep_table(cells: pd.DataFrame, effects: pd.DataFrame) -> pd.DataFrame:
    """Mean effect per cell of a sweep: `cells` (one row per patched copy, e.g. ``loop, pos``)
    joined with the mean over examples of :func:`patch_effects`' columns (``n`` = examples)."""
    if not isinstance(cells, pd.DataFrame) or not isinstance(effects, pd.DataFrame):
        raise MythosLensError("sweep_table inputs", "two DataFrames")
    if "cell" not in effects.columns or effects["cell"].max() >= len(cells):
        raise MythosLensError("effects do not match the cells", "patch_effects of these cells")
    cols = ["logit_diff", "restored", "flipped", "kl_source", "delta_kl"]
    g = effects.groupby("cell", sort=True)
    mean = g[cols].mean()
    mean["n"] = g.size()
    return pd.concat([cells.reset_index(drop=True), mean.reset_index(drop=True)], axis=1)
