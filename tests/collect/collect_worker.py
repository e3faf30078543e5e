"""What the processes the collect tests spawn run (importable by name in a spawned child)."""

from __future__ import annotations

import os
import signal

import torch
import torch.distributed as dist

from mythos_lens.activations.config import CollectConfig
from mythos_lens.activations.run import collect
from mythos_lens.analysis.config import task_inputs
from mythos_lens.checkpoint import load_task
from mythos_lens.loading import load_model

N_SEQUENCES = 13  # 3 shards of 5 (the last one short), batches of 3: uneven everywhere


def config(**overrides) -> CollectConfig:
    base = dict(sites=["resid_post", "block_out", "halt_prob", "expert_ids"], batch_size=3,
                shard_size=5, progress=False)  # fmt: skip
    return CollectConfig(**{**base, **overrides})


def run(ckpt: str, out: str, kill_at: tuple[int, int] | None = None) -> None:
    """The standard collect run of the tests on `ckpt`; SIGKILL itself after batch
    ``kill_at = (shard, batch)`` is written (a crash mid-shard)."""
    torch.set_num_threads(1)
    model = load_model(ckpt)
    inputs = task_inputs(load_task(ckpt), N_SEQUENCES, 0, None)

    def on_batch(shard: int, batch: int) -> None:
        if (shard, batch) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    collect(model, inputs, out, config(), on_batch=on_batch)


def rank_main(rank: int, world: int, init_file: str, ckpt: str, out: str) -> None:
    """One gloo rank of a `world`-process run (``torch.multiprocessing.spawn`` target)."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)  # fmt: skip
    try:
        run(ckpt, out)
    finally:
        dist.destroy_process_group()


def killed_main(index: int, ckpt: str, out: str, shard: int, batch: int) -> None:
    """A single-process run killed mid-way (``torch.multiprocessing.spawn`` target)."""
    run(ckpt, out, kill_at=(shard, batch))
