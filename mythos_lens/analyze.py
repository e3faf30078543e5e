"""``mythos-lens analyze``: every instrument over many inputs, in bounded memory, to tidy tables and
one HTML report.

Flow (model-side collection here; all maths in ``probes``):

1. Inputs: held-out examples of the checkpoint's task (``task.generate``), or a dataset file
   written by ``mythos-lens tasks generate`` (labels included), or a text file of token ids (one
   sequence per line; no labels, so accuracy, hop probes and target ranks are skipped).
2. Batches of ``batch_size`` sequences are captured with every loop running. Per batch, only what
   the instruments need is kept:

   - streaming accumulators: exact debiased CKA (:class:`probes.similarity.StreamingCKA`) of
     ``h_t`` (``resid_post``), ``Δh_t`` (``h_t − h_{t−1}``, ``h_{−1} = e``) and ``block_out`` over
     every token; token-weighted sums of per-batch means (router overlap, lenses, convergence,
     LoRA-ablation effects, accuracy);
   - a capped buffer of the first ``probe_examples`` sequences at the query position (the last
     position, where the answer is read): ``resid_post``, ``block_in``, ``lora_delta``,
     ``block_out``, their expert ids at every position, labels. Probes, load and LoRA-size tables
     use this buffer, so memory does not grow with ``n_examples``.
3. Tables are written as parquet and CSV (:data:`TABLE_COLUMNS` documents every column), with
   ``run.json`` and ``report.html``, into a temporary directory renamed onto ``out`` at the end:
   an interrupted run leaves no partial output directory.

Every table has a ``checkpoint`` column, so tables of several checkpoints concatenate.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from open_mythos.main import OpenMythos
from tqdm.auto import tqdm

from mythos_lens.atomic import AtomicDir
from mythos_lens.capture import capture, parse_token_ids, run
from mythos_lens.checkpoint import load_checkpoint, load_task, read_config
from mythos_lens.errors import MythosLensError, check_int
from mythos_lens.interventions import AblateLora, SetLoraScale
from mythos_lens.model import check_n_loops
from mythos_lens.readouts import coda_lens, logit_lens, loop_step
from mythos_lens.tasks.base import TaskBatch
from mythos_lens.tasks.pointer import PointerTask
from mythos_lens.train import depth_accuracy
from probes.convergence import lens_kl_table, rho_A, spectral_radius, step_table
from probes.lens import apply_lens, lens_table
from probes.linear import hop_matrix, loop_channels, probe, probe_loop_index, summarize
from probes.lora import ablation_effects, lora_delta_ratio, lora_scale_cosine
from probes.routing import (
    expert_load,
    load_summary,
    overlap_matrix,
    random_overlap_baseline,
    router_overlap,
)
from probes.similarity import StreamingCKA, loop_deltas

CAPTURE_SITES = ["resid_post", "block_out", "block_in", "lora_delta", "expert_ids", "e"]
CKA_SITES = ("resid_post", "delta_h", "block_out")

# Every table written, with its columns (the README's Results section and the report cite these).
TABLE_COLUMNS: dict[str, dict[str, str]] = {
    "accuracy": {
        "checkpoint": "checkpoint name (directory name)",
        "hops": "hop count of the examples",
        "n": "examples",
        "accuracy": "argmax over the whole vocabulary at the query position == answer",
        "chance_uniform": "1 / n_entities",
        "chance_ignore_start": "best guess knowing f but not the start (task.chance)",
    },
    "depth": {
        "checkpoint": "checkpoint name",
        "hops": "hop count",
        "n_loops": "loop count at test time",
        "n": "examples in the cell",
        "accuracy": "held-out accuracy in the cell",
    },
    "lens": {
        "checkpoint": "checkpoint name",
        "lens": "logit (head(norm(h_t))) or coda (head(norm(coda(h_t))))",
        "loop": "loop step t",
        "metric": "target_rank, final_rank, control_rank (0 = top-1), target_top1, kl_final_lens "
        "(KL(final || lens), nats), entropy (nats) — means at the query position",
        "value": "mean over examples",
        "n": "examples",
    },
    "cka": {
        "checkpoint": "checkpoint name",
        "site": "resid_post (h_t), delta_h (h_t - h_{t-1}, h_{-1} = e) or block_out",
        "loop_a": "loop step",
        "loop_b": "loop step",
        "metric": "cka_debiased (unbiased-HSIC linear CKA over every token, exact, streamed)",
        "value": "CKA",
        "n_tokens": "tokens (sequences x positions)",
    },
    "router": {
        "checkpoint": "checkpoint name",
        "loop_a": "loop step",
        "loop_b": "loop step",
        "metric": "overlap_at_k (|S_a & S_b| / k) or jaccard, routed experts only",
        "value": "mean over tokens (every position)",
        "random_baseline": "same metric for two independent uniform k-subsets (k/E for overlap)",
        "n_tokens": "tokens",
    },
    "load": {
        "checkpoint": "checkpoint name",
        "loop": "loop step",
        "metric": "load_entropy, max_entropy, normalised_entropy, dead_experts, max_over_mean_load",
        "value": "over every position of the probe buffer",
    },
    "expert_load": {
        "checkpoint": "checkpoint name",
        "loop": "loop step",
        "expert": "routed expert",
        "count": "routing slots (tokens) given to it, every position of the probe buffer",
        "fraction": "share of the loop's routing slots",
        "dead": "never chosen at this loop",
    },
    "convergence": {
        "checkpoint": "checkpoint name",
        "loop": "loop step (-1: a model-wide quantity such as rho_A)",
        "metric": "rel_step ||h_t - h_{t-1}|| / ||h_{t-1}||, cos_prev_step, kl_prev_coda "
        "(KL(p_{t-1} || p_t), coda lens), spectral_radius / spectral_norm of the loop map's "
        "Jacobian at h_{t-1}, rho_A",
        "value": "mean over examples at the query position (spectral: over a few sequences)",
    },
    "probes": {
        "checkpoint": "checkpoint name",
        "probe": "loop_index (which loop is this state from?) or hop_<j> (entity after hop j)",
        "site": "resid_post or block_in (block_in = norm(h + loop embedding + e))",
        "channels": "all, or no_loop_emb (first d/8 channels, the loop-index sinusoid, dropped)",
        "loop": "loop step (-1: pooled over loops, for loop_index)",
        "hop": "j of hop_<j> (-1 for loop_index)",
        "metric": "task_acc, control_acc (Hewitt-Liang control task, type = input token), "
        "majority_acc, selectivity = task - control, not_converged (count, all folds), "
        "type_only_acc (hop probes: the same probe on a one-hot of the input token alone — what "
        "memorising the start key gives; the control task instead measures probe capacity: the "
        "start key is linearly decodable, so control_acc is near 1 and selectivity < 0)",
        "mean": "mean over folds (not_converged: total)",
        "std": "std over folds (ddof 1)",
        "n_folds": "sequence-grouped CV folds",
        "n_examples": "sequences in the probe buffer",
    },
    "lora": {
        "checkpoint": "checkpoint name",
        "loop": "loop step",
        "metric": "scale_norm (||lora.scale[row]||), norm_ratio (||delta|| / ||block_out|| at the "
        "query position), mean_token_ratio",
        "value": "value",
    },
    "lora_cosine": {
        "checkpoint": "checkpoint name",
        "loop_a": "LoRA scale row",
        "loop_b": "LoRA scale row",
        "metric": "cosine",
        "value": "cosine of the scale vectors (NaN where a vector is zero: LoRA off)",
        "note": "why a value is NaN",
    },
    "ablation": {
        "checkpoint": "checkpoint name",
        "intervention": "ablate_lora (delta zeroed at ablated_loop), ablate_lora_all (every "
        "loop), mean_scale_all (each loop's LoRA scale replaced by the mean row)",
        "ablated_loop": "loop step (-1 for interventions at every loop)",
        "metric": "kl (KL(base || intervened), nats), top1_changed, acc_baseline, acc_ablated, "
        "delta_acc (intervened - base) at the query position",
        "value": "mean over examples",
        "n": "examples",
    },
}


@dataclass
class AnalyzeConfig:
    """Knobs of one analysis run (stored in ``run.json``)."""

    n_examples: int = 512
    batch_size: int = 64
    n_loops: int | None = None  # default: the model's max_loop_iters (every LoRA row in play)
    hops: list[int] | None = None  # default: the task's training hop counts 1 … K
    seed: int = 0
    position: int = -1  # query position (where the answer is read)
    probe_examples: int = 768  # cap on sequences kept for probes / load / LoRA size
    probe_splits: int = 5
    depth_loops: list[int] | None = None  # accuracy vs n_loops; default 1 … 2·n_loops
    depth_hops: list[int] | None = None  # default 1 … task.max_hops
    depth_examples: int = 128  # per (hops, n_loops) cell
    spectral_examples: int = 4
    spectral_iters: int = 30
    blas_threads: int = 1  # BLAS threads for the probes' fits (small problems: 1 is fastest)
    progress: bool = True

    def __post_init__(self) -> None:
        """Every field is checked here, so a bad value fails before any work (CLI and library)."""
        for name, lo in (("n_examples", 1), ("batch_size", 1), ("seed", 0),
                         ("probe_examples", 0), ("probe_splits", 2), ("depth_examples", 1),
                         ("spectral_examples", 1), ("spectral_iters", 2),
                         ("blas_threads", 1)):  # fmt: skip
            setattr(self, name, check_int(name, getattr(self, name), lo))
        self.position = check_int("position", self.position)
        if self.n_loops is not None:
            self.n_loops = check_int("n_loops", self.n_loops, 2)  # loops are compared: >= 2
        for name in ("hops", "depth_loops", "depth_hops"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__") or not value:
                raise MythosLensError(f"{name}={value!r}", "None or a non-empty list of integers")
            setattr(self, name, [check_int(f"{name} entry", v, 1) for v in value])
        if not isinstance(self.progress, bool):
            raise MythosLensError(f"progress={self.progress!r}", "true or false")


@dataclass
class Inputs:
    """What an analysis runs on: token ids ``[N, T]`` and (optional) task labels."""

    input_ids: torch.Tensor
    batch: TaskBatch | None = None
    task: PointerTask | None = None
    source: str = ""


def _wmean() -> list[float]:
    return [0.0, 0.0]


@dataclass
class _Sums:
    """Weighted sums ``key -> [Σ w·v, Σ w]`` of per-batch means (NaN values skipped)."""

    acc: dict[tuple, list[float]] = field(default_factory=lambda: defaultdict(_wmean))

    def add(self, key: tuple, value: float, weight: float) -> None:
        if value is None or not np.isfinite(value):
            return
        s = self.acc[key]
        s[0] += float(value) * weight
        s[1] += weight

    def add_table(self, df: pd.DataFrame, keys: list[str], value: str, weight: float) -> None:
        """Add the per-group mean of ``value`` (NaN ignored), weighted by ``weight`` × rows."""
        g = df.groupby(keys, sort=True)[value]
        means, counts = g.mean(), g.count()
        for k, v in means.items():
            n = counts[k]
            if n:
                self.add(k if isinstance(k, tuple) else (k,), float(v), weight * n)

    def frame(self, names: list[str]) -> pd.DataFrame:
        rows = [(*k, s[0] / s[1], s[1]) for k, s in sorted(self.acc.items()) if s[1] > 0]
        return pd.DataFrame(rows, columns=[*names, "value", "n"])


class Collector:
    """Streams batches of one model's captures into the instruments' inputs (bounded memory).

    Args:
        model: an OpenMythos (eval mode).
        n_loops: loop steps (every one runs: ``run_all_loops=True``).
        position: the query position (negative counts from the end).
        probe_examples: sequences kept at the query position for probes.
        seed: base seed for lens control tokens.
    """

    def __init__(
        self,
        model: OpenMythos,
        n_loops: int,
        position: int,
        probe_examples: int,
        seed: int,
        spectral_examples: int = 4,
        spectral_iters: int = 30,
    ) -> None:
        self.model = model
        self.spectral_examples = spectral_examples
        self.spectral_iters = spectral_iters
        self.n_loops = n_loops
        self.position = position
        self.probe_examples = probe_examples
        self.seed = seed
        cfg = model.cfg
        self.E, self.k, self.d = cfg.n_experts, cfg.n_experts_per_tok, cfg.dim
        self.cka = {s: StreamingCKA(n_loops, self.d, "debiased") for s in CKA_SITES}
        self.router = _Sums()
        self.lens = _Sums()
        self.conv = _Sums()
        self.ablation = _Sums()
        self.accuracy = _Sums()
        self.buffer: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.kept = 0
        self.n_seen = 0
        self.n_tokens = 0
        self.spectral: pd.DataFrame | None = None
        self._readouts = {"logit": logit_lens(model), "coda": coda_lens(model)}

    # -- per batch ----------------------------------------------------------------------------
    def update(
        self, ids: torch.Tensor, batch: TaskBatch | None, task: PointerTask | None, index: int
    ) -> None:
        """Add one batch ``ids [B, T]`` (with its labels ``batch`` when known)."""
        tr = capture(self.model, ids, n_loops=self.n_loops, sites=CAPTURE_SITES, run_all_loops=True)
        if tr.n_loops != self.n_loops:
            raise MythosLensError(f"{tr.n_loops} loops ran", f"{self.n_loops}")
        B, T = ids.shape
        q = self.position % T
        h, e = tr["resid_post"], tr.stream["e"]
        self.cka["resid_post"].update(h)
        self.cka["delta_h"].update(loop_deltas(h, e))
        self.cka["block_out"].update(tr["block_out"])
        self.n_seen += B
        self.n_tokens += B * T

        ov = router_overlap(tr["expert_ids"], self.E)
        for metric in ("overlap_at_k", "jaccard"):
            self.router.add_table(ov.assign(metric=metric), ["loop_a", "loop_b", "metric"],
                                  metric, 1.0)  # fmt: skip

        target = batch.answer.view(B, 1) if batch is not None else None
        final = tr.logits[:, q : q + 1]
        hq = h[:, :, q : q + 1]
        lens_logits = {
            "logit": apply_lens(hq, self._readouts["logit"]),
            "coda": apply_lens(h, self._readouts["coda"])[:, :, q : q + 1],
        }
        for name, lg in lens_logits.items():
            tab = lens_table(lg, final, target_ids=target, control_seed=self.seed * 7919 + index,
                             lens=name)  # fmt: skip
            metrics = ["final_rank", "control_rank", "kl_final_lens", "entropy"]
            if target is not None:
                tab["target_top1"] = (tab["target_rank"] == 0).astype(float)
                metrics += ["target_rank", "target_top1"]
            for m in metrics:
                self.lens.add_table(tab.assign(metric=m), ["lens", "loop", "metric"], m, 1.0)
        steps = step_table(hq, e[:, q : q + 1])
        self.conv.add_table(steps, ["loop", "metric"], "value", 1.0)
        kl = lens_kl_table(lens_logits["coda"]).assign(metric="kl_prev_coda")
        self.conv.add_table(kl, ["loop", "metric"], "value", 1.0)

        self._ablate(ids, final, target, q, B)
        if target is not None:
            ok = (final[:, 0].argmax(-1) == batch.answer).double()
            for hop in batch.hops.unique().tolist():
                sel = batch.hops == hop
                self.accuracy.add(("accuracy", int(hop)), float(ok[sel].mean()), float(sel.sum()))
            for hop, ch in task.chance(batch).items():
                w = float((batch.hops == hop).sum())
                for k, v in ch.items():
                    self.accuracy.add((f"chance_{k}", int(hop)), float(v), w)
        if self.spectral is None:
            self.spectral = self._spectral(tr, ids)
        self._keep(tr, ids, batch, q)

    def _ablate(self, ids, final, target, q, B) -> None:
        runs: dict[str, dict[int, torch.Tensor]] = {"ablate_lora": {}}
        for t in range(self.n_loops):
            lg, _ = run(self.model, ids, n_loops=self.n_loops, visitors=[AblateLora([t])],
                        run_all_loops=True)  # fmt: skip
            runs["ablate_lora"][t] = lg[:, q : q + 1]
        for name, visitor in (("ablate_lora_all", AblateLora(None)),
                              ("mean_scale_all", SetLoraScale(None, "mean"))):  # fmt: skip
            lg, _ = run(self.model, ids, n_loops=self.n_loops, visitors=[visitor],
                        run_all_loops=True)  # fmt: skip
            runs[name] = {0: lg[:, q : q + 1]}
        for name, logits in runs.items():
            tab = ablation_effects(final, logits, target_ids=target)
            for _, r in tab.iterrows():
                loop = int(r["ablated_loop"]) if name == "ablate_lora" else -1
                self.ablation.add((name, loop, r["metric"]), float(r["value"]), float(B))

    def _spectral(self, tr, ids) -> pd.DataFrame:
        """ρ and ‖J‖ of the loop map at each loop, on the first few sequences of the first batch."""
        m = min(self.spectral_examples, ids.shape[0])
        e = tr.stream["e"][:m]
        h = tr["resid_post"][:, :m]
        rows = []
        for t in range(self.n_loops):
            prev = e if t == 0 else h[t - 1]
            with torch.enable_grad():
                sr = spectral_radius(loop_step(self.model, e, t), prev,
                                     n_iter=self.spectral_iters, seed=self.seed)  # fmt: skip
            rows += [{"loop": t, "metric": k, "value": sr[k]}
                     for k in ("spectral_radius", "spectral_norm")]  # fmt: skip
        return pd.DataFrame(rows)

    def _keep(self, tr, ids, batch, q) -> None:
        room = self.probe_examples - self.kept
        if room <= 0:
            return
        take = min(room, ids.shape[0])
        for site in ("resid_post", "block_in", "lora_delta", "block_out"):
            self.buffer[site].append(tr[site][:, :take, q : q + 1].clone())
        self.buffer["expert_ids"].append(tr["expert_ids"][:, :take].clone())
        self.buffer["types"].append(ids[:take, q : q + 1].clone())
        if batch is not None:
            self.buffer["hop_entities"].append(batch.hop_entities[:take].clone())
            self.buffer["hops"].append(batch.hops[:take].clone())
        self.kept += take

    def retained_bytes(self) -> int:
        """Bytes of every tensor kept across batches (buffer + CKA accumulators)."""
        n = sum(t.numel() * t.element_size() for v in self.buffer.values() for t in v)
        for acc in self.cka.values():
            n += sum(x.numel() * x.element_size() for x in (acc._G, acc._S, acc._ZA))
        return n


def _cat(buf: dict[str, list[torch.Tensor]], key: str, dim: int) -> torch.Tensor:
    return torch.cat(buf[key], dim=dim)


def _probe_tables(col: Collector, cfg: AnalyzeConfig, name: str) -> pd.DataFrame:
    """Loop-index probes (with / without the loop-embedding channels) and hop probes."""
    buf = col.buffer
    n = col.kept
    if n < cfg.probe_splits:
        return pd.DataFrame(columns=list(TABLE_COLUMNS["probes"]))
    types = _cat(buf, "types", 0)  # [N, 1]
    frames = []
    kw = dict(n_splits=cfg.probe_splits, seed=cfg.seed)
    drop = loop_channels(col.d)
    for site in ("resid_post", "block_in"):
        acts = _cat(buf, site, 1)  # [L, N, 1, d]
        for channels, dc in (("all", None), ("no_loop_emb", drop)):
            s = summarize(probe_loop_index(acts, types=types, drop_channels=dc, **kw))
            frames.append(s.assign(probe="loop_index", site=site, channels=channels, loop=-1,
                                   hop=-1))  # fmt: skip
    if "hop_entities" in buf:
        he = _cat(buf, "hop_entities", 0)
        hops = _cat(buf, "hops", 0)
        labels = {}
        for j in range(1, int(hops.max()) + 1):
            lab = he[:, j - 1].clone()
            lab[hops < j] = -1
            if int((lab >= 0).sum()) >= 2 * cfg.probe_splits:
                labels[j] = lab.view(n, 1)
        acts = _cat(buf, "resid_post", 1)
        if labels:
            hm = hop_matrix(acts, labels, types=types, **kw)
            # What memorising the input token type alone gives: the same probe on a one-hot of
            # the type (the start key). The control task above measures probe capacity instead.
            onehot = torch.nn.functional.one_hot(types.view(-1)).float()
            extra = []
            for j, lab in labels.items():
                s = summarize(probe(onehot, lab.view(-1), torch.arange(n), **kw))
                v = s[s.metric == "task_acc"].iloc[0]
                extra += [{"loop": t, "hop": j, "metric": "type_only_acc", "mean": v["mean"],
                           "std": v["std"], "n_folds": v["n_folds"]}
                          for t in sorted(hm.loop.unique())]  # fmt: skip
            hm = pd.concat([hm, pd.DataFrame(extra)], ignore_index=True)
            hm["probe"] = "hop_" + hm["hop"].astype(str)
            frames.append(hm.assign(site="resid_post", channels="all"))
    out = pd.concat(frames, ignore_index=True)
    out["checkpoint"] = name
    out["n_examples"] = n
    if "total" in out.columns:
        conv = out["metric"] == "not_converged"
        out.loc[conv, "mean"] = out.loc[conv, "total"]
    cols = ["checkpoint", "probe", "site", "channels", "loop", "hop", "metric", "mean", "std",
            "n_folds", "n_examples"]  # fmt: skip
    return out[cols].sort_values(cols[:7]).reset_index(drop=True)


def _finish(col: Collector, model: OpenMythos, cfg: AnalyzeConfig, name: str) -> dict:
    tables: dict[str, pd.DataFrame] = {}
    frames = [acc.table(site) for site, acc in col.cka.items()]
    cka = pd.concat(frames, ignore_index=True)
    cka.insert(0, "checkpoint", name)
    cka["n_tokens"] = col.n_tokens
    tables["cka"] = cka

    ro = col.router.frame(["loop_a", "loop_b", "metric"])
    mats = []
    for metric in ("overlap_at_k", "jaccard"):
        sub = ro[ro.metric == metric].rename(columns={"value": metric})
        mats.append(overlap_matrix(sub, metric))
    ro = pd.concat(mats, ignore_index=True)
    base = random_overlap_baseline(col.k, col.E)
    ro["random_baseline"] = ro["metric"].map(base)
    ro["n_tokens"] = col.n_tokens
    ro.insert(0, "checkpoint", name)
    tables["router"] = ro

    lens = col.lens.frame(["lens", "loop", "metric"])
    lens.insert(0, "checkpoint", name)
    tables["lens"] = lens[list(TABLE_COLUMNS["lens"])]

    conv = col.conv.frame(["loop", "metric"]).drop(columns="n")
    params = {"injection_A": model.recurrent.injection.get_A().detach()}
    extra = [pd.DataFrame([{"loop": -1, "metric": "rho_A", "value": rho_A(params["injection_A"])}])]
    if col.spectral is not None:
        extra.append(col.spectral)
    conv = pd.concat([conv, *extra], ignore_index=True)
    conv.insert(0, "checkpoint", name)
    tables["convergence"] = conv

    ab = col.ablation.frame(["intervention", "ablated_loop", "metric"])
    ab.insert(0, "checkpoint", name)
    tables["ablation"] = ab

    acc = col.accuracy.frame(["what", "hops"])
    if len(acc):
        wide = acc.pivot(index="hops", columns="what", values="value").reset_index()
        counts = acc[acc.what == "accuracy"].set_index("hops")["n"]
        wide["n"] = wide["hops"].map(counts).astype(int)
        wide.insert(0, "checkpoint", name)
        tables["accuracy"] = wide[list(TABLE_COLUMNS["accuracy"])]
    else:
        tables["accuracy"] = pd.DataFrame(columns=list(TABLE_COLUMNS["accuracy"]))

    ids_all = _cat(col.buffer, "expert_ids", 1)
    load = load_summary(ids_all, col.E)
    load.insert(0, "checkpoint", name)
    tables["load"] = load
    tables["expert_load"] = expert_load(ids_all, col.E).assign(checkpoint=name)

    scale = model.recurrent.lora.scale.weight.detach().cpu().float()
    rows_used = [min(t, model.cfg.max_loop_iters - 1) for t in range(col.n_loops)]
    lora = lora_delta_ratio(_cat(col.buffer, "lora_delta", 1), _cat(col.buffer, "block_out", 1))
    norms = pd.DataFrame(
        {
            "loop": range(col.n_loops),
            "metric": "scale_norm",
            "value": [float(scale[r].norm()) for r in rows_used],
        }  # fmt: skip
    )
    lora = pd.concat([norms, lora], ignore_index=True)
    lora.insert(0, "checkpoint", name)
    tables["lora"] = lora
    cos = lora_scale_cosine(scale)
    cos.insert(0, "checkpoint", name)
    tables["lora_cosine"] = cos

    tables["probes"] = _probe_tables(col, cfg, name)
    return {k: (v[list(TABLE_COLUMNS[k])] if k in TABLE_COLUMNS else v) for k, v in tables.items()}


def depth_table(
    model: OpenMythos, task: PointerTask, cfg: AnalyzeConfig, n_loops: int, name: str
) -> pd.DataFrame:
    """Held-out accuracy per (hop count, loop count): ``cfg.depth_examples`` examples per hop
    count in ``cfg.depth_hops`` (default 1 … task.max_hops), loop counts ``cfg.depth_loops``
    (default 1 … 2·n_loops). Columns: ``TABLE_COLUMNS["depth"]``."""
    loops = cfg.depth_loops or list(range(1, 2 * n_loops + 1))
    hops = cfg.depth_hops or list(range(1, task.max_hops + 1))
    df = depth_accuracy(model, task, hops, loops, cfg.depth_examples, cfg.seed + 2,
                        desc=f"{name}: accuracy vs loops", progress=cfg.progress)  # fmt: skip
    df = df.assign(checkpoint=name, n=cfg.depth_examples)
    return df[list(TABLE_COLUMNS["depth"])]


def task_inputs(task: PointerTask, n: int, seed: int, hops: Sequence[int] | None) -> Inputs:
    """``n`` held-out examples of ``task`` (hop counts uniform over ``hops``; default 1 … K)."""
    batch = task.generate(n, "heldout", seed=seed, hops=list(hops) if hops else None)
    return Inputs(batch.input_ids, batch, task, f"task {task.name} held-out, seed {seed}")


def read_inputs(path: str | os.PathLike) -> Inputs:
    """Inputs from a dataset written by ``mythos-lens tasks generate`` (``.safetensors``, with
    labels) or a text file of whitespace-separated token ids, one sequence per line (no labels;
    every line must have the same length)."""
    p = Path(path)
    if not p.is_file():
        raise MythosLensError(f"{p} does not exist", "a dataset .safetensors or a text file of ids")
    if p.suffix == ".safetensors":
        from mythos_lens.tasks.io import load_dataset

        batch, task, _ = load_dataset(p)
        return Inputs(batch.input_ids, batch, task, f"dataset {p.name}")
    try:
        rows = parse_token_ids(p.read_text())
    except MythosLensError as exc:
        raise MythosLensError(f"{p}: {exc.what}", exc.expected) from None
    return Inputs(torch.tensor(rows, dtype=torch.long), None, None, f"ids file {p.name}")


def analyze_model(
    model: OpenMythos,
    inputs: Inputs,
    cfg: AnalyzeConfig,
    name: str = "model",
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, pd.DataFrame]:
    """Run every instrument on ``model`` over ``inputs``; returns ``{table name: DataFrame}``
    (columns: :data:`TABLE_COLUMNS`). ``on_batch(i)`` is called after each batch (progress,
    tests)."""
    n_loops = check_n_loops(cfg.n_loops if cfg.n_loops is not None else model.cfg.max_loop_iters,
                            model)  # fmt: skip
    if n_loops < 2:
        raise MythosLensError(f"n_loops={n_loops}", ">= 2 loops to compare loops")
    model.eval()
    torch.manual_seed(cfg.seed)
    ids = inputs.input_ids
    col = Collector(model, n_loops, cfg.position, cfg.probe_examples, cfg.seed,
                    cfg.spectral_examples, cfg.spectral_iters)  # fmt: skip
    starts = list(range(0, len(ids), cfg.batch_size))
    bar = tqdm(starts, desc=f"{name}: batches", leave=False, disable=not cfg.progress)
    for i, s in enumerate(bar):
        sl = slice(s, s + cfg.batch_size)
        batch = None
        if inputs.batch is not None:
            batch = TaskBatch(**{k: v[sl] for k, v in inputs.batch.tensors().items()})
        with torch.no_grad():
            col.update(ids[sl], batch, inputs.task, i)
        if on_batch is not None:
            on_batch(i)
    from threadpoolctl import threadpool_limits

    # scipy's L-BFGS on small problems is ~6x slower with multi-threaded BLAS on busy cores.
    with threadpool_limits(limits=cfg.blas_threads, user_api="blas"):
        tables = _finish(col, model, cfg, name)
    if inputs.task is not None:
        tables["depth"] = depth_table(model, inputs.task, cfg, n_loops, name)
    else:
        tables["depth"] = pd.DataFrame(columns=list(TABLE_COLUMNS["depth"]))
    tables["_meta"] = pd.DataFrame(
        [
            {
                "checkpoint": name,
                "n_loops": n_loops,
                "n_examples": col.n_seen,
                "n_tokens": col.n_tokens,
                "probe_examples": col.kept,
                "retained_bytes": col.retained_bytes(),
            }
        ]  # fmt: skip
    )
    return tables


def concat_tables(per_model: Sequence[dict[str, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    """Concatenate the tables of several models (same names)."""
    names = list(dict.fromkeys(k for t in per_model for k in t))
    out = {}
    for k in names:
        frames = [t[k] for t in per_model if k in t and len(t[k])]
        out[k] = pd.concat(frames, ignore_index=True) if frames else per_model[0][k]
    return out


# ------------------------------------------------------------------------------- output dir


def write_tables(tables: dict[str, pd.DataFrame], directory: Path) -> None:
    """Each table as ``<name>.parquet`` and ``<name>.csv`` (tables starting with _ are skipped)."""
    for name, df in tables.items():
        if name.startswith("_"):
            continue
        df = df.reset_index(drop=True)
        df.to_parquet(directory / f"{name}.parquet", index=False)
        df.to_csv(directory / f"{name}.csv", index=False)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB, from ``getrusage``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def analyze(
    checkpoints: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    cfg: AnalyzeConfig | None = None,
    *,
    ids_file: str | os.PathLike | None = None,
    overwrite: bool = False,
    plotlyjs: str = "inline",
    on_batch: Callable[[int], None] | None = None,
) -> Path:
    """Analyze each checkpoint directory; write tables, ``run.json`` and ``report.html`` to
    ``out`` atomically. Returns ``out``."""
    cfg = cfg or AnalyzeConfig()
    if not checkpoints:
        raise MythosLensError("no checkpoint given", "one or more checkpoint directories")
    t0 = time.perf_counter()
    per_model = []
    names = []
    atomic = AtomicDir(out, overwrite)
    with atomic as tmp:
        for ck in checkpoints:
            ck = Path(ck)
            model = load_checkpoint(ck)
            name = ck.name
            if name in names:
                raise MythosLensError(f"checkpoint name {name!r} given twice", "distinct names")
            names.append(name)
            if ids_file is not None:
                inputs = read_inputs(ids_file)
            else:
                task = load_task(ck)
                if task is None:
                    raise MythosLensError(f"{ck} records no task", "--ids FILE with token ids")
                inputs = task_inputs(task, cfg.n_examples, cfg.seed, cfg.hops)
            per_model.append(analyze_model(model, inputs, cfg, name, on_batch=on_batch))
        tables = concat_tables(per_model)
        write_tables(tables, tmp)
        meta = {
            "checkpoints": [str(c) for c in checkpoints],
            "train_configs": {
                n: read_config(c).get("metadata", {}).get("train_config")
                for n, c in zip(names, checkpoints, strict=True)
            },
            "config": dataclasses.asdict(cfg),
            "inputs": str(ids_file) if ids_file else "task held-out split",
            "models": tables["_meta"].to_dict(orient="records"),
            "columns": {k: v for k, v in TABLE_COLUMNS.items() if k in tables},
            "seconds": round(time.perf_counter() - t0, 1),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "torch_threads": torch.get_num_threads(),
        }
        atomic.write_run(meta)
        html = build_report(tables, meta, title="mythos-lens analysis", plotlyjs=plotlyjs)
        (tmp / "report.html").write_text(html, encoding="utf-8")
    return Path(out)


# ------------------------------------------------------------------------------------- CLI


def config_from_args(args: argparse.Namespace) -> AnalyzeConfig:
    """AnalyzeConfig from the shared ``analyze`` / ``study`` options."""
    from mythos_lens.cli import parse_ints  # cli imports this module

    return AnalyzeConfig(
        n_examples=args.n, batch_size=args.batch_size, n_loops=args.loops,
        hops=parse_ints(args.hops), seed=args.seed, probe_examples=args.probe_examples,
        depth_loops=parse_ints(args.depth_loops), depth_examples=args.depth_examples,
        progress=not args.no_progress,
    )  # fmt: skip


def add_analysis_options(p: argparse.ArgumentParser, n_default: int = 512) -> None:
    """Options shared by ``analyze`` and ``study``."""
    p.add_argument("-n", type=int, default=n_default, help="held-out examples per checkpoint")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--loops", type=int, default=None, help="loops (default max_loop_iters)")
    p.add_argument("--hops", default=None, help="hop counts of the examples, e.g. 1-3")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--probe-examples", type=int, default=768,
                   help="sequences kept for probes (memory cap)")  # fmt: skip
    p.add_argument("--depth-loops", default=None, help="loop counts of the depth table, e.g. 1-12")
    p.add_argument("--depth-examples", type=int, default=128, help="examples per depth cell")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output dir")
    p.add_argument("--plotlyjs", choices=["inline", "cdn"], default="inline",
                   help="inline: report opens offline (+4.6 MB); cdn: small file")  # fmt: skip
    p.add_argument("--no-progress", action="store_true")


def _analyze(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads or 1)  # small models on shared cores: 1 is fastest
    cfg = config_from_args(args)
    t0 = time.perf_counter()
    out = analyze(args.checkpoints, args.out, cfg, ids_file=args.ids, overwrite=args.overwrite,
                  plotlyjs=args.plotlyjs)  # fmt: skip
    meta = json.loads((out / "run.json").read_text())
    print(f"wrote {out} ({time.perf_counter() - t0:.1f} s, peak RSS {meta['peak_rss_mb']} MB)")
    print(f"report: {out / 'report.html'}")
    return 0


def add_analyze_command(sub: argparse._SubParsersAction) -> None:
    """``mythos-lens analyze CHECKPOINT... --out DIR``."""
    p = sub.add_parser("analyze", help="run every instrument over many inputs: tables + report")
    p.add_argument("checkpoints", nargs="+", help="checkpoint directories")
    p.add_argument("--out", required=True, help="output directory (written atomically)")
    p.add_argument("--ids", default=None,
                   help="inputs: dataset .safetensors or text file of token ids (default: task)")  # fmt: skip
    add_analysis_options(p)
    p.set_defaults(handler=_analyze)


# ---------------------------------------------------------------------------------- report


def _adjacent(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Rows of a loop × loop table with ``loop_b == loop_a + 1`` (t, t+1 pairs)."""
    return df[df["loop_b"] == df["loop_a"] + 1].sort_values([*keys, "loop_a"])


def _fmt(x: float, nd: int = 3) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{nd}f}"


def summarize_checkpoint(tables: dict[str, pd.DataFrame], name: str) -> list[str]:
    """Plain-language statements about one checkpoint, each computed from the tables (never
    hard-coded): accuracy vs chance, similarity of adjacent loops vs baselines, loop-identity and
    hop probes vs their controls, LoRA size and ablation effects, depth behaviour."""
    out: list[str] = []

    def sub(t: str) -> pd.DataFrame:
        df = tables.get(t)
        return df[df["checkpoint"] == name] if df is not None and len(df) else pd.DataFrame()

    acc = sub("accuracy")
    if len(acc):
        parts = [f"{int(r.hops)} hop(s) {_fmt(r.accuracy)} (chance {_fmt(r.chance_uniform)}, "
                 f"ignoring the start {_fmt(r.chance_ignore_start)}; n={int(r.n)})"
                 for r in acc.itertuples()]  # fmt: skip
        out.append("Held-out accuracy: " + "; ".join(parts) + ".")
    cka = sub("cka")
    if len(cka):
        adj = _adjacent(cka, ["site"]).groupby("site")["value"].mean()
        out.append(
            "Mean debiased CKA between adjacent loops (t, t+1): "
            + ", ".join(f"{s} {_fmt(adj.get(s, np.nan))}" for s in CKA_SITES)
            + ". h_t carries B·e and the decayed past at every loop, so its similarity is inflated;"
            " Δh_t and block_out say whether successive loop steps *do* similar things."
        )
    ro = sub("router")
    if len(ro):
        a = _adjacent(ro[ro.metric == "overlap_at_k"], [])
        if len(a):
            out.append(
                f"Router overlap@k between adjacent loops: mean {_fmt(a.value.mean())} "
                f"(range {_fmt(a.value.min())}–{_fmt(a.value.max())}) vs random "
                f"{_fmt(a.random_baseline.iloc[0])} (k/E): "
                + (
                    "adjacent loops re-use experts more than chance."
                    if a.value.min() > a.random_baseline.iloc[0]
                    else "some adjacent loops route no more alike than chance."
                )  # fmt: skip
            )
    pr = sub("probes")
    if len(pr):
        li = pr[pr.probe == "loop_index"].pivot_table(
            index=["site", "channels"], columns="metric", values="mean"
        )
        for (site, ch), r in li.iterrows():
            out.append(
                "Loop-identity probe (pooled over loops; majority = 1/loops; the control task "
                "labels each start key randomly, so it measures probe capacity) on "
                f"{site} ({'all channels' if ch == 'all' else 'without the loop-embedding channels'}): "
                f"{_fmt(r.get('task_acc'))} vs control {_fmt(r.get('control_acc'))} and majority "
                f"{_fmt(r.get('majority_acc'))} (selectivity {_fmt(r.get('selectivity'))})."
            )
        hp = pr[pr.probe.str.startswith("hop_")]
        if len(hp):
            ta = hp[hp.metric == "task_acc"]
            for hop, g in ta.groupby("hop"):
                best = g.loc[g["mean"].idxmax()]
                at = hp[(hp.hop == hop) & (hp.loop == best.loop)].set_index("metric")["mean"]
                out.append(
                    f"Hop-{int(hop)} entity is best decoded at loop {int(best.loop)}: "
                    f"{_fmt(best['mean'])} vs majority {_fmt(at.get('majority_acc'))} and "
                    f"start-key-only {_fmt(at.get('type_only_acc'))}; control task "
                    f"{_fmt(at.get('control_acc'))} (selectivity {_fmt(at.get('selectivity'))}; "
                    "the control is easy because the start key itself is decodable)."
                )
    lora = sub("lora")
    ab = sub("ablation")
    if len(lora):
        sn = lora[lora.metric == "scale_norm"]["value"]
        if (sn == 0).all():
            out.append("LoRA is off (every per-loop scale is exactly zero).")
        else:
            nr = lora[lora.metric == "norm_ratio"]
            out.append(
                "LoRA delta / block output norm ratio per loop: "
                + ", ".join(_fmt(v) for v in nr["value"])
                + "."
            )
    if len(ab):
        kl = ab[(ab.intervention == "ablate_lora") & (ab.metric == "kl")]
        da = ab[(ab.intervention == "ablate_lora") & (ab.metric == "delta_acc")]
        if len(kl):
            top = kl.loc[kl["value"].idxmax()]
            text = (f"Ablating LoRA at one loop: ΔKL up to {_fmt(top.value, 4)} nats (loop "
                    f"{int(top.ablated_loop)})")  # fmt: skip
            if len(da):
                text += f", Δaccuracy between {_fmt(da.value.min())} and {_fmt(da.value.max())}"
            allkl = ab[(ab.intervention == "ablate_lora_all") & (ab.metric == "kl")]["value"]
            mkl = ab[(ab.intervention == "mean_scale_all") & (ab.metric == "kl")]["value"]
            alla = ab[(ab.intervention == "ablate_lora_all") & (ab.metric == "delta_acc")]["value"]
            mda = ab[(ab.intervention == "mean_scale_all") & (ab.metric == "delta_acc")]["value"]
            text += (f"; at every loop ΔKL {_fmt(allkl.iloc[0], 4)}"
                     + (f" (Δacc {_fmt(alla.iloc[0])})" if len(alla) else "")
                     + f"; replacing every loop's scale by the mean scale ΔKL {_fmt(mkl.iloc[0], 4)}"
                     + (f" (Δacc {_fmt(mda.iloc[0])})" if len(mda) else "") + ".")  # fmt: skip
            if (kl["value"] == 0).all() and (allkl == 0).all():
                text += " Every effect is exactly zero, as it must be without LoRA."
            out.append(text)
    dp = sub("depth")
    if len(dp):
        out.extend(depth_statements(dp))
    return out


def depth_marks(depth: pd.DataFrame, z: float = 1.96) -> pd.DataFrame:
    """Mark each (hops, n_loops) cell of one checkpoint's depth table against its neighbours.

    ``gain`` = accuracy − accuracy at the previous loop count; ``se_gain`` its standard error
    (two independent binomial proportions); ``mark`` = ``helps`` (gain > z·se), ``hurts``
    (gain < −z·se), else ``flat``; ``best`` = the cell with the highest accuracy of its row,
    ``overthinking`` = accuracy below the row's best by more than z standard errors at a loop
    count above the best one. Columns: those of the depth table + ``gain, se_gain, mark, best,
    drop_from_best, overthinking``.
    """
    rows = []
    keys = ["checkpoint", "hops"] if "checkpoint" in depth.columns else ["hops"]
    for _, g in depth.sort_values([*keys, "n_loops"]).groupby(keys, sort=True):
        g = g.copy()
        p, n = g["accuracy"].to_numpy(float), g["n"].to_numpy(float)
        var = p * (1 - p) / n
        gain = np.r_[np.nan, np.diff(p)]
        se = np.sqrt(np.r_[np.nan, var[1:] + var[:-1]])
        mark = np.where(gain > z * se, "helps", np.where(gain < -z * se, "hurts", "flat"))
        mark[0] = ""
        ib = int(np.argmax(p))
        drop = p[ib] - p
        se_b = np.sqrt(var + var[ib])
        over = (np.arange(len(p)) > ib) & (drop > z * se_b)
        g["gain"], g["se_gain"], g["mark"] = gain, se, mark
        g["best"] = np.arange(len(p)) == ib
        g["drop_from_best"], g["overthinking"] = drop, over
        rows.append(g)
    return pd.concat(rows, ignore_index=True)


def depth_statements(depth: pd.DataFrame) -> list[str]:
    """One sentence per hop count: where more loops help, where they stop helping, where they
    hurt (overthinking), from :func:`depth_marks`."""
    out = []
    for (ck, hop), g in depth_marks(depth).groupby(["checkpoint", "hops"], sort=True):
        best = g[g.best].iloc[0]
        helps = g[g["mark"] == "helps"]["n_loops"].tolist()
        over = g[g.overthinking]["n_loops"].tolist()
        s = (f"Depth ({ck}), {int(hop)} hop(s): best {_fmt(best.accuracy)} at {int(best.n_loops)} loops"
             f"; more loops significantly help at {helps or 'no step'}")  # fmt: skip
        s += (f"; overthinking (significantly below the best) at {over} loops" if over
              else "; no significant drop after the best")  # fmt: skip
        out.append(s + ".")
    return out


def report_figures(tables: dict[str, pd.DataFrame]) -> list[tuple[str, Any]]:
    """``(caption, plotly Figure)`` pairs for the report, every one drawn from the tables."""
    import plotly.graph_objects as go

    from probes.plots import loop_loop_heatmap

    figs: list[tuple[str, Any]] = []
    names = list(dict.fromkeys(tables["cka"]["checkpoint"]))
    acc = tables.get("accuracy")
    if acc is not None and len(acc):
        fig = go.Figure()
        for ck, g in acc.groupby("checkpoint", sort=False):
            fig.add_trace(go.Bar(x=g.hops, y=g.accuracy, name=ck))
        g0 = acc.drop_duplicates("hops")
        fig.add_trace(go.Scatter(x=g0.hops, y=g0.chance_ignore_start, mode="lines+markers",
                                 name="chance (knows f, not the start)", line={"dash": "dot"}))  # fmt: skip
        fig.update_layout(title="held-out accuracy per hop count", xaxis_title="hops",
                          yaxis_title="accuracy", yaxis_range=[0, 1.05])  # fmt: skip
        figs.append(("Accuracy per hop count, beside the chance a start-blind guess reaches.", fig))
    dp = tables.get("depth")
    if dp is not None and len(dp):
        for ck, g in dp.groupby("checkpoint", sort=False):
            grid = g.pivot(index="hops", columns="n_loops", values="accuracy")
            fig = go.Figure(go.Heatmap(z=grid.to_numpy(float), x=grid.columns, y=grid.index,
                                       zmin=0, zmax=1, colorbar={"title": "accuracy"},
                                       texttemplate="%{z:.2f}"))  # fmt: skip
            fig.update_layout(title=f"{ck}: accuracy, hops × loops", xaxis_title="loops at test",
                              yaxis_title="hops")  # fmt: skip
            figs.append((f"{ck}: depth extrapolation (held-out accuracy per hop count and loop "
                         "count).", fig))  # fmt: skip
    cka = tables["cka"]
    fig = go.Figure()
    for (ck, site), g in _adjacent(cka, ["checkpoint", "site"]).groupby(["checkpoint", "site"],
                                                                        sort=False):  # fmt: skip
        fig.add_trace(go.Scatter(x=g.loop_a, y=g.value, mode="lines+markers", name=f"{ck} {site}"))
    fig.update_layout(title="CKA(t, t+1) per site", xaxis_title="loop t", yaxis_title="CKA")
    figs.append(("Debiased CKA between adjacent loops for h_t, Δh_t and block_out.", fig))
    for ck in names:
        sub = cka[(cka.checkpoint == ck) & (cka.site == "delta_h")]
        figs.append((f"{ck}: CKA of Δh_t between every pair of loops.",
                     loop_loop_heatmap(sub, title=f"{ck}: CKA of Δh_t")))  # fmt: skip
    ro = tables["router"]
    a = _adjacent(ro[ro.metric == "overlap_at_k"], ["checkpoint"])
    fig = go.Figure()
    for ck, g in a.groupby("checkpoint", sort=False):
        fig.add_trace(go.Scatter(x=g.loop_a, y=g.value, mode="lines+markers", name=ck))
    fig.add_hline(y=float(a.random_baseline.iloc[0]), line_dash="dot",
                  annotation_text="random k/E")  # fmt: skip
    fig.update_layout(title="router overlap@k between loops t and t+1", xaxis_title="loop t",
                      yaxis_title="overlap@k", yaxis_range=[0, 1.05])  # fmt: skip
    figs.append(("Experts re-used between adjacent loops, against the random baseline k/E.", fig))
    pr = tables["probes"]
    if len(pr):
        li = pr[(pr.probe == "loop_index") & pr.metric.isin(["task_acc", "control_acc",
                                                              "majority_acc"])]  # fmt: skip
        fig = go.Figure()
        for m, g in li.groupby("metric", sort=False):
            fig.add_trace(go.Bar(x=[f"{r.checkpoint}<br>{r.site} {r.channels}" for r in
                                    g.itertuples()], y=g["mean"], name=m,
                                 error_y={"type": "data", "array": g["std"]}))  # fmt: skip
        fig.update_layout(title="loop-identity probe", yaxis_title="accuracy", barmode="group")
        figs.append(("Which loop is this state from? Task vs control task vs majority, with and "
                     "without the loop-embedding channels (first d/8).", fig))  # fmt: skip
        hp = pr[pr.probe.str.startswith("hop_") & (pr.metric == "task_acc")]
        for ck, g in hp.groupby("checkpoint", sort=False):
            grid = g.pivot(index="hop", columns="loop", values="mean")
            fig = go.Figure(go.Heatmap(z=grid.to_numpy(float), x=grid.columns, y=grid.index,
                                       zmin=0, zmax=1, texttemplate="%{z:.2f}",
                                       colorbar={"title": "probe acc"}))  # fmt: skip
            fig.update_layout(title=f"{ck}: hop-entity probe, loop × hop", xaxis_title="loop",
                              yaxis_title="hop j (entity after j hops)")  # fmt: skip
            figs.append((f"{ck}: linear-probe accuracy of the entity after hop j at each loop "
                         "(query position; control and selectivity in probes.csv).", fig))  # fmt: skip
    ab = tables["ablation"]
    for metric, label in (("kl", "ΔKL (nats)"), ("delta_acc", "Δ accuracy")):
        g = ab[(ab.intervention == "ablate_lora") & (ab.metric == metric)]
        if not len(g):
            continue
        fig = go.Figure()
        for ck, gg in g.groupby("checkpoint", sort=False):
            fig.add_trace(go.Bar(x=gg.ablated_loop, y=gg.value, name=ck))
        fig.update_layout(title=f"LoRA ablated at one loop: {label}", xaxis_title="ablated loop",
                          yaxis_title=label, barmode="group")  # fmt: skip
        figs.append((f"Intervention: LoRA delta zeroed at one loop — {label} at the query "
                     "position.", fig))  # fmt: skip
    conv = tables["convergence"]
    fig = go.Figure()
    for (ck, m), g in conv[conv.metric.isin(["rel_step", "kl_prev_coda", "spectral_radius"])
                           ].groupby(["checkpoint", "metric"], sort=False):  # fmt: skip
        fig.add_trace(go.Scatter(x=g.loop, y=g.value, mode="lines+markers", name=f"{ck} {m}"))
    fig.update_layout(title="convergence per loop", xaxis_title="loop", yaxis_type="log")
    figs.append(("Relative step size, KL between successive coda-lens readouts, and the loop "
                 "map's Jacobian spectral radius.", fig))  # fmt: skip
    lens = tables["lens"]
    metric = "target_rank" if (lens.metric == "target_rank").any() else "final_rank"
    fig = go.Figure()
    for (ck, ln), g in lens[lens.metric.isin([metric, "control_rank"])].groupby(
        ["checkpoint", "lens"], sort=False
    ):
        for m, gg in g.groupby("metric", sort=False):
            fig.add_trace(go.Scatter(x=gg.loop, y=gg.value, mode="lines+markers",
                                     name=f"{ck} {ln} {m}",
                                     line={"dash": "dot" if m == "control_rank" else "solid"}))  # fmt: skip
    fig.update_layout(title=f"lens: mean {metric} per loop (control dotted)", xaxis_title="loop",
                      yaxis_title="rank (0 = top-1)")  # fmt: skip
    figs.append((f"Logit and coda lens: mean {metric} at the query position; a random control "
                 "token's rank shows what no information looks like.", fig))  # fmt: skip
    lc = tables["lora_cosine"]
    for ck in names:
        sub = lc[lc.checkpoint == ck]
        if sub["value"].notna().any():
            figs.append((f"{ck}: cosine between per-loop LoRA scale vectors.",
                         loop_loop_heatmap(sub, title=f"{ck}: LoRA scale cosine")))  # fmt: skip
    return figs


def _html_table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, float_format=lambda x: f"{x:.4g}", border=0, classes="t")


def build_report(
    tables: dict[str, pd.DataFrame],
    meta: dict[str, Any],
    *,
    title: str,
    plotlyjs: str = "inline",
    extra_html: str = "",
    summary: list[str] | None = None,
    figures: list[tuple[str, Any]] | None = None,
) -> str:
    """One self-contained HTML page: summary statements, figures, key tables, run facts.

    ``plotlyjs="inline"`` embeds plotly.js (opens offline); ``"cdn"`` links it (small file).
    """
    import html

    if plotlyjs not in ("inline", "cdn"):
        raise MythosLensError(f"plotlyjs={plotlyjs!r}", "'inline' or 'cdn'")
    names = list(dict.fromkeys(tables["cka"]["checkpoint"])) if "cka" in tables else []
    if summary is None:
        summary = []
        for ck in names:
            summary += [f"<b>{html.escape(ck)}</b>: {html.escape(s)}"
                        for s in summarize_checkpoint(tables, ck)]  # fmt: skip
    figs = report_figures(tables) if figures is None else figures
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
        "table.t{border-collapse:collapse;font-size:12px}table.t td,table.t th{padding:2px 6px;"
        "border-bottom:1px solid #ddd}figure{margin:1.5em 0}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<section id='summary'><h2>Summary</h2><ul>",
        *[f"<li>{s}</li>" for s in summary],
        "</ul></section>",
        extra_html,
        "<section id='figures'><h2>Figures</h2>",
    ]
    for i, (caption, fig) in enumerate(figs):
        inc = ("cdn" if plotlyjs == "cdn" else True) if i == 0 else False
        fig.update_layout(height=420, template="plotly_white")
        div = fig.to_html(full_html=False, include_plotlyjs=inc, div_id=f"fig-{i}",
                          config={"displaylogo": False})  # fmt: skip
        parts.append(f"<figure class='fig'>{div}<figcaption>{html.escape(caption)}"
                     "</figcaption></figure>")  # fmt: skip
    parts.append("</section><section id='tables'><h2>Key tables</h2>")
    for name in ("accuracy", "ablation"):
        if name in tables and len(tables[name]):
            parts.append(f"<h3>{name}</h3>{_html_table(tables[name])}")
    parts.append("<h3>columns of every table</h3><ul>")
    for name, cols in TABLE_COLUMNS.items():
        if name in tables:
            desc = "; ".join(f"<code>{c}</code>: {html.escape(d)}" for c, d in cols.items())
            parts.append(f"<li><b>{name}</b>.parquet / .csv — {desc}</li>")
    parts.append("</ul></section><section id='run'><h2>Run</h2><pre>")
    facts = {k: meta[k] for k in meta if k not in ("columns", "train_configs")}
    parts.append(html.escape(json.dumps(facts, indent=1, default=str)))
    parts.append("</pre></section></body></html>")
    return "\n".join(parts)
