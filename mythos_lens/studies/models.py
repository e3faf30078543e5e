"""The models of a study: the fast study preset trained for every seed and arm (parallel
processes, one torch thread each), or the shipped checkpoints reused."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mythos_lens.errors import MythosLensError

# The fast study recipe: the shipped presets' recipe (loops drawn from 2…6, embedding re-init,
# 1-hop curriculum, AdamW 1e-3, LoRA on/off identical) on a smaller pointer task — 6 entities,
# trained on hops 1–2 (tested up to 4) — which reached 100 % on 1 and 2 hops in ~2k steps
# (~5 min at one thread) where the 8-entity, 3-hop task needs ~10k steps (~25 min).
STUDY_PRESET: dict[str, Any] = dict(
    task_params={"n_entities": 6, "train_hops": 2, "max_hops": 4},
    loops=6, loops_min=2, eval_loops=4, steps=2500, eval_every=250, eval_examples=128,
    early_stop_acc=0.97, early_stop_patience=2, final_eval_examples=500,
    extrap_examples=64, extrap_loops=[2, 4, 6], threads=1, progress=False,
)  # fmt: skip


ARMS = ("on", "off")


def study_config(lora: bool, seed: int, out_dir: str | Path | None = None):
    """The :class:`~mythos_lens.train.TrainConfig` of one study model."""
    from mythos_lens.train import TrainConfig

    name = f"study-lora-{'on' if lora else 'off'}-s{seed}"
    return TrainConfig(name=name, lora=lora, seed=seed, out_dir=None if out_dir is None
                       else str(out_dir), **STUDY_PRESET)  # fmt: skip


def _train_one(args: tuple[bool, int, str]) -> dict[str, Any]:
    from mythos_lens.train import train

    lora, seed, out = args
    torch.set_num_threads(1)
    res = train(study_config(lora, seed, out))
    m = res.metrics
    return {"name": m["name"], "steps": m["steps"], "train_seconds": m["train_seconds"]}


def train_study_models(
    seeds: Sequence[int], directory: str | Path, jobs: int = 2
) -> dict[tuple[str, int], Path]:
    """Train (or find) ``study-lora-{on,off}-s<seed>`` under ``directory``; ``jobs`` processes
    at a time, one torch thread each. Returns ``{(arm, seed): checkpoint dir}``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {(arm, s): directory / f"study-lora-{arm}-s{s}" for s in seeds for arm in ARMS}
    todo = [(arm == "on", s, str(p)) for (arm, s), p in paths.items()
            if not (p / "model.safetensors").is_file()]  # fmt: skip
    if todo:
        print(f"training {len(todo)} study model(s), {jobs} at a time ...", flush=True)
        ctx = mp.get_context("spawn")
        with ctx.Pool(processes=max(1, min(jobs, len(todo)))) as pool:
            for r in pool.imap_unordered(_train_one, todo):
                print(f"  {r['name']}: {r['steps']} steps, {r['train_seconds']} s", flush=True)
    return paths


def reuse_models(directory: str | Path, seeds: Sequence[int] | None) -> dict[tuple[str, int], Path]:
    """The shipped ``pointer-lora-{on,off}`` (seed 0) and ``…-s<seed>`` checkpoints under
    ``directory`` present for both arms (restricted to ``seeds`` when given)."""
    directory = Path(directory)
    found: dict[tuple[str, int], Path] = {}
    for arm in ARMS:
        for p in sorted(directory.glob(f"pointer-lora-{arm}*")):
            tail = p.name[len(f"pointer-lora-{arm}") :]
            if tail == "":
                s = 0
            elif tail.startswith("-s") and tail[2:].isdigit():
                s = int(tail[2:])
            else:
                continue
            if (p / "model.safetensors").is_file() and (seeds is None or s in seeds):
                found[(arm, s)] = p
    both = sorted({s for (a, s) in found if (("on", s) in found and ("off", s) in found)})
    if not both:
        raise MythosLensError(
            f"no seed with both pointer-lora-on and -off under {directory}",
            "shipped checkpoints (see data/README.md) or no --reuse (train the study preset)",
        )
    return {(a, s): found[(a, s)] for s in both for a in ARMS}


def arm_seed_maps(paths: dict[tuple[str, int], Path]) -> tuple[dict[str, str], dict[str, int]]:
    arm_of = {p.name: a for (a, s), p in paths.items()}
    seed_of = {p.name: s for (a, s), p in paths.items()}
    return arm_of, seed_of
