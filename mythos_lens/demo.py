"""``mythos-lens demo``: capture every loop of a model and print a per-loop summary."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from mythos_lens.capture import capture
from mythos_lens.checkpoint import load_checkpoint, load_task
from mythos_lens.model import build_model, tiny_config
from mythos_lens.trace import Trace
from probes.convergence import step_table
from probes.lora import lora_delta_ratio

DEFAULT_CHECKPOINT = (
    Path(__file__).resolve().parent.parent / "data" / "checkpoints" / "pointer-lora-on"
)


def loop_summary(trace: Trace, row: int = 0, pos: int = -1) -> pd.DataFrame:
    """One row per loop step for sequence `row` at position `pos` of a full trace: relative step
    of h_t, halting, ACT weight, LoRA share of the block output, experts chosen."""
    p = pos % len(trace.positions)
    h = trace["resid_post"][:, row : row + 1, p : p + 1]
    steps = step_table(h, trace.stream["e"][row : row + 1, p : p + 1])
    lora = lora_delta_ratio(
        trace["lora_delta"][:, row : row + 1, p : p + 1],
        trace["block_out"][:, row : row + 1, p : p + 1],
    )
    return pd.DataFrame(
        {
            "loop": range(trace.n_loops),
            "lora_row": trace.meta["lora_row"],
            "rel_step": steps[steps.metric == "rel_step"]["value"].to_numpy(),
            "halt_prob": trace["halt_prob"][:, row, p].numpy(),
            "act_weight": trace["act_weight"][:, row, p].numpy(),
            "lora/block": lora[lora.metric == "norm_ratio"]["value"].to_numpy(),
            "experts": [sorted(x.tolist()) for x in trace["expert_ids"][:, row, p]],
        }
    )


def run_demo(
    checkpoint: str | None = None, loops: int | None = None, hops: int = 2, seed: int = 0
) -> int:
    """Print a per-loop summary of one input: the shipped checkpoint (or `checkpoint`) on a task
    example with `hops` hops, or a tiny random model on random ids when nothing is shipped."""
    ckpt = Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT
    if checkpoint is None and not ckpt.is_dir():
        model = build_model(tiny_config(act_threshold=1e9), seed=seed)
        print(f"no checkpoint at {ckpt}: using a tiny random OpenMythos")
    else:
        model = load_checkpoint(ckpt)
        print(f"checkpoint {ckpt}")
    task = load_task(ckpt) if ckpt.is_dir() else None
    if task is not None:
        batch = task.generate(1, "heldout", seed, hops=[hops])
        ids = batch.input_ids
        answer = task.describe_token(int(batch.answer[0]))
        print(f"input: {' '.join(task.decode(ids[0]))}   (answer {answer})")
    else:
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(
            0, model.cfg.vocab_size, (1, min(12, model.cfg.max_seq_len)), generator=gen
        )
        print(f"input: random token ids {ids[0].tolist()}")
    trace = capture(model, ids, n_loops=loops)
    print(f"loops run: {trace.n_loops} of {trace.n_loops_requested} requested")
    table = loop_summary(trace)
    with pd.option_context("display.width", 140, "display.float_format", "{:.4f}".format):
        print(table.to_string(index=False))
    top = int(trace.logits[0, -1].argmax())
    print(f"prediction at the last position: {task.describe_token(top) if task else top}")
    return 0
