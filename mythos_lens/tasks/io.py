"""Datasets on disk: ``<name>.safetensors`` (the TaskBatch tensors) + ``<name>.json`` (task spec,
split, seed, counts). Nothing is pickled."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mythos_lens.atomic import atomic_path, write_json_atomic
from mythos_lens.errors import MythosLensError
from mythos_lens.tasks.base import TaskBatch
from mythos_lens.tasks.pointer import PointerTask
from mythos_lens.tasks.registry import task_from_spec

DATASET_FORMAT = "mythos-lens-dataset/1"
FIELDS = ("input_ids", "answer", "answer_entity", "hop_entities", "hops", "start", "function")


def save_dataset(
    batch: TaskBatch, task: PointerTask, path: str | os.PathLike, info: dict[str, Any]
) -> tuple[Path, Path]:
    """Write `batch` to ``path`` (``.safetensors``) and a JSON sidecar; returns both paths.

    `info` (e.g. split and seed) is stored in the sidecar beside the task spec.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise MythosLensError(f"dataset path {str(path)!r}", "a path ending in .safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in batch.tensors().items()}, str(tmp))
    hops = batch.hops.tolist()
    meta = {
        "format": DATASET_FORMAT,
        "task": task.spec(),
        "n_examples": len(batch),
        "examples_per_hop": {str(h): hops.count(h) for h in sorted(set(hops))},
        "example_0": " ".join(task.decode(batch.input_ids[0]))
        + " -> "
        + task.describe_token(int(batch.answer[0])),
        **info,
    }
    sidecar = path.with_suffix(".json")
    write_json_atomic(sidecar, meta)
    sidecar.chmod(0o644)
    return path, sidecar


def load_dataset(path: str | os.PathLike) -> tuple[TaskBatch, PointerTask, dict[str, Any]]:
    """Read a dataset written by `save_dataset`: (batch, task, sidecar metadata)."""
    path = Path(path)
    sidecar = path.with_suffix(".json")
    if not path.is_file() or not sidecar.is_file():
        raise MythosLensError(
            f"dataset {str(path)!r}", "a .safetensors file with its .json sidecar"
        )
    meta = json.loads(sidecar.read_text())
    if meta.get("format") != DATASET_FORMAT:
        raise MythosLensError(f"{sidecar} has format {meta.get('format')!r}", DATASET_FORMAT)
    tensors = load_file(str(path))
    missing = [k for k in FIELDS if k not in tensors]
    if missing:
        raise MythosLensError(f"{path} lacks {missing}", f"tensors {list(FIELDS)}")
    batch = TaskBatch(**{k: tensors[k].to(torch.int64) for k in FIELDS})
    return batch, task_from_spec(meta["task"]), meta
