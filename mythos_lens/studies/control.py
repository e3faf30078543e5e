"""The study's positive control: loop differentiation planted where it is known to exist.

A LoRA-off model gets LoRA scale rows planted into its (untrained, frozen) ``down``/``B``:

- ``distinct``: a different random unit row per loop — the loops now run different functions;
- ``same``: one random unit row at every loop — the same perturbation, no differentiation.

Both are scaled so that the mean ‖lora_delta‖ at the answer over the loops that matter equals
``size`` × the paired LoRA-on model's (size 1: as large as what training produced). The
representational endpoints must separate distinct from same (paired over seeds); where they do
not, their "not detected" on the real models carries no information.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from mythos_lens.capture import capture
from mythos_lens.model import require_openmythos

VARIANTS = ("distinct", "same")


def unit_rows(n_rows: int, rank: int, variant: str, seed: int) -> torch.Tensor:
    """``[n_rows, rank]`` float64 unit rows: independent per row (``distinct``) or one row
    repeated (``same``), from ``seed``."""
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r}; expected one of {VARIANTS}")
    g = torch.Generator().manual_seed(seed)
    k = n_rows if variant == "distinct" else 1
    rows = F.normalize(torch.randn(k, rank, generator=g, dtype=torch.float64), dim=-1)
    return rows.expand(n_rows, rank).clone()


def with_rows(model: Any, rows: torch.Tensor) -> Any:
    """A copy of `model` whose LoRA scale table is ``rows`` ``[max_loop_iters, rank]``."""
    m = copy.deepcopy(require_openmythos(model))
    with torch.no_grad():
        m.recurrent.lora.scale.weight.copy_(rows.to(m.recurrent.lora.scale.weight))
    return m


def _delta_norm(model: Any, ids: torch.Tensor, n_loops: int, loops: list[int]) -> float:
    tr = capture(model, ids, n_loops=n_loops, run_all_loops=True, sites=["lora_delta"])
    return float(tr["lora_delta"][loops][:, :, -1].double().norm(dim=-1).mean())


def planted_model(
    off_model: Any,
    ids: torch.Tensor,
    *,
    n_loops: int,
    loops: list[int],
    target_norm: float,
    variant: str,
    seed: int,
) -> tuple[Any, float]:
    """``(model, achieved mean ‖lora_delta‖)``: `off_model` with `variant` rows scaled to
    `target_norm` at the answer of ``ids`` ``[batch, seq]`` over `loops`.

    The delta is linear in the scale row, but the states it acts on move with it, so the scale
    is set by one secant step and the achieved norm returned."""
    table = off_model.recurrent.lora.scale.weight
    rows = unit_rows(table.shape[0], table.shape[1], variant, seed)
    c = target_norm / _delta_norm(with_rows(off_model, rows), ids, n_loops, loops)
    model = with_rows(off_model, c * rows)
    achieved = _delta_norm(model, ids, n_loops, loops)
    model = with_rows(off_model, c * (target_norm / achieved) * rows)
    return model, _delta_norm(model, ids, n_loops, loops)
