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
    while queue:
        todo = [(arm, s) for s in queue for arm in ARMS
                if not (model_dir(directory, arm, s) / "model.safetensors").is_file()]  # fmt: skip
        if todo and not train:
            names = ", ".join(model_dir(directory, a, s).name for a, s in todo)
            raise MythosLensError(f"study checkpoints missing under {directory}: {names}",
                                  "the shipped study checkpoints, or run without --reuse to "
                                  "train them")  # fmt: skip
        if todo:
            directory.mkdir(parents=True, exist_ok=True)
            print(f"training {len(todo)} study model(s), {jobs} at a time ...", flush=True)
            args = [(design.to_dict(), arm == "on", s, str(model_dir(directory, arm, s)))
                    for arm, s in todo]  # fmt: skip
            with mp.get_context("spawn").Pool(processes=max(1, min(jobs, len(todo)))) as pool:
                for name in pool.imap_unordered(_train_one, args):
                    print(f"  trained {name}", flush=True)
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
