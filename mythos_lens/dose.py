"""Planted per-loop changes of known size: the model side of a dose-response (sensitivity) curve.

Before a metric decides whether "loops differ", it has to be shown that it *can* see a difference
of the size that matters. A **plant** is ``plant(model, dose) -> model``: dose 0 returns `model`
itself (so the dose-0 point is the unmodified model, exactly), larger doses a modified copy. The
dose is a knob, not the effect: :func:`dose_response` measures each dose's effect on the output
(KL to dose 0 and Δ accuracy at the answer) beside every metric, and
:func:`probes.sensitivity.sensitivity_curve` says where a metric separates from its spread.

Plants provided:

- :func:`lora_rows_plant` — per-loop LoRA rows ``mean + k·(rows_t − mean)`` (OpenMythos's
  depth-wise LoRA differs per loop only through ``lora.scale``): the base is every loop at the
  mean row, dose k adds k times the given rows' differences;
- :func:`loop_embedding_plant` — the same for the loop-index embedding (a fixed sinusoid
  upstream, edited where the block reads it, ``block_in``);
- :func:`loop_identity_plant` — both together;
- :func:`edit_plant` — any site edit (:class:`~mythos_lens.interventions.EditSite`) whose size is
  the dose: the copy carries the edit in persistent hooks wherever it runs.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mythos_lens.errors import MythosLensError, check_float, check_int
from mythos_lens.events import SiteEvent
from mythos_lens.model import loop_embedding

Plant = Callable[[Any, float], Any]
_PLANT = "_mythos_lens_plant"


def edit_plant(make_visitors: Callable[[float], Sequence[Any]]) -> Plant:
    """A plant from interventions: ``plant(model, dose)`` is a copy of `model` carrying
    ``make_visitors(dose)`` (e.g. ``[EditSite(site, fn, loops)]``) in persistent hooks, so every
    forward, capture and intervention on the copy sees the edit; dose 0 returns `model`."""

    def plant(model: Any, dose: float) -> Any:
        if check_float("dose", dose) == 0.0:
            return model
        return planted(model, make_visitors(dose))

    return plant


def planted(model: Any, visitors: Sequence[Any]) -> Any:
    """A deep copy of `model` with `visitors` installed for good (persistent hooks)."""
    from mythos_lens.adapters import adapter_for
    from mythos_lens.capture import check_sites_exist
    from mythos_lens.session import HookSession

    if getattr(model, _PLANT, None) is not None:
        raise MythosLensError("a model that already carries a planted edit",
                              "an unplanted model (build every edit into one plant)")  # fmt: skip
    adapter = adapter_for(model)
    check_sites_exist(list(visitors), adapter)
    m = copy.deepcopy(model)
    session = HookSession(adapter, m, list(visitors))
    ctx = session.installed()
    ctx.__enter__()
    setattr(m, _PLANT, (session, ctx))
    return m


def _scaled_rows(table: torch.Tensor, used: int, k: float) -> torch.Tensor:
    """``table`` with rows ``< used`` moved to ``mean + k·(row − mean)`` (mean over them); rows
    beyond keep their offset from the mean scaled the same way."""
    mean = table[:used].mean(0, keepdim=True)
    return mean + k * (table - mean)


def with_lora_rows(model: Any, rows: torch.Tensor) -> Any:
    """A copy of OpenMythos `model` whose LoRA scale table is ``rows`` ``[max_loop_iters, rank]``."""
    from mythos_lens.model import require_openmythos

    m = copy.deepcopy(require_openmythos(model))
    with torch.no_grad():
        m.recurrent.lora.scale.weight.copy_(rows.to(m.recurrent.lora.scale.weight))
    return m


def lora_rows_plant(source: Any, n_loops: int) -> tuple[Any, Plant]:
    """``(base, plant)``: `base` is `source` with every LoRA row at the mean of the rows of loops
    ``0 … n_loops−1``; ``plant(base, k)`` puts ``k ×`` `source`'s row differences back (k = 1:
    `source`'s own rows, bit for bit)."""
    n = check_int("n_loops", n_loops, 1)
    table = source.recurrent.lora.scale.weight.detach().double()
    used = min(n, table.shape[0])
    base = with_lora_rows(source, _scaled_rows(table, used, 0.0))

    def plant(model: Any, k: float) -> Any:
        if check_float("dose", k) == 0.0:
            return model
        rows = table if k == 1.0 else _scaled_rows(table, used, k)
        return with_lora_rows(model, rows)

    return base, plant


def _embedding_edit(k: float, n_loops: int) -> Any:
    """An EditSite on ``block_in`` = norm(h + emb(t) + e) reading norm(h + emb_k(t) + e) with
    ``emb_k = mean + k·(emb − mean)`` over loops ``0 … n_loops−1`` (k = 1: no edit)."""
    from mythos_lens.interventions import EditSite

    def fn(value: torch.Tensor, event: SiteEvent) -> torch.Tensor | None:
        if k == 1.0:
            return None
        x = event.inputs[0]
        emb = loop_embedding(x.shape[-1], max(n_loops, event.loop + 1), like=x)
        mean = emb[:n_loops].mean(0)
        moved = (k - 1.0) * (emb[event.loop] - mean)  # emb_k(t) − emb(t)
        return event.model.recurrent.norm.forward(x + moved)  # .forward: not our own hook again

    return EditSite("block_in", fn)


def loop_embedding_plant(source: Any, n_loops: int) -> tuple[Any, Plant]:
    """``(base, plant)`` for the loop-index embedding: `base` reads the mean embedding at every
    loop ``< n_loops``; ``plant(base, k)`` reads ``mean + k·(emb_t − mean)`` (k = 1: `source`)."""
    n = check_int("n_loops", n_loops, 1)
    base = planted(source, [_embedding_edit(0.0, n)])

    def plant(model: Any, k: float) -> Any:
        if check_float("dose", k) == 0.0:
            return model
        return source if k == 1.0 else planted(source, [_embedding_edit(k, n)])

    return base, plant


def loop_identity_plant(source: Any, n_loops: int) -> tuple[Any, Plant]:
    """``(base, plant)`` for the whole loop identity, LoRA row and loop embedding together:
    `base` has neither differing across loops ``< n_loops``; dose k scales both differences."""
    n = check_int("n_loops", n_loops, 1)
    rows_base, rows_plant = lora_rows_plant(source, n)
    base = planted(rows_base, [_embedding_edit(0.0, n)])

    def plant(model: Any, k: float) -> Any:
        if check_float("dose", k) == 0.0:
            return model
        with_rows = rows_plant(rows_base, k)
        return with_rows if k == 1.0 else planted(with_rows, [_embedding_edit(k, n)])

    return base, plant


def transplant_lora(target: Any, donor: Any) -> Any:
    """A copy of OpenMythos `target` with `donor`'s trained LoRA (``down``, ``B`` and the scale
    table): the positive control plants rows through weights that carry a trained LoRA's potency,
    not through an untrained, frozen ``down``/``B``."""
    from mythos_lens.model import require_openmythos

    t, d = require_openmythos(target), require_openmythos(donor)
    a, b = t.recurrent.lora.state_dict(), d.recurrent.lora.state_dict()
    bad = [k for k in a if k not in b or a[k].shape != b[k].shape]
    if bad or set(a) != set(b):
        raise MythosLensError(f"LoRA weights that do not match ({', '.join(bad) or 'keys'})",
                              "two models of the same config")  # fmt: skip
    m = copy.deepcopy(t)
    m.recurrent.lora.load_state_dict(b)
    return m


def answer_logits(model: Any, ids: torch.Tensor, n_loops: int) -> torch.Tensor:
    """``[batch, vocab]`` logits at the last position, every loop run (float64)."""
    from mythos_lens.capture import run

    logits, _ = run(model, ids, n_loops=n_loops, run_all_loops=True)
    return logits[:, -1].double()


def output_effect(ref: torch.Tensor, other: torch.Tensor, answer: torch.Tensor) -> dict[str, float]:
    """Effect on the output of going from logits `ref` to `other` (``[batch, vocab]``): mean
    KL(ref ‖ other), and accuracy(other) − accuracy(ref) on `answer` ``[batch]``."""
    kl = F.kl_div(F.log_softmax(other.double(), -1), F.log_softmax(ref.double(), -1),
                  log_target=True, reduction="none").sum(-1).clamp_min(0)  # fmt: skip
    acc = lambda lg: float((lg.argmax(-1) == answer).double().mean())  # noqa: E731
    return {"kl": float(kl.mean()), "delta_acc": acc(other) - acc(ref)}


def dose_response(
    base: Any,
    plant: Plant,
    doses: Sequence[float],
    metrics: Callable[[Any], dict[str, float]],
    ids: torch.Tensor,
    answer: torch.Tensor,
    *,
    n_loops: int,
    progress: bool = False,
) -> pd.DataFrame:
    """Every metric and the output effect at each dose.

    Args:
        base, plant: the unmodified model and ``plant(base, dose) -> model`` (dose 0 is `base`).
        doses: the doses; 0 is added if missing (the reference of the output effect).
        metrics: ``metrics(model) -> {name: value}`` measured on each planted model.
        ids, answer: held-out inputs ``[batch, seq]`` and their answers ``[batch]`` (last position).

    Returns:
        A tidy table ``dose, metric, value``: the metrics, plus ``output_kl`` (mean KL at the
        answer from dose 0's output to this dose's) and ``output_delta_acc``.
    """
    ds = sorted({0.0, *(check_float("dose", d) for d in doses)})
    if any(not math.isfinite(d) for d in ds):
        raise MythosLensError("a non-finite dose", "finite doses")
    ref = answer_logits(base, ids, n_loops)
    rows = []
    for d in tqdm(ds, desc="doses", disable=not progress):
        m = plant(base, d)
        eff = output_effect(ref, answer_logits(m, ids, n_loops), answer)
        rows += [{"dose": d, "metric": "output_kl", "value": eff["kl"]},
                 {"dose": d, "metric": "output_delta_acc", "value": eff["delta_acc"]}]  # fmt: skip
        rows += [{"dose": d, "metric": k, "value": float(v)} for k, v in metrics(m).items()]
    return pd.DataFrame(rows, columns=["dose", "metric", "value"])
