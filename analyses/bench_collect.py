"""Benchmark: ``mythos-lens collect`` with 1 vs 2 processes (one thread each), and memory per
process as the tokens grow 4×.

Models: the shipped ``data/checkpoints/pointer-lora-on`` (its task's held-out examples) and a
tiny random HRM-Text (hidden 64, H = 2, L = 3; random token ids). Each run is a real command:
``python -m mythos_lens.cli collect …`` for one process, ``torchrun --standalone
--nproc-per-node 2 -m mythos_lens.cli collect …`` for two (gloo). Tokens per second = input
tokens / the slowest rank's time inside ``collect`` (``manifest.json``; interpreter start and
model loading excluded, listed separately as wall time). Runs alternate 1, 2, 1, 2 …; the figure
is the median over repeats. Peak RSS per rank comes from ``getrusage`` in each rank. The load
average before and after is recorded: on a busy machine the 2-process speedup means nothing.

    python analyses/bench_collect.py [--sequences 256] [--repeats 3]

Writes ``analyses/results/collect/bench_collect.json`` (the README's at-scale block is rendered
from it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "analyses" / "results" / "collect"
HRM = dict(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
           num_attention_heads=4, head_dim=16, H_cycles=2, L_cycles=3,
           max_position_embeddings=64)  # fmt: skip


def hrm_inputs(tmp: Path, n: int, seq: int) -> tuple[Path, Path]:
    """A saved tiny HRM-Text and a file of `n` random id sequences of length `seq`."""
    import torch
    from transformers import HrmTextConfig, HrmTextForCausalLM

    torch.manual_seed(0)
    model_dir = tmp / "hrm-tiny"
    HrmTextForCausalLM(HrmTextConfig(**HRM)).eval().save_pretrained(model_dir)
    ids = torch.randint(0, HRM["vocab_size"], (n, seq), generator=torch.Generator().manual_seed(1))
    path = tmp / f"hrm-ids-{n}.txt"
    path.write_text("\n".join(" ".join(map(str, row)) for row in ids.tolist()) + "\n")
    return model_dir, path


def run(model: Path, inputs: list[str], out: Path, ranks: int, extra: list[str]) -> dict:
    """One collect command; its manifest's figures and its wall time."""
    cli = ["-m", "mythos_lens.cli", "collect", str(model), "--out", str(out), *inputs,
           "--threads", "1", "--no-progress", "--batch-size", "16", "--shard-size", "32", *extra]  # fmt: skip
    launcher = [] if ranks == 1 else ["-m", "torch.distributed.run", "--standalone",
                                      "--nproc-per-node", str(ranks)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *launcher, *cli], check=True, env=env,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    wall = time.perf_counter() - t0
    man = json.loads((out / "manifest.json").read_text())
    seconds = max(r["seconds"] for r in man["ranks"])
    tokens = man["tokens"]["input_tokens"]
    return {"ranks": ranks, "tokens": tokens, "collect_seconds": seconds,
            "tokens_per_s": round(tokens / seconds, 1), "wall_seconds": round(wall, 2),
            "peak_rss_mb": [r["peak_rss_mb"] for r in man["ranks"]]}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sequences", type=int, default=256, help="sequences of the small run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--without-instruments", action="store_true",
                   help="also time --no-instruments runs (the small size)")  # fmt: skip
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        n = args.sequences
        models = {"pointer-lora-on": ROOT / "data" / "checkpoints" / "pointer-lora-on"}
        hrm_dir, _ = hrm_inputs(tmp, n, 32)
        models["hrm-text-tiny"] = hrm_dir
        for name, model in models.items():
            for size in (n, 4 * n):
                if name == "hrm-text-tiny":
                    inputs = ["--ids", str(hrm_inputs(tmp, size, 32)[1])]
                else:
                    inputs = ["-n", str(size)]
                repeats = args.repeats if size == n else 1
                variants = ([], ["--no-instruments"]) if args.without_instruments else ([],)
                for instruments in variants if size == n else ([],):
                    for r in range(repeats):
                        for ranks in (1, 2):
                            out = tmp / f"{name}-{size}-{ranks}-{len(instruments)}-{r}"
                            res = run(model, inputs, out, ranks, instruments)
                            rows.append({"model": name, "instruments": not instruments,
                                         "repeat": r, **res})  # fmt: skip
                            print(json.dumps(rows[-1]), flush=True)
    summary = []
    for key in sorted({(r["model"], r["instruments"], r["tokens"]) for r in rows}):
        for ranks in (1, 2):
            sel = [r for r in rows if (r["model"], r["instruments"], r["tokens"]) == key
                   and r["ranks"] == ranks]  # fmt: skip
            summary.append({"model": key[0], "instruments": key[1], "tokens": key[2],
                            "ranks": ranks, "runs": len(sel),
                            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in sel),
                            "wall_seconds": statistics.median(r["wall_seconds"] for r in sel),
                            "peak_rss_mb": max(max(r["peak_rss_mb"]) for r in sel)})  # fmt: skip
    flag = " --without-instruments" if args.without_instruments else ""
    result = {"command": f"python analyses/bench_collect.py --sequences {n} --repeats "
              f"{args.repeats}{flag}",
              "cpus": os.cpu_count(), "load_average_before": [round(x, 2) for x in load_before],
              "load_average_after": [round(x, 2) for x in os.getloadavg()],
              "batch_size": 16, "shard_size": 32, "summary": summary, "runs": rows}  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from mythos_lens.atomic import write_json_atomic

    write_json_atomic(out / "bench_collect.json", result)
    for s in summary:
        print(s)


if __name__ == "__main__":
    main()
