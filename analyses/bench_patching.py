"""Benchmark: one full loop × position patching sweep (every loop, every position, h_t) of one
18-token input at 6 loops on a shipped checkpoint (target < 2 s on 2 cores), and the LoRA
cross-patch matrix of the same input. Median of ``--runs`` after a warm-up.

    python analyses/bench_patching.py [--runs 5] [--checkpoint data/checkpoints/pointer-lora-on]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from mythos_lens.checkpoint import load_checkpoint, load_task
from mythos_lens.patching import lora_cross_patch, patch_sweep

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    # Small models: one thread; two OpenMP threads spin when the other core is busy (100x).
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--checkpoint", default=str(REPO / "data/checkpoints/pointer-lora-on"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, task = load_checkpoint(args.checkpoint), load_task(args.checkpoint)
    batch = task.generate(1, "heldout", seed=0, hops=[3])
    corrupt = task.corrupt(batch, seed=0).input_ids

    def sweep() -> None:
        patch_sweep(model, batch.input_ids, corrupt, n_loops=6)

    def cross() -> None:
        lora_cross_patch(model, batch.input_ids, n_loops=6)

    for name, fn in (("loop x position sweep (6 x 18 cells)", sweep),
                     ("LoRA cross-patch (6 loops x 6 rows)", cross)):  # fmt: skip
        fn()
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        print(f"{name}: median {statistics.median(times):.3f} s over {args.runs} runs "
              f"(min {min(times):.3f}, max {max(times):.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
