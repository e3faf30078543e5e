"""What each training step trains on: the batch, its loop count and its targets.

- :class:`HopCurriculum` (tasks with a hop token, e.g. ``pointer``): hop count 1 only until its
  held-out accuracy reaches ``curriculum_acc`` (or ``curriculum_steps`` pass), then hops
  ``1 … K``; loops drawn from ``[loops_min, loops]`` (or fixed).
- :class:`LengthCurriculum` (``fixed-point``: depth implicit): the chain length of the contexts
  grows from 2 to L, one step each time held-out accuracy on the current length reaches
  ``length_acc`` for every depth it allows (depths ``1 … min(K, Lb−1)``; a short context uses
  every entity id it can, see ``FixedPointTask``). Loops are drawn from ``[1, k + slack]`` (k =
  the largest depth so far); a share ``function_share`` of batches uses random-function contexts
  with loops ``[1, k]``. In the tail phases a share ``tail_focus`` of batches uses full-length
  contexts.

Targets: ``answer`` (the task's answer) or ``hop`` (the entity reached after ``n_loops`` hops,
which is the answer once ``n_loops`` ≥ the depth: a loop that stops early is taught the hop it
has reached).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mythos_lens.evaluate import per_hop_accuracy
from mythos_lens.tasks.base import TaskBatch


def targets(task: Any, batch: TaskBatch, n_loops: int, kind: str) -> torch.Tensor:
    """``[B]`` target token ids: the answer, or (``hop``) the entity after ``n_loops`` hops."""
    if kind == "answer":
        return batch.answer
    col = min(n_loops, batch.hop_entities.shape[1]) - 1
    entity = batch.hop_entities[:, col]
    reached = torch.where(entity >= 0, entity, batch.answer_entity)
    return torch.as_tensor(task.value_id(reached.numpy()))


class HopCurriculum:
    """1 hop first, then every trained hop count; loops from the config."""

    def __init__(self, cfg: Any, task: Any) -> None:
        self.cfg, self.task = cfg, task
        self.hops = list(range(1, task.train_hops + 1))
        self.active = cfg.curriculum_steps > 0 and task.train_hops > 1
        self.end: int | None = None if self.active else 0
        self.in_tail = False

    @property
    def complete(self) -> bool:
        """Whether every trained depth is in play (early stopping may start)."""
        return not self.active

    def batch(self, step: int, rng: np.random.Generator) -> tuple[TaskBatch, torch.Tensor, int]:
        """The step's batch, targets ``[B]`` and loop count."""
        if self.active and step > self.cfg.curriculum_steps:
            self.active, self.end = False, step - 1
        hops = [1] if self.active else self.hops
        b = self.task.generate(self.cfg.batch, "train", seed=rng, hops=hops)
        lo, hi = self.cfg.loops_min, self.cfg.loops
        n = hi if lo is None else int(rng.integers(lo, hi + 1))
        return b, targets(self.task, b, n, self.cfg.target), n

    def after_eval(self, model: Any, step: int, acc: dict[int, float]) -> dict[str, Any]:
        """Update the curriculum from held-out accuracy; fields for the history."""
        if self.active and acc[1] >= self.cfg.curriculum_acc:
            self.active, self.end = False, step
        return {"curriculum": self.active}

    def summary(self) -> dict[str, Any]:
        return {"curriculum_end_step": self.end}


class LengthCurriculum:
    """Chain length grows 2 → L (see the module docstring)."""

    def __init__(self, cfg: Any, task: Any) -> None:
        self.cfg, self.task = cfg, task
        self.L = task.chain_len
        self.length = 2
        self.passed: dict[int, int] = {}  # chain length -> step it was passed
        self.in_tail = False
        erng = np.random.default_rng([cfg.eval_seed, 3])
        self._eval: dict[int, dict[int, TaskBatch]] = {}
        self._erng = erng

    @property
    def depths(self) -> list[int]:
        return list(range(1, min(self.task.train_hops, self.length - 1) + 1))

    @property
    def complete(self) -> bool:
        return self.length >= self.L

    def batch(self, step: int, rng: np.random.Generator) -> tuple[TaskBatch, torch.Tensor, int]:
        cfg = self.cfg
        k = max(self.depths)
        focus = cfg.tail_focus if self.in_tail else 0.0
        Lb = self.length if rng.random() < focus else int(rng.integers(2, self.length + 1))
        if rng.random() < cfg.function_share:
            n = int(rng.integers(1, k + 1))
            b = self.task.generate(cfg.batch, "train", rng, hops=[n], chain_len=Lb,
                                   context="function")  # fmt: skip
        else:
            n = int(rng.integers(1, k + cfg.loops_slack + 1))
            depths = [d for d in self.depths if d <= Lb - 1] or [1]
            if cfg.target == "answer":
                depths = [d for d in depths if d <= n] or [1]
            b = self.task.generate(cfg.batch, "train", rng, hops=depths, chain_len=Lb)
        return b, targets(self.task, b, n, cfg.target), n

    def after_eval(self, model: Any, step: int, acc: dict[int, float]) -> dict[str, Any]:
        rec: dict[str, Any] = {"chain_len": self.length}
        if self.complete:
            return rec
        if self.length not in self._eval:
            self._eval[self.length] = {
                d: self.task.generate(64, "heldout", self._erng, hops=[d], chain_len=self.length)
                for d in self.depths
            }
        evals = self._eval[self.length]
        cur = {d: float(per_hop_accuracy(model, b, max(self.depths))[d]) for d, b in evals.items()}
        rec["acc_current_length"] = {str(d): round(a, 4) for d, a in cur.items()}
        if min(cur.values()) >= self.cfg.length_acc:
            self.passed[self.length] = step
            self.length += 1
        return rec

    def summary(self) -> dict[str, Any]:
        return {"chain_length_passed_at": {str(k): v for k, v in self.passed.items()},
                "curriculum_end_step": self.passed.get(self.L - 1)}  # fmt: skip


CURRICULA = {"hops": HopCurriculum, "length": LengthCurriculum}
