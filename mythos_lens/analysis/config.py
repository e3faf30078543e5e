"""What one analysis runs with: its knobs (:class:`AnalyzeConfig`) and its inputs (task examples, a dataset file or a file of token ids)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mythos_lens.errors import MythosLensError, check_int
from mythos_lens.inputs import parse_token_ids
from mythos_lens.loading import encode_texts
from mythos_lens.tasks.base import TaskBatch
from mythos_lens.tasks.pointer import PointerTask


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
    patch_examples: int = 32  # task examples for the patching sweep and LoRA cross-patching
    spectral_examples: int = 4
    spectral_iters: int = 30
    blas_threads: int = 1  # BLAS threads for the probes' fits (small problems: 1 is fastest)
    progress: bool = True

    def __post_init__(self) -> None:
        """Every field is checked here, so a bad value fails before any work (CLI and library)."""
        for name, lo in (("n_examples", 1), ("batch_size", 1), ("seed", 0),
                         ("probe_examples", 0), ("probe_splits", 2), ("depth_examples", 1),
                         ("patch_examples", 0),
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

    def labels(self, rows: slice) -> TaskBatch | None:
        """The task labels of `rows` (None without labels)."""
        if self.batch is None:
            return None
        return TaskBatch(**{k: v[rows] for k, v in self.batch.tensors().items()})


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
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise MythosLensError(
            f"{p} is not UTF-8 text (byte {exc.start})", "a text file of token ids"
        ) from None
    try:
        rows = parse_token_ids(text)
    except MythosLensError as exc:
        raise MythosLensError(f"{p}: {exc.what}", exc.expected) from None
    return Inputs(torch.tensor(rows, dtype=torch.long), None, None, f"ids file {p.name}")


def text_inputs(path: str | os.PathLike, tokenizer: Any) -> Inputs:
    """Inputs from a text file, one sequence per line, tokenised with `tokenizer` (no labels;
    every line must give the same number of tokens)."""
    p = Path(path)
    if not p.is_file():
        raise MythosLensError(f"{p} does not exist", "a text file, one input per line")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise MythosLensError(f"{p} is not UTF-8 text (byte {exc.start})", "UTF-8 text") from None
    rows = encode_texts(tokenizer, text)
    return Inputs(torch.tensor(rows, dtype=torch.long), None, None, f"text file {p.name}")
