"""``mythos-lens analyze``: every instrument over many inputs, to tables and one report.

Flow: inputs (:mod:`.config`) -> batches captured and streamed into a collector
(:mod:`.collect`) -> tables (:mod:`.tables`) -> summary and report (:mod:`.summary`,
:mod:`.report`), written atomically into one output directory.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import torch
from open_mythos.main import OpenMythos
from tqdm.auto import tqdm

from mythos_lens.adapters import adapter_for
from mythos_lens.analysis.collect import Collector
from mythos_lens.analysis.columns import TABLE_COLUMNS
from mythos_lens.analysis.config import AnalyzeConfig, Inputs, read_inputs, task_inputs, text_inputs
from mythos_lens.analysis.report import build_report
from mythos_lens.analysis.tables import (
    collector_tables,
    concat_tables,
    depth_table,
    write_tables,
)
from mythos_lens.atomic import AtomicDir
from mythos_lens.checkpoint import checkpoint_metadata, load_task
from mythos_lens.errors import MythosLensError
from mythos_lens.loading import check_model_dir, load_model, load_tokenizer
from mythos_lens.model import check_n_loops


def analyze_model(
    model: OpenMythos,
    inputs: Inputs,
    cfg: AnalyzeConfig,
    name: str = "model",
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, pd.DataFrame]:
    """Run every instrument on ``model`` over ``inputs``; returns ``{table name: DataFrame}``
    (columns: :data:`TABLE_COLUMNS`). ``on_batch(i)`` is called after each batch (progress,
    tests)."""
    default = adapter_for(model).default_steps(model)
    n_loops = check_n_loops(cfg.n_loops if cfg.n_loops is not None else default)
    if n_loops < 2:
        raise MythosLensError(f"n_loops={n_loops}", ">= 2 loops to compare loops")
    model.eval()
    torch.manual_seed(cfg.seed)
    ids = inputs.input_ids
    col = Collector(model, n_loops, cfg.position, cfg.probe_examples, cfg.seed,
                    cfg.spectral_examples, cfg.spectral_iters, cfg.patch_examples)  # fmt: skip
    starts = list(range(0, len(ids), cfg.batch_size))
    bar = tqdm(starts, desc=f"{name}: batches", leave=False, disable=not cfg.progress)
    for i, s in enumerate(bar):
        sl = slice(s, s + cfg.batch_size)
        with torch.no_grad():
            col.update(ids[sl], inputs.labels(sl), inputs.task, i)
        if on_batch is not None:
            on_batch(i)
    from threadpoolctl import threadpool_limits

    # scipy's L-BFGS on small problems is ~6x slower with multi-threaded BLAS on busy cores.
    with threadpool_limits(limits=cfg.blas_threads, user_api="blas"):
        tables = collector_tables(col, model, cfg, name)
    if inputs.task is not None:
        tables["depth"] = depth_table(model, inputs.task, cfg, n_loops, name)
    else:
        tables["depth"] = pd.DataFrame(columns=list(TABLE_COLUMNS["depth"]))
    tables["_meta"] = pd.DataFrame(
        [
            {
                "checkpoint": name,
                "n_loops": n_loops,
                "n_examples": col.n_seen,
                "n_tokens": col.n_tokens,
                "probe_examples": col.kept,
                "retained_bytes": col.retained_bytes(),
            }
        ]  # fmt: skip
    )
    return tables


def peak_rss_mb(children: bool = False) -> float:
    """Peak resident memory of this process so far (MB, from ``getrusage``); with `children`,
    that of its largest finished child process (e.g. a worker of a process pool)."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024


def analyze(
    checkpoints: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    cfg: AnalyzeConfig | None = None,
    *,
    ids_file: str | os.PathLike | None = None,
    text_file: str | os.PathLike | None = None,
    overwrite: bool = False,
    plotlyjs: str = "inline",
    on_batch: Callable[[int], None] | None = None,
) -> Path:
    """Analyze each model directory (ours or a supported transformers model); write tables,
    ``run.json`` and ``report.html`` to ``out`` atomically. Inputs: the checkpoint's task
    (default), `ids_file` (token ids or a dataset) or `text_file` (one text per line, tokenised
    with each directory's ``tokenizer.json``). Returns ``out``."""
    cfg = cfg or AnalyzeConfig()
    if isinstance(cfg, dict):
        cfg = AnalyzeConfig(**cfg)
    if not checkpoints:
        raise MythosLensError("no checkpoint given", "one or more checkpoint directories")
    # Every input is checked before any work: names, checkpoints (header only), tasks, ids.
    paths = [Path(ck) for ck in checkpoints]
    names = [p.name for p in paths]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise MythosLensError(
            f"checkpoint name {twice[0]!r} given twice ({[str(p) for p in paths if p.name == twice[0]]})",
            "distinct folder names (tables are keyed by them)",
        )
    for p in paths:
        check_model_dir(p)
    if ids_file is not None and text_file is not None:
        raise MythosLensError("both --ids and --text", "one source of inputs")
    shared = read_inputs(ids_file) if ids_file is not None else None
    inputs_of: dict[Path, Inputs | None] = {}
    for p in paths:
        if shared is not None:
            inputs_of[p] = shared
        elif text_file is not None:
            inputs_of[p] = text_inputs(text_file, load_tokenizer(p))
        else:
            task = load_task(p)
            if task is None:
                raise MythosLensError(f"{p} records no task", "--ids FILE or --text FILE")
            inputs_of[p] = task_inputs(task, cfg.n_examples, cfg.seed, cfg.hops)
    t0 = time.perf_counter()
    per_model = []
    atomic = AtomicDir(out, overwrite)
    with atomic as tmp:
        for p in paths:
            model = load_model(p)
            per_model.append(analyze_model(model, inputs_of[p], cfg, p.name, on_batch=on_batch))
        tables = concat_tables(per_model)
        write_tables(tables, tmp)
        meta = {
            "checkpoints": [str(c) for c in checkpoints],
            "train_configs": {
                n: checkpoint_metadata(c).get("train_config")
                for n, c in zip(names, checkpoints, strict=True)
            },
            "config": dataclasses.asdict(cfg),
            "inputs": str(ids_file or text_file or "task held-out split"),
            "models": tables["_meta"].to_dict(orient="records"),
            "columns": {k: v for k, v in TABLE_COLUMNS.items() if k in tables},
            "seconds": round(time.perf_counter() - t0, 1),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "torch_threads": torch.get_num_threads(),
        }
        atomic.write_run(meta)
        html = build_report(tables, meta, title="mythos-lens analysis", plotlyjs=plotlyjs)
        (tmp / "report.html").write_text(html, encoding="utf-8")
    return Path(out)
