"""mythos-lens: per-loop capture, instruments, analyses and studies of looped transformers.

This is the only module that knows argparse, and no module imports it. Each subcommand is one ``add_<name>_command(subparsers)`` function that adds its parser and sets
``handler`` (a function ``(args) -> int``) with ``set_defaults``. Handlers import what they need
when they run, so ``mythos-lens --help`` does not pay for torch. Bad input raises
:class:`~mythos_lens.errors.MythosLensError`, printed as one line (``mythos-lens: error: …``) with
exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mythos_lens.errors import MythosLensError, check_int

# A range like 1-1000000000 must not become a billion-element list.
MAX_LIST = 100_000

# --------------------------------------------------------------------------- shared parsing


def parse_ints(text: str | None, what: str = "integers") -> list[int] | None:
    """Integers from the command line: ``"3"`` -> [3]; ``"1-6"`` -> [1 … 6]; ``"1,2,5"`` ->
    [1, 2, 5]; ``None`` -> ``None``. `what` names the option in the error message."""
    if text is None:
        return None
    expected = "an int, a range like 1-6, or a list like 1,2,5"
    try:
        if "-" in text.strip().lstrip("-"):
            lo, hi = (int(x) for x in text.split("-", 1))
            values = None
        else:
            values = [int(x) for x in text.split(",")]
    except ValueError:
        raise MythosLensError(f"{what} {text!r}", expected) from None
    if values is None:
        if hi < lo or hi - lo >= MAX_LIST:
            raise MythosLensError(
                f"{what} {text!r}", f"a range lo-hi with lo <= hi, at most {MAX_LIST} values"
            )
        return list(range(lo, hi + 1))
    if len(values) > MAX_LIST:
        raise MythosLensError(f"{what}: {len(values)} values", f"at most {MAX_LIST}")
    return values


def parse_json_object(text: str | None, option: str) -> dict[str, Any]:
    """A JSON object given on the command line (``{}`` when `text` is None)."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise MythosLensError(
            f"{option} {text!r} is not valid JSON ({exc})", "a JSON object"
        ) from None
    if not isinstance(value, dict):
        raise MythosLensError(f"{option} {text!r}", "a JSON object, e.g. '{\"n_entities\": 6}'")
    return value


def _use_threads(n: int | None) -> None:
    import torch

    torch.set_num_threads(check_int("--threads", n, 1) if n is not None else 1)


# ---------------------------------------------------------------------------------- demo


def _demo(args: argparse.Namespace) -> int:
    from mythos_lens.demo import run_demo

    return run_demo(args.checkpoint, args.loops, args.hops, args.seed)


def add_demo_command(sub: argparse._SubParsersAction) -> None:
    """``mythos-lens demo [--checkpoint DIR] [--loops N]``."""
    p = sub.add_parser("demo", help="capture every loop of a model and print a per-loop summary")
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint directory (default data/checkpoints/pointer-lora-on if shipped)")  # fmt: skip
    p.add_argument("--loops", type=int, default=None, help="loops to run (may exceed training)")
    p.add_argument("--hops", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_demo)


# --------------------------------------------------------------------------------- tasks


def _tasks_list(args: argparse.Namespace) -> int:
    from mythos_lens.tasks.registry import list_tasks

    for info in list_tasks():
        print(f"{info.name:14s} {info.description}")
        print(f"{'':14s} defaults: {json.dumps(info.defaults)}")
    return 0


def _task_from_args(args: argparse.Namespace):
    from mythos_lens.tasks.registry import get_task

    return get_task(args.task, **parse_json_object(args.params, "--params"))


def _tasks_show(args: argparse.Namespace) -> int:
    task = _task_from_args(args)
    hops = parse_ints(args.hops, "--hops")
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
    hops = parse_ints(args.hops, "--hops")
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
        q.add_argument("--params", default=None,
                       help='task parameters as JSON, e.g. {"n_entities": 6}')  # fmt: skip
        q.add_argument("--split", default="heldout", choices=["train", "heldout"])
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--hops", default=None, help="hop counts: 3, 1-6 or 1,2,5 (default 1 … K)")
        q.add_argument("-n", type=int, default=5 if name == "show" else 1000)
        if name == "generate":
            q.add_argument("--out", required=True, help="output path ending in .safetensors")
        q.set_defaults(handler=handler)


# --------------------------------------------------------------------------------- train

_TRAIN_FLAGS = ("seed", "steps", "lr", "batch", "threads", "device", "dtype", "loops", "loops_min")


def _train(args: argparse.Namespace) -> int:
    import dataclasses

    from mythos_lens.train import PRESETS, TrainConfig, check_train_config, preset_config, train

    overrides = parse_json_object(args.set, "--set")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise MythosLensError(f"unknown TrainConfig field(s) {unknown}", f"some of {sorted(known)}")
    for flag in _TRAIN_FLAGS:
        value = getattr(args, flag)
        if value is not None:
            overrides[flag] = value
    if args.lora is not None:
        overrides["lora"] = args.lora == "on"
    if args.no_progress:
        overrides["progress"] = False
    cfg = preset_config(args.preset, **overrides) if args.preset else TrainConfig(**overrides)
    cfg.out_dir = args.out or str(Path(args.checkpoints) / cfg.name)
    check_train_config(cfg)  # before announcing anything
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
    p.add_argument("--preset", default=None,
                   help="named recipe, e.g. pointer-lora-on, pointer-lora-off")  # fmt: skip
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--loops", type=int, default=None, help="loop count (the maximum if sampled)")
    p.add_argument("--loops-min", type=int, default=None,
                   help="sample loops per batch from [this, loops]")  # fmt: skip
    p.add_argument("--lora", choices=["on", "off"], default=None)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
    p.add_argument("--set", default=None, help="other TrainConfig fields as JSON")
    p.add_argument("--out", default=None, help="checkpoint directory (default CHECKPOINTS/<name>)")
    p.add_argument("--checkpoints", default="data/checkpoints")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_train)


# ------------------------------------------------------------------- analyze and study


def analysis_config(args: argparse.Namespace):
    """:class:`~mythos_lens.analysis.config.AnalyzeConfig` from the shared ``analyze`` /
    ``study`` options (validated there, before any work)."""
    from mythos_lens.analysis.config import AnalyzeConfig

    return AnalyzeConfig(
        n_examples=args.n, batch_size=args.batch_size, n_loops=args.loops,
        hops=parse_ints(args.hops, "--hops"), seed=args.seed,
        probe_examples=args.probe_examples,
        depth_loops=parse_ints(args.depth_loops, "--depth-loops"),
        depth_examples=args.depth_examples, progress=not args.no_progress,
    )  # fmt: skip


def add_analysis_options(p: argparse.ArgumentParser, n_default: int = 512) -> None:
    """Options shared by ``analyze`` and ``study``."""
    p.add_argument("-n", type=int, default=n_default, help="held-out examples per checkpoint")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--loops", type=int, default=None, help="loops (default max_loop_iters)")
    p.add_argument("--hops", default=None, help="hop counts of the examples, e.g. 1-3")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--probe-examples", type=int, default=768,
                   help="sequences kept for probes (memory cap)")  # fmt: skip
    p.add_argument("--depth-loops", default=None, help="loop counts of the depth table, e.g. 1-12")
    p.add_argument("--depth-examples", type=int, default=128, help="examples per depth cell")
    add_output_options(p)
    p.add_argument("--no-progress", action="store_true")


def add_output_options(p: argparse.ArgumentParser) -> None:
    """Threads and output options of every command that writes a report directory."""
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default 1)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output dir (only one mythos-lens wrote)")  # fmt: skip
    p.add_argument("--plotlyjs", choices=["inline", "cdn"], default="inline",
                   help="inline: report opens offline (+4.6 MB); cdn: small file")  # fmt: skip


def _analyze(args: argparse.Namespace) -> int:
    cfg = analysis_config(args)
    from mythos_lens.analysis.run import analyze

    _use_threads(args.threads)  # small models on shared cores: 1 is fastest
    t0 = time.perf_counter()
    out = analyze(args.checkpoints, args.out, cfg, ids_file=args.ids, text_file=args.text,
                  overwrite=args.overwrite, plotlyjs=args.plotlyjs)  # fmt: skip
    meta = json.loads((out / "run.json").read_text())
    print(f"wrote {out} ({time.perf_counter() - t0:.1f} s, peak RSS {meta['peak_rss_mb']} MB)")
    print(f"report: {out / 'report.html'}")
    return 0


def add_analyze_command(sub: argparse._SubParsersAction) -> None:
    """``mythos-lens analyze CHECKPOINT... --out DIR``."""
    p = sub.add_parser("analyze", help="run every instrument over many inputs: tables + report")
    p.add_argument("checkpoints", nargs="+",
                   help="model directories: mythos-lens checkpoints or transformers models "
                   "(HRM-Text, ALBERT) saved with save_pretrained")  # fmt: skip
    p.add_argument("--out", required=True, help="output directory (written atomically)")
    p.add_argument("--ids", default=None,
                   help="inputs: dataset .safetensors or text file of token ids (default: task)")  # fmt: skip
    p.add_argument("--text", default=None,
                   help="inputs: text file, one input per line, tokenised with each model "
                   "directory's tokenizer.json")  # fmt: skip
    add_analysis_options(p)
    p.set_defaults(handler=_analyze)


def _study(args: argparse.Namespace) -> int:
    from mythos_lens.atomic import check_output_dir

    if args.out is None and not getattr(args, "train_only", False):
        raise MythosLensError("no --out given", "--out DIR (or --train-only, which writes none)")
    if args.out is not None:
        check_output_dir(args.out, args.overwrite)  # before hours of training, not after
    from mythos_lens.analysis.run import peak_rss_mb

    _use_threads(args.threads)
    t0 = time.perf_counter()
    jobs = check_int("--jobs", args.jobs, 1)
    if args.study == "lora-sensitivity":
        from mythos_lens.studies.sensitivity import exploratory_pairs, run_sensitivity

        seeds = parse_ints(args.seeds, "--seeds") or []
        out = run_sensitivity(exploratory_pairs(args.dir, seeds), args.out, jobs=jobs,
                              overwrite=args.overwrite, cache=args.cache)  # fmt: skip
        print(f"wrote {out} in {time.perf_counter() - t0:.1f} s")
        return 0
    if args.study == "depth":
        from mythos_lens.studies.depth import run_depth_study

        cfg = analysis_config(args)
        cks = args.checkpoints or [str(p) for p in sorted(Path(args.dir).glob("*"))
                                   if (p / "model.safetensors").is_file()]  # fmt: skip
        if not cks:
            raise MythosLensError(f"no checkpoint under {args.dir}", "checkpoint directories")
        out = run_depth_study(cks, args.out, cfg, overwrite=args.overwrite,
                              plotlyjs=args.plotlyjs, jobs=jobs)  # fmt: skip
        print(f"wrote {out} in {time.perf_counter() - t0:.1f} s, peak RSS {peak_rss_mb():.0f} MB")
        return 0
    from mythos_lens.studies.design import get_design
    from mythos_lens.studies.lora import run_lora_study
    from mythos_lens.studies.models import study_models

    design = get_design(args.design)
    if args.dir is None:  # designs share models (same recipe per seed: studies.models)
        args.dir = "data/checkpoints/lora-study" if args.reuse else "runs/lora-study/checkpoints"
    if args.train_only:
        if args.reuse:
            raise MythosLensError("--train-only with --reuse", "one of them")
        from mythos_lens.studies.models import train_in_order

        met = train_in_order(design, args.dir, jobs=jobs)
        print(f"{len(met)} of {len(design.seeds)} seed pairs met the stopping criterion "
              f"({', '.join(map(str, met)) or 'none'}); models in {args.dir}, "
              f"{time.perf_counter() - t0:.0f} s")  # fmt: skip
        return 0
    design.require_endpoints()  # before hours of training, not after
    paths, pairs = study_models(design, args.dir, train=not args.reuse, jobs=jobs)
    train_s = time.perf_counter() - t0
    out = run_lora_study(design, paths, pairs, args.out, jobs=jobs, overwrite=args.overwrite,
                         plotlyjs=args.plotlyjs,
                         extra_meta={"train_wall_seconds": round(train_s, 1),
                                     "reuse": bool(args.reuse), "checkpoints": str(args.dir)})  # fmt: skip
    verdict = json.loads((out / "verdict.json").read_text())
    meta = json.loads((out / "run.json").read_text())
    print(verdict["statement"])
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s (training {train_s:.1f} s), "
          f"peak RSS {meta['peak_rss_mb']:.0f} MB (largest worker "
          f"{meta['peak_rss_mb_workers']:.0f} MB)")  # fmt: skip
    return 0


def add_study_command(sub: argparse._SubParsersAction) -> None:
    """``mythos-lens study lora|depth``."""
    p = sub.add_parser("study", help="flagship studies: LoRA differentiation, depth extrapolation")
    ssub = p.add_subparsers(dest="study", required=True)
    q = ssub.add_parser("lora", help="LoRA-on vs LoRA-off: the pre-registered design of "
                        "mythos_lens/studies/design.py")  # fmt: skip
    q.add_argument("--out", default=None,
                   help="output directory (written atomically; required unless --train-only)")  # fmt: skip
    q.add_argument(
        "--design",
        default="full",
        help="full (v1: 8 seed pairs), v2 (the amendment: fresh seeds 200+) or quick (2 pairs)",
    )
    q.add_argument("--reuse", action="store_true",
                   help="analyse the shipped study checkpoints (no training)")  # fmt: skip
    q.add_argument("--dir", default=None,
                   help="checkpoints: trained into / read from here (default runs/lora-study/"
                   "checkpoints; with --reuse data/checkpoints/lora-study)")  # fmt: skip
    q.add_argument("--jobs", type=int, default=2, help="processes at a time (training, measures)")
    q.add_argument("--train-only", action="store_true",
                   help="train the design's seed pairs in order until enough meet the stopping "
                   "criterion (models already there are kept); measure nothing")  # fmt: skip
    add_output_options(q)
    q.set_defaults(handler=_study)
    s = ssub.add_parser("lora-sensitivity", help="sensitivity curves of the LoRA study's "
                        "candidate endpoints on seed pairs (which can see differentiation?)")  # fmt: skip
    s.add_argument("--dir", default="data/checkpoints/lora-study")
    s.add_argument("--seeds", default="0,1,5,100,101,102,103",
                   help="seed pairs (default: v1's seven complete pairs, now exploratory)")  # fmt: skip
    s.add_argument("--out", required=True)
    s.add_argument("--cache", default=None,
                   help="keep each seed pair's table here as it finishes (resume)")  # fmt: skip
    s.add_argument("--jobs", type=int, default=2)
    s.add_argument("--threads", type=int, default=None)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(handler=_study)
    d = ssub.add_parser("depth", help="accuracy over depth × loops (helps / flat / "
                        "overthinking) and whether loop t does hop t+1")  # fmt: skip
    d.add_argument("checkpoints", nargs="*", help="checkpoint dirs (default: every one in --dir)")
    d.add_argument("--dir", default="data/checkpoints")
    d.add_argument("--out", required=True)
    d.add_argument("--jobs", type=int, default=1, help="processes at a time (one per checkpoint)")
    add_analysis_options(d, n_default=512)
    d.set_defaults(handler=_study)


# ---------------------------------------------------------------------------------- dose


def _dose(args: argparse.Namespace) -> int:
    from mythos_lens.atomic import check_output_dir

    check_output_dir(args.out, args.overwrite)
    _use_threads(args.threads)
    from mythos_lens.studies.sensitivity import run_dose

    doses = _parse_doses(args.doses)
    out = run_dose(args.checkpoints, args.plant, args.out, doses=doses, n_loops=args.loops,
                   n_examples=args.n, seed=args.seed, jobs=check_int("--jobs", args.jobs, 1),
                   overwrite=args.overwrite)  # fmt: skip
    import pandas as pd

    small = pd.read_csv(out / "smallest.csv")
    for r in small.itertuples():
        seen = "blind" if r.blind else f"detects from dose {r.smallest_dose:g}"
        print(f"{r.metric:32s} {seen}")
    print(f"wrote {out}")
    return 0


def _parse_doses(text: str) -> tuple[float, ...]:
    import math

    try:
        doses = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise MythosLensError(f"--doses {text!r}", "numbers separated by commas") from None
    if not doses or any(not math.isfinite(d) or d < 0 for d in doses) or len(doses) > 64:
        raise MythosLensError(f"--doses {text!r}", "1-64 finite doses >= 0")
    return doses


def add_dose_command(sub: argparse._SubParsersAction) -> None:
    """``mythos-lens dose CKPT... --plant NAME``: can a metric see a planted per-loop change?"""
    p = sub.add_parser("dose", help="dose-response of every LoRA-study endpoint to a planted "
                       "per-loop change (is a metric able to see it?)")  # fmt: skip
    p.add_argument("checkpoints", nargs="+", help="OpenMythos checkpoint dirs (one unit each)")
    p.add_argument("--plant", default="lora-rows", help="lora-rows | loop-embedding | "
                   "loop-identity: that per-loop identity at mean + k·(own − mean)")  # fmt: skip
    p.add_argument("--doses", default="0,0.25,0.5,1,2", help="k values (1: the model as it is)")
    p.add_argument("--loops", type=int, default=None, help="loops run (default: evaluated loops)")
    p.add_argument("-n", type=int, default=256, help="held-out examples per checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(handler=_dose)


# ---------------------------------------------------------------------------------- collect


def _collect(args: argparse.Namespace) -> int:
    from mythos_lens.activations.config import CollectConfig

    cfg = CollectConfig(sites=args.sites, n_loops=args.loops, positions=args.positions,
                        store_dtype=args.dtype, batch_size=args.batch_size,
                        shard_size=args.shard_size, instruments=not args.no_instruments,
                        seed=args.seed, progress=not args.no_progress)  # fmt: skip
    device_map = args.device_map
    if device_map is not None and Path(device_map).is_file():
        device_map = Path(device_map).read_text()
    from mythos_lens.activations.run import collect_from_dir

    _use_threads(args.threads)
    t0 = time.perf_counter()
    out = collect_from_dir(args.model, args.out, cfg, ids_file=args.ids, text_file=args.text,
                           mask_file=args.mask, n_examples=args.n, hops=parse_ints(args.hops),
                           device=args.device, offload_dir=args.offload_dir,
                           device_map=parse_json_object(device_map, "--device-map") or None)  # fmt: skip
    man = json.loads((out / "manifest.json").read_text())
    print(f"{out}: {man['tokens']['sequences']} sequences, {len(man['columns'])} columns in "
          f"{len(man['shards'])} shards, tables {man['tables']} ({time.perf_counter() - t0:.1f} s)")  # fmt: skip
    return 0


def add_collect_command(sub: argparse._SubParsersAction) -> None:
    """``mythos-lens collect MODEL --out DIR``."""
    p = sub.add_parser("collect", help="write every loop's activations as Arrow shards "
                       "(datasets' load_from_disk); resumable; torchrun for many processes")  # fmt: skip
    p.add_argument("model", help="model directory (mythos-lens checkpoint or transformers)")
    p.add_argument("--out", required=True, help="dataset directory (a killed run resumes there)")
    p.add_argument("--ids", default=None, help="inputs: dataset .safetensors or token-id text")
    p.add_argument("--text", default=None, help="inputs: text, one per line (tokenizer.json)")
    p.add_argument("-n", type=int, default=512, help="task examples when no --ids / --text")
    p.add_argument("--hops", default=None, help="hop counts of the task examples, e.g. 1-3")
    p.add_argument("--sites", default=None, help="sites to store, e.g. resid_post,block_out "
                   "(default: the carried state)")  # fmt: skip
    p.add_argument("--loops", type=int, default=None, help="loops (default the model's)")
    p.add_argument("--positions", choices=["all", "last", "mask"], default="all")
    p.add_argument("--mask", default=None, help="positions to keep: 0/1 rows like the inputs")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--shard-size", type=int, default=256, help="sequences per shard")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-instruments", action="store_true",
                   help="skip the streamed CKA / router / lens / effective-depth tables")  # fmt: skip
    p.add_argument("--device", default="cpu", help="cpu or cuda (each process its LOCAL_RANK GPU)")
    p.add_argument("--device-map", default=None,
                   help='accelerate device map, JSON or a file: {"prelude": 0, "coda": "disk"}')  # fmt: skip
    p.add_argument("--offload-dir", default=None, help="where disk-offloaded weights go")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default 1)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_collect)


# ------------------------------------------------------------------------ import-checkpoint


def _import_checkpoint(args: argparse.Namespace) -> int:
    from mythos_lens.convert import import_upstream_checkpoint

    out = import_upstream_checkpoint(args.src, args.dst, trust_pickle=args.trust_pickle)
    print(f"wrote {out} (model.safetensors + config.json)")
    return 0


def add_import_checkpoint_command(sub: argparse._SubParsersAction) -> None:
    """``mythos-lens import-checkpoint SRC.pt DST/``."""
    p = sub.add_parser("import-checkpoint",
                       help="convert an upstream training checkpoint (.pt) to safetensors + JSON")  # fmt: skip
    p.add_argument(
        "src", help="upstream .pt file holding {'model': state_dict, 'cfg': MythosConfig}"
    )
    p.add_argument("dst", help="new checkpoint directory")
    p.add_argument("--trust-pickle", action="store_true",
                   help="fully unpickle SRC (runs code stored in it): only for files you trust")  # fmt: skip
    p.set_defaults(handler=_import_checkpoint)


# ---------------------------------------------------------------------------------- main

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_demo_command,
    add_tasks_command,
    add_train_command,
    add_analyze_command,
    add_study_command,
    add_dose_command,
    add_collect_command,
    add_import_checkpoint_command,
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
