"""The models of the LoRA study: both arms trained per seed (parallel processes, one torch thread
each) to the design's stopping criterion, failing pairs replaced by spare seeds — or the shipped
ones reused."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from mythos_lens.errors import MythosLensError
from mythos_lens.studies.design import LoraStudyDesign
from probes.stats import stopping_criterion

ARMS = ("on", "off")
PAIR_COLUMNS = {
    "seed": "training seed (both arms)",
    "arm": "on / off",
    "checkpoint": "checkpoint directory name",
    "steps": "steps trained",
    "reached": "stopping criterion met (every trained depth >= threshold, k evaluations in a row)",
    "reached_step": "step at which it was met",
    "used": "the pair (both arms reached) is in the study",
    "role": "design (one of the design's seeds) / spare (replaces a failed pair)",
    "heldout_min_acc": "lowest final held-out accuracy over the trained depths",
}


def model_dir(directory: Path, arm: str, seed: int) -> Path:
    return directory / f"study-lora-{arm}-s{seed}"


def _train_one(job: tuple[dict[str, Any], bool, int, str]) -> str:
    from mythos_lens.train import train

    design_dict, lora, seed, out = job
    torch.set_num_threads(1)
    design = LoraStudyDesign.from_dict(design_dict)
    train(design.train_config(lora, seed, out))
    return Path(out).name


def is_trained(path: Path) -> bool:
    """A study model is complete once its metrics are written (they are written last)."""
    return (path / "model.safetensors").is_file() and (path / "metrics.json").is_file()


def train_in_order(design: LoraStudyDesign, directory: str | Path, *, jobs: int = 2) -> list[int]:
    """Train the design's pairs in :attr:`LoraStudyDesign.seed_order`, ``jobs`` models at a time
    (one fresh process each, one torch thread), until ``len(design.seeds)`` pairs met the
    stopping criterion or the seeds run out; models already trained are kept. A pair is only
    started while the pairs met plus the pairs still running fall short of the target, so no
    model is trained that the stopping rule could not use. Returns the seeds of the pairs met."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    need, dd = len(design.seeds), design.to_dict()
    order = list(design.seed_order)
    met: list[int] = []
    running: dict[Any, tuple[str, int]] = {}
    pending_pairs: dict[int, set[str]] = {}

    def settle(seed: int) -> None:
        if seed in pending_pairs and not pending_pairs[seed]:
            del pending_pairs[seed]
            st = [pair_status(model_dir(directory, a, seed), design)["reached"] for a in ARMS]
            if all(st):
                met.append(seed)
            print(f"  pair s{seed}: {'met' if all(st) else 'missed'} the stopping criterion "
                  f"({len(met)} of {need} met)", flush=True)  # fmt: skip

    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=ctx,
                             max_tasks_per_child=1) as pool:  # fmt: skip
        while True:
            while order and len(running) < jobs and len(met) + len(pending_pairs) < need:
                seed = order.pop(0)
                todo = [a for a in ARMS if not is_trained(model_dir(directory, a, seed))]
                pending_pairs[seed] = set(todo)
                for arm in todo:
                    job = (dd, arm == "on", seed, str(model_dir(directory, arm, seed)))
                    running[pool.submit(_train_one, job)] = (arm, seed)
                    print(f"  training {model_dir(directory, arm, seed).name}", flush=True)
                settle(seed)
            if not running:
                break
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in done:
                arm, seed = running.pop(fut)
                fut.result()  # a failed training run stops the study here, loudly
                pending_pairs[seed].discard(arm)
                settle(seed)
    return met


# What decides a study model: designs that agree on these share their models (full and quick do).
_RECIPE_FIELDS = ("lora", "seed", "steps", "early_stop_acc", "early_stop_patience")
_RUNTIME_FIELDS = ("threads", "progress")


def check_recipe(path: Path, design: LoraStudyDesign, arm: str, seed: int) -> None:
    """Raise MythosLensError unless the checkpoint at `path` was trained with the design's recipe
    for (arm, seed) — a folder of other models must not enter the study unnoticed."""
    from dataclasses import asdict

    from mythos_lens.checkpoint import read_config

    have = read_config(path).get("metadata", {}).get("train_config", {}) or {}
    want = json.loads(json.dumps(asdict(design.train_config(arm == "on", seed))))
    for k in (*design.recipe, *_RECIPE_FIELDS):
        if k not in _RUNTIME_FIELDS and have.get(k) != want[k]:
            raise MythosLensError(
                f"{path} was trained with {k}={have.get(k)!r}",
                f"{k}={want[k]!r}, as design {design.name!r} trains study-lora-{arm}-s{seed}",
            )


def pair_status(path: Path, design: LoraStudyDesign) -> dict[str, Any]:
    """Whether one trained model met the design's stopping criterion (read from its history)."""
    m = json.loads((path / "metrics.json").read_text())
    crit = stopping_criterion(m["history"], design.threshold, design.consecutive,
                              acc_key="heldout_acc")  # fmt: skip
    final = [v["accuracy"] for v in m["heldout_accuracy"].values()]
    return {"checkpoint": path.name, "steps": m["steps"], "reached": crit["reached"],
            "reached_step": crit["step"], "heldout_min_acc": min(final)}  # fmt: skip


def study_models(
    design: LoraStudyDesign, directory: str | Path, *, train: bool, jobs: int = 2
) -> tuple[dict[tuple[str, int], Path], pd.DataFrame]:
    """The seed pairs of the study: ``({(arm, seed): checkpoint}, pairs table)``.

    Seeds are taken from ``design.seeds``; a seed whose on or off model misses the stopping
    criterion is replaced by the next of ``design.spare_seeds``. With ``train`` missing models
    are trained (``jobs`` processes); without, a missing model is an error. The pairs table
    (:data:`PAIR_COLUMNS`) lists every model looked at, used or not."""
    directory = Path(directory)
    queue, spares, used, rows = list(design.seeds), list(design.spare_seeds), [], []
    trained = False
    while queue:
        todo = [(arm, s) for s in queue for arm in ARMS
                if not is_trained(model_dir(directory, arm, s))]  # fmt: skip
        if todo and not train:
            names = ", ".join(model_dir(directory, a, s).name for a, s in todo)
            raise MythosLensError(f"study checkpoints missing under {directory}: {names}",
                                  "the shipped study checkpoints, or run without --reuse to "
                                  "train them")  # fmt: skip
        if todo and trained:
            raise MythosLensError(f"training left study models incomplete under {directory}",
                                  "model.safetensors and metrics.json for every model")  # fmt: skip
        if todo:
            trained = True
            print(f"training study models in seed order, {jobs} at a time ...", flush=True)
            train_in_order(design, directory, jobs=jobs)
            continue  # every pair the rule can use is trained now; re-read them
        failed = 0
        for s in queue:
            for arm in ARMS:
                check_recipe(model_dir(directory, arm, s), design, arm, s)
            st = {arm: pair_status(model_dir(directory, arm, s), design) for arm in ARMS}
            ok = all(v["reached"] for v in st.values())
            role = "design" if s in design.seeds else "spare"
            for arm in ARMS:
                rows.append({"seed": s, "arm": arm, **st[arm], "used": ok, "role": role})
            if ok:
                used.append(s)
            else:
                failed += 1
        queue = spares[:failed]
        spares = spares[failed:]
    if len(used) < 2:
        raise MythosLensError(f"only {len(used)} seed pair(s) met the stopping criterion",
                              "at least 2 (raise the step cap or add spare seeds)")  # fmt: skip
    pairs = pd.DataFrame(rows)[list(PAIR_COLUMNS)]
    paths = {(arm, s): model_dir(directory, arm, s) for s in used for arm in ARMS}
    return paths, pairs
