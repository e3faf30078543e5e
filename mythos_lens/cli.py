"""``mythos-lens`` command line.

Each subcommand is one ``add_<name>_command(subparsers)`` function that adds its parser and sets
``handler`` (a function ``(args) -> int``) with ``set_defaults``. To add a subcommand, write such a
function and append it to ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from mythos_lens.analyze import add_analyze_command
from mythos_lens.demo import add_demo_command
from mythos_lens.errors import MythosLensError
from mythos_lens.study import add_study_command

# --------------------------------------------------------------------------------------- tasks


def parse_ints(text: str | None) -> list[int] | None:
    """Integers from the command line (hops, loops, seeds): ``"3"`` -> [3]; ``"1-6"`` ->
    [1 … 6]; ``"1,2,5"`` -> [1, 2, 5]; ``None`` -> ``None``."""
    if text is None:
        return None
    try:
        if "-" in text:
            lo, hi = (int(x) for x in text.split("-", 1))
            return list(range(lo, hi + 1))
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise MythosLensError(
            f"hops {text!r}", "an int, a range like 1-6, or a list like 1,2,5"
        ) from None


def _tasks_list(args: argparse.Namespace) -> int:
    from mythos_lens.tasks.registry import list_tasks

    for info in list_tasks():
        print(f"{info.name:14s} {info.description}")
        print(f"{'':14s} defaults: {json.dumps(info.defaults)}")
    return 0


def _task_from_args(args: argparse.Namespace):
    from mythos_lens.tasks.registry import get_task

    params = json.loads(args.params) if args.params else {}
    if not isinstance(params, dict):
        raise MythosLensError(f"--params {args.params!r}", "a JSON object")
    return get_task(args.task, **params)


def _tasks_show(args: argparse.Namespace) -> int:
    task = _task_from_args(args)
    hops = parse_ints(args.hops)
    batch = task.generate(args.n, args.split, args.seed, hops=hops)
    print(json.dumps(task.spec()["layout"], indent=None))
    for i in range(len(batch)):
        text = " ".join(task.decode(batch.input_ids[i]))
        chain = [int(x) for x in batch.hop_entities[i] if x >= 0]
        print(f"{text} -> {task.describe_token(int(batch.answer[i]))}   hops: {chain}")
    return 0


def _tasks_generate(args: argparse.Namespace) -> int:
    from mythos_lens.tasks.io import save_dataset

    task = _task_from_args(args)
    hops = parse_ints(args.hops)
    batch = task.generate(args.n, args.split, args.seed, hops=hops)
    info = {"split": args.split, "seed": args.seed, "hops_requested": hops}
    path, sidecar = save_dataset(batch, task, args.out, info)
    print(f"wrote {len(batch)} {args.split} examples to {path} (+ {sidecar.name})")
    return 0


def add_tasks_command(sub: argparse._SubParsersAction) -> None:
    """``mythos-lens tasks list|show|generate``."""
    p = sub.add_parser("tasks", help="list ground-truth tasks, show examples, write datasets")
    tsub = p.add_subparsers(dest="tasks_command", required=True)
    tsub.add_parser("list", help="list registered tasks").set_defaults(handler=_tasks_list)
    for name, handler, help_ in (
        ("show", _tasks_show, "print decoded examples"),
        ("generate", _tasks_generate, "write a dataset (.safetensors + .json)"),
    ):
        q = tsub.add_parser(name, help=help_)
        q.add_argument("--task", default="pointer")
        q.add_argument(
            "--params", default=None, help='task parameters as JSON, e.g. {"n_entities": 6}'
        )
        q.add_argument("--split", default="heldout", choices=["train", "heldout"])
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--hops", default=None, help="hop counts: 3, 1-6 or 1,2,5 (default 1 … K)")
        q.add_argument("-n", type=int, default=5 if name == "show" else 1000)
        if name == "generate":
            q.add_argument("--out", required=True, help="output path ending in .safetensors")
        q.set_defaults(handler=handler)


# --------------------------------------------------------------------------------------- train


def _train(args: argparse.Namespace) -> int:
    import dataclasses

    from mythos_lens.train import PRESETS, TrainConfig, preset_config, train

    overrides = json.loads(args.set) if args.set else {}
    if not isinstance(overrides, dict):
        raise MythosLensError(f"--set {args.set!r}", "a JSON object of TrainConfig fields")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise MythosLensError(f"unknown TrainConfig field(s) {unknown}", f"some of {sorted(known)}")
    for flag in (
        "seed",
        "steps",
        "lr",
        "batch",
        "threads",
        "device",
        "dtype",
        "loops",
        "loops_min",
    ):
        value = getattr(args, flag)
        if value is not None:
            overrides[flag] = value
    if args.lora is not None:
        overrides["lora"] = args.lora == "on"
    if args.no_progress:
        overrides["progress"] = False
    if args.preset:
        cfg = preset_config(args.preset, **overrides)
    else:
        cfg = TrainConfig(**overrides)
    cfg.out_dir = args.out or str(Path(args.checkpoints) / cfg.name)
    if args.preset is None and not overrides:
        print(f"no --preset or options given; training defaults. Presets: {sorted(PRESETS)}")
    result = train(cfg)
    m = result.metrics
    print(f"wrote {cfg.out_dir} after {m['steps']} steps in {m['train_seconds']} s")
    for h, row in m["heldout_accuracy"].items():
        print(f"  {h} hop(s): held-out accuracy {row['accuracy']:.3f}  "
              f"(chance: uniform {row['uniform']:.3f}, ignoring start {row['ignore_start']:.3f})")  # fmt: skip
    return 0


def add_train_command(sub: argparse._SubParsersAction) -> None:
    """``mythos-lens train --preset NAME [options]``."""
    p = sub.add_parser("train", help="train an upstream OpenMythos on a ground-truth task")
    p.add_argument(
        "--preset", default=None, help="named recipe, e.g. pointer-lora-on, pointer-lora-off"
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--loops", type=int, default=None, help="loop count (the maximum if sampled)")
    p.add_argument(
        "--loops-min", type=int, default=None, help="sample loops per batch from [this, loops]"
    )
    p.add_argument("--lora", choices=["on", "off"], default=None)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
    p.add_argument("--set", default=None, help="other TrainConfig fields as JSON")
    p.add_argument("--out", default=None, help="checkpoint directory (default CHECKPOINTS/<name>)")
    p.add_argument("--checkpoints", default="data/checkpoints")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_train)


# ------------------------------------------------------------------------------------- main

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_demo_command,
    add_tasks_command,
    add_train_command,
    add_analyze_command,
    add_study_command,
]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="mythos-lens", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse `argv`, run the subcommand; bad input prints one line and returns 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except MythosLensError as exc:
        print(f"mythos-lens: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
