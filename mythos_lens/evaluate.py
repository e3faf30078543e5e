"""Held-out evaluation of a trained model: accuracy per hop count, and over hop count x loop count."""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from open_mythos.main import OpenMythos
from tqdm.auto import tqdm

from mythos_lens.errors import MythosLensError
from mythos_lens.model import check_n_loops
from mythos_lens.tasks.base import TaskBatch
from mythos_lens.tasks.pointer import PointerTask


def forward_last(model: OpenMythos, ids: torch.Tensor, n_loops: int, dtype: str) -> torch.Tensor:
    """Logits at the last position, ``[B, vocab]``, float32."""
    n_loops = check_n_loops(n_loops)  # upstream reads `n_loops or max_loop_iters`: never pass 0
    if dtype == "bfloat16":
        with torch.autocast(ids.device.type, dtype=torch.bfloat16):
            return model(ids, n_loops=n_loops)[:, -1, :].float()
    return model(ids, n_loops=n_loops)[:, -1, :]


@torch.no_grad()
def accuracy(
    model: OpenMythos, batch: TaskBatch, n_loops: int, dtype: str = "float32", chunk: int = 512
) -> torch.Tensor:
    """``[B]`` bool: whether the argmax over the whole vocabulary at the last position is right."""
    was_training = model.training
    model.eval()
    device = model.embed.weight.device
    out = []
    for i in range(0, len(batch), chunk):
        ids = batch.input_ids[i : i + chunk].to(device)
        pred = forward_last(model, ids, n_loops, dtype).argmax(-1).cpu()
        out.append(pred == batch.answer[i : i + chunk])
    model.train(was_training)
    return torch.cat(out)


def per_hop_accuracy(
    model: OpenMythos, batch: TaskBatch, n_loops: int, dtype: str = "float32"
) -> dict[int, float]:
    """Held-out accuracy per hop count present in `batch`."""
    ok = accuracy(model, batch, n_loops, dtype)
    return {int(h): float(ok[batch.hops == h].float().mean()) for h in batch.hops.unique()}


def heldout_set(task: PointerTask, hops: list[int], per_hop: int, seed: int) -> TaskBatch:
    """`per_hop` held-out examples for each hop count in `hops` (deterministic from `seed`)."""
    parts = [task.generate(per_hop, "heldout", seed=seed * 1000 + h, hops=h) for h in hops]
    return TaskBatch(**{k: torch.cat([p.tensors()[k] for p in parts]) for k in parts[0].tensors()})


def depth_accuracy(
    model: OpenMythos,
    task: PointerTask,
    hops: list[int],
    loops: list[int],
    per_cell: int,
    seed: int,
    dtype: str = "float32",
    desc: str = "accuracy vs loops",
    progress: bool | None = None,
) -> pd.DataFrame:
    """Held-out accuracy per (hop count, loop count): `per_cell` examples per hop count (one
    held-out set, deterministic from `seed`, reused for every loop count). Columns ``hops,
    n_loops, accuracy``."""
    loops = [check_n_loops(n) for n in loops]
    if not loops:
        raise MythosLensError("no loop counts", "at least one loop count >= 1")
    batch = heldout_set(task, hops, per_cell, seed)
    rows = []
    for n in tqdm(
        loops, desc=desc, leave=False, disable=None if progress is None else not progress
    ):
        acc = per_hop_accuracy(model, batch, n, dtype)
        rows += [{"hops": h, "n_loops": n, "accuracy": acc[h]} for h in hops]
    return pd.DataFrame(rows, columns=["hops", "n_loops", "accuracy"])


def extrapolation_table(
    model: OpenMythos, task: PointerTask, loops: list[int], per_cell: int, seed: int, dtype: str
) -> dict[str, Any]:
    """Held-out accuracy for every hop count 1 … max_hops (rows) × loop count in `loops` (columns)."""
    hops = list(range(1, task.max_hops + 1))
    df = depth_accuracy(model, task, hops, loops, per_cell, seed, dtype, desc="extrapolation")
    rows = {str(h): {} for h in hops}
    for r in df.itertuples():
        rows[str(r.hops)][str(r.n_loops)] = round(r.accuracy, 4)
    return {"hops": hops, "loops": list(loops), "examples_per_cell": per_cell, "accuracy": rows}


def metrics_markdown(metrics: dict[str, Any]) -> str:
    """A metrics dict (as in metrics.json) as Markdown: accuracy per hop with chance, then the
    depth-extrapolation table (rows: hop count, columns: loops)."""
    lines = [
        f"held-out accuracy at {metrics['eval_loops']} loops "
        f"({metrics['heldout_examples_per_hop']} examples per hop count):",
        "",
        "| hops | accuracy | chance (uniform) | chance (knows f, not the start) |",
        "|---|---|---|---|",
    ]
    for h, row in metrics["heldout_accuracy"].items():
        lines.append(
            f"| {h} | {row['accuracy']:.3f} | {row['uniform']:.3f} | {row['ignore_start']:.3f} |"
        )
    table = metrics["extrapolation"]
    loops = [str(n) for n in table["loops"]]
    lines += [
        "",
        f"depth extrapolation ({table['examples_per_cell']} held-out examples per cell; "
        "rows: hop count, columns: loops):",
        "",
        "| hops \\ loops | " + " | ".join(loops) + " |",
        "|---" * (len(loops) + 1) + "|",
    ]
    for h in table["hops"]:
        row = table["accuracy"][str(h)]
        lines.append(f"| {h} | " + " | ".join(f"{row[n]:.2f}" for n in loops) + " |")
    return "\n".join(lines)
