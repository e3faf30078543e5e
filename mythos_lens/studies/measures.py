"""Per-model measurements of the LoRA study, at the answer position, over the loops that matter.

Everything one model contributes, from one capture of held-out task examples: which loops matter
(effective depth), similarity of successive loops (debiased CKA of Δh_t, h_t, block_out),
router overlap, loop identity controlled for the state's size, and — as interventions with
within-model nulls — how the model depends on its per-loop LoRA scales:

- ``rows_vs_permutations``: the loss with the learned row per loop minus the mean loss under
  random permutations of the rows (< 0: the learned assignment is better);
- ``rows_vs_equal_norm``: minus the mean loss under random rows of equal norms;
- ``mean_swap_vs_equal_size``: the loss increase from replacing every row by the mean row,
  minus the mean increase from moving every row by the same distance in a random direction
  (> 0: the specific per-loop differences matter beyond their size).

Each comes with its exact Monte Carlo p against its own null (``probes.stats.permutation_null``).
Without LoRA every one of them is exactly 0 (checked by the study).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from mythos_lens.adapters import adapter_for
from mythos_lens.capture import capture, run
from mythos_lens.interventions import AblateLora
from mythos_lens.model import loop_embedding
from mythos_lens.patching import lora_scale_sweep
from mythos_lens.studies.design import FUNCTIONAL_ENDPOINTS
from probes.effective_depth import effective_depth, loops_that_matter
from probes.linear import loop_channels, probe_loop_index, summarize
from probes.routing import random_overlap_baseline, router_overlap
from probes.similarity import linear_cka, loop_deltas
from probes.stats import equal_norm_random_rows, permutation_null, random_permutations


@dataclass
class ModelData:
    """What the across-seed statistics resample: per-example states at the answer position."""

    h: np.ndarray  # [loop, N, d] h_t
    h0: np.ndarray  # [N, d] the state before loop 0 (e)
    matters: list[int]  # loops that matter
    loops: pd.DataFrame = field(default_factory=pd.DataFrame)  # per loop: matters, exit accuracy
    values: dict[str, float] = field(default_factory=dict)  # every per-model measure
    nulls: dict[str, dict[str, Any]] = field(default_factory=dict)  # within-model null tests


def answer_loops(model: Any, tr: Any) -> tuple[pd.DataFrame, torch.Tensor]:
    """Which loops matter at the answer (last) position of trace `tr` (every loop run), and the
    exit logits ``[loop, batch, pos, vocab]`` (the output of a run stopped after each loop)."""
    exit_lg = adapter_for(model).exit_logits(model, tr)
    depth = effective_depth(exit_lg[:, :, -1:], tr.logits[:, -1:])
    return loops_that_matter(depth, tr.n_loops), exit_lg


def adjacent_pairs(matters: list[int]) -> list[tuple[int, int]]:
    """Adjacent loop pairs (t, t+1) whose two loops both matter."""
    m = set(matters)
    return [(t, t + 1) for t in sorted(m) if t + 1 in m]


def mean_adjacent_cka(x: np.ndarray, pairs: list[tuple[int, int]]) -> float:
    """Mean over `pairs` of debiased linear CKA between loops t and t+1 of ``x`` ``[loop, N,
    d]`` (NaN with no pair)."""
    vals = [linear_cka(x[a], x[b], "debiased") for a, b in pairs]
    return float(np.mean(vals)) if vals else math.nan


def cka_dh(data: ModelData, examples: np.ndarray | None = None) -> float:
    """The primary measure: mean over adjacent loops that matter of CKA(Δh_t, Δh_{t+1})."""
    h, h0 = data.h, data.h0
    if examples is not None:
        h, h0 = h[:, examples], h0[examples]
    dh = loop_deltas(torch.from_numpy(h)[:, :, None], torch.from_numpy(h0)[:, None])[:, :, 0]
    return mean_adjacent_cka(dh.numpy(), adjacent_pairs(data.matters))


def _loss(logits: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the answer, per copy: ``[copies]`` from ``[copies, B, V]``."""
    lp = F.log_softmax(logits.double(), -1)
    return -lp.gather(-1, answer.view(1, -1, 1).expand(lp.shape[0], -1, 1)).squeeze(-1).mean(1)


def _paired_losses(model: Any, ids: torch.Tensor, answer: torch.Tensor, scales: torch.Tensor,
                   n_loops: int) -> np.ndarray:  # fmt: skip
    """Per copy of ``scales`` ``[copies, loop, rank]``: answer loss with those rows minus the
    learned model's loss in a forward of the same shape (exactly 0 for the learned rows)."""
    patched, base = lora_scale_sweep(model, ids, scales.float(), n_loops=n_loops)
    return (_loss(patched, answer) - _loss(base, answer)).numpy()


def lora_nulls(
    model: Any, ids: torch.Tensor, answer: torch.Tensor, n_loops: int, n_null: int, seed: int
) -> dict[str, dict[str, Any]]:
    """The three within-model tests of the module docstring (losses at the last position).

    Every loss is taken relative to the learned model in a same-shaped forward, so an assignment
    equal to the learned one (e.g. any permutation of all-zero rows) has effect exactly 0 and
    p = 1."""
    table = model.recurrent.lora.scale.weight.detach().double()
    R = table.shape[0]
    rows = [min(t, R - 1) for t in range(n_loops)]
    out: dict[str, dict[str, Any]] = {}
    if R > 1:
        perms = torch.from_numpy(random_permutations(R, n_null, seed))
        d = _paired_losses(model, ids, answer, table[perms][:, rows], n_loops)
        out["rows_vs_permutations"] = _null(d)
    rand = torch.from_numpy(equal_norm_random_rows(table.numpy(), n_null, seed + 1))[:, rows]
    out["rows_vs_equal_norm"] = _null(_paired_losses(model, ids, answer, rand, n_loops))
    mean = table[rows].mean(0, keepdim=True).expand(len(rows), -1)
    swap = float(_paired_losses(model, ids, answer, mean.unsqueeze(0), n_loops)[0])
    g = torch.Generator().manual_seed(seed + 2)
    step = (table[rows] - mean).norm(dim=-1, keepdim=True)
    dirs = F.normalize(torch.randn(n_null, len(rows), table.shape[1], generator=g,
                                   dtype=torch.float64), dim=-1)  # fmt: skip
    moved = table[rows].unsqueeze(0) + dirs * step.unsqueeze(0)
    null_swap = _paired_losses(model, ids, answer, moved, n_loops)
    res = permutation_null(swap, null_swap, alternative="greater")
    res["effect"] = float(swap - null_swap.mean())
    out["mean_swap_vs_equal_size"] = res
    return out


def _null(d: np.ndarray) -> dict[str, Any]:
    """Learned rows against null assignments, from ``d`` = null loss − learned loss: effect =
    learned − mean null (< 0: learned better), p = share of nulls at least as good."""
    res = permutation_null(0.0, d, alternative="less")
    res["effect"] = float(-d.mean())
    return res


def measure_model(
    model: Any,
    batch: Any,
    *,
    n_loops: int,
    n_null: int = 100,
    null_examples: int = 256,
    probe_splits: int = 5,
    seed: int = 0,
) -> ModelData:
    """Every per-model measure of the study on held-out ``batch`` (answer at the last
    position); see the module docstring."""
    ids = batch.input_ids
    sites = ["resid_post", "e", "block_out", "block_in", "expert_ids", "act_weight", "lora_delta"]
    sites += [s for s in adapter_for(model).exit_sites if s not in sites]  # answer_loops reads them
    tr = capture(model, ids, n_loops=n_loops, run_all_loops=True, sites=sites)
    m, exit_lg = answer_loops(model, tr)
    matters = m[m["matters"]]["loop"].tolist()
    h = tr["resid_post"][:, :, -1].double().numpy()
    data = ModelData(h=h, h0=tr["e"][:, -1].double().numpy(), matters=matters)
    w = tr["act_weight"][:, :, -1].double()
    data.loops = m.assign(
        act_weight=w.mean(1).numpy(),
        exit_accuracy=(exit_lg[:, :, -1].argmax(-1) == batch.answer).double().mean(1).numpy(),
    )
    pairs = adjacent_pairs(matters)
    v = data.values
    v["n_matter"] = float(len(matters))
    v["act_weight_sum"] = float(tr["act_weight"][:, :, -1].double().sum(0).mean())
    lora = tr["lora_delta"][:, :, -1].double().norm(dim=-1)  # [loop, N]
    v["lora_delta_norm"] = float(lora[matters].mean()) if matters else math.nan
    v["cka_dh"] = cka_dh(data)
    v["cka_h"] = mean_adjacent_cka(h, pairs)
    v["cka_block_out"] = mean_adjacent_cka(tr["block_out"][:, :, -1].double().numpy(), pairs)
    ov = router_overlap(tr["expert_ids"][:, :, -1:], int(tr.meta["n_experts"]))
    k = tr["expert_ids"].shape[-1]
    chance = random_overlap_baseline(k, int(tr.meta["n_experts"]))["overlap_at_k"]
    adj = ov[[(a, b) in pairs for a, b in zip(ov.loop_a, ov.loop_b, strict=True)]]
    v["router_overlap_excess"] = (
        float(adj["overlap_at_k"].mean() - chance) if len(adj) else math.nan
    )
    types = ids[:, -1:]
    kw = {"n_splits": probe_splits, "seed": seed, "types": types}
    used = tr["resid_post"][matters][:, :, -1:] if len(matters) >= 2 else None
    if used is not None:
        acc = {f: _acc(probe_loop_index(used, features=f, **kw)) for f in ("direction", "log_norm")}
        v["loop_id_direction_minus_norm"] = acc["direction"] - acc["log_norm"]
        blk = tr["block_in"][matters][:, :, -1:]
        v["loop_id_block_in_no_emb"] = _acc(probe_loop_index(
            blk, features="direction", drop_channels=loop_channels(blk.shape[-1]), **kw))  # fmt: skip
    else:
        v["loop_id_direction_minus_norm"] = v["loop_id_block_in_no_emb"] = math.nan
    full = tr.logits[:, -1]
    ablated, _ = run(model, ids, n_loops=n_loops, visitors=[AblateLora(None)], run_all_loops=True)
    kl = F.kl_div(F.log_softmax(ablated[:, -1].double(), -1), F.log_softmax(full.double(), -1),
                  log_target=True, reduction="none").sum(-1).clamp_min(0)  # fmt: skip
    v["log10_kl_lora_removed"] = float(torch.log10(kl.mean().clamp_min(1e-12)))
    v["accuracy"] = float((full.argmax(-1) == batch.answer).double().mean())
    v["delta_acc_lora_removed"] = float((ablated[:, -1].argmax(-1) == batch.answer).double().mean()
                                        - v["accuracy"])  # fmt: skip
    if n_null == 0:  # representational measures only (the positive control)
        return data
    sub = slice(0, min(null_examples, ids.shape[0]))
    data.nulls = lora_nulls(model, ids[sub], batch.answer[sub], n_loops, n_null, seed)
    for name, res in data.nulls.items():
        v[name] = res["effect"]
    return data


# The functional loop-identity endpoints (design v2): what the answer loses when a loop's
# identity — its LoRA row, or its LoRA row and loop-index embedding together — is collapsed to
# the mean over the loops run, or permuted among them (mean over every non-identity permutation).
FUNCTIONAL = FUNCTIONAL_ENDPOINTS


def _mixings(n: int, n_permutations: int, seed: int) -> dict[str, torch.Tensor]:
    """Loop-identity rearrangements as mixing matrices ``[copies, loop, source loop]``: the new
    identity of loop t is ``Σ_s M[t, s] · identity_s``; `n_permutations` distinct non-identity
    permutations drawn with `seed` (all of them when there are fewer)."""
    import itertools

    perms = [p for p in itertools.permutations(range(n)) if list(p) != list(range(n))]
    if len(perms) > n_permutations:
        pick = np.random.default_rng([seed, 31]).choice(len(perms), n_permutations, replace=False)
        perms = [perms[i] for i in sorted(pick)]
    eye = torch.eye(n, dtype=torch.float64)
    return {"collapse": torch.full((1, n, n), 1.0 / n, dtype=torch.float64),
            "permute": torch.stack([eye[list(p)] for p in perms]) if perms
            else torch.empty(0, n, n, dtype=torch.float64)}  # fmt: skip


def loop_identity_effects(
    model: Any,
    ids: torch.Tensor,
    answer: torch.Tensor,
    n_loops: int,
    *,
    n_permutations: int = 8,
    seed: int = 0,
) -> dict[str, float]:
    """The :data:`FUNCTIONAL` endpoints at the last position of ``ids`` ``[batch, seq]``
    (answers ``[batch]``), each against the unmodified model in same-shaped forwards: mean KL
    (model ‖ rearranged) and Δ accuracy; for the collapses also ``p_collapse_*``, the example-level
    null p (:func:`probes.sensitivity.example_null_p`); the permutations are `n_permutations`
    random non-identity ones (seeded). Without LoRA the ``*_lora`` effects are
    exactly 0; a model whose loops share one identity gives exactly 0 for the collapses."""
    from probes.sensitivity import example_null_p

    table = model.recurrent.lora.scale.weight.detach().double()
    rows = table[[min(t, table.shape[0] - 1) for t in range(n_loops)]]  # [loop, rank]
    emb = loop_embedding(model.cfg.dim, n_loops).double()  # [loop, d]
    out: dict[str, float] = {}
    for kind, mix in _mixings(n_loops, n_permutations, seed).items():
        if not len(mix):
            continue
        for what in ("lora", "identity"):
            e = (mix @ emb).float() if what == "identity" else None
            patched, base = lora_scale_sweep(model, ids, (mix @ rows).float(), n_loops=n_loops,
                                             embeddings=e, chunk=8)  # fmt: skip
            lp, lb = F.log_softmax(patched.double(), -1), F.log_softmax(base.double(), -1)
            kl = (lb.exp() * (lb - lp)).sum(-1).clamp_min(0)  # [copies, batch]
            hit = lambda lg: (lg.argmax(-1) == answer).double().mean(-1)  # noqa: E731
            out[f"kl_{kind}_{what}"] = float(kl.mean())
            out[f"dacc_{kind}_{what}"] = float((hit(patched) - hit(base)).mean())
            if kind == "collapse":
                per_example = (-lp[0].gather(-1, answer.view(-1, 1)) +
                               lb[0].gather(-1, answer.view(-1, 1))).squeeze(-1)  # fmt: skip
                out[f"p_collapse_{what}"] = example_null_p(per_example.numpy(), seed=seed)
    return out


def _acc(folds: Any) -> float:
    s = summarize(folds).set_index("metric")
    return float(s.loc["task_acc", "mean"])
