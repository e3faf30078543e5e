"""``mythos-lens study depth``: does looping extrapolate in depth, and does loop t do hop t+1?

Per checkpoint: accuracy over depth (hop count) × loop count, each cell marked helps / flat /
hurts against the previous loop count and overthinking against the row's best
(:func:`mythos_lens.analysis.summary.depth_marks`); the per-loop hop evidence
(:func:`mythos_lens.studies.hop_evidence.hop_evidence`: exit lens, attention, probes, ACT weight)
within and beyond the trained depth. Recipes with several seeds (``name-s<seed>``) are also
summarised over seeds (mean, percentile bootstrap interval).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mythos_lens.analysis.report import build_report
from mythos_lens.analysis.run import peak_rss_mb
from mythos_lens.analysis.summary import depth_marks, depth_statements
from mythos_lens.atomic import AtomicDir
from mythos_lens.errors import MythosLensError
from mythos_lens.studies.parallel import pool_map
from probes.plots import share_heatmap
from probes.stats import bootstrap_ci

HOP_EVIDENCE_LOOPS_PAST_DEPTH = 2  # hop evidence runs max depth + this many loops


def recipe_group(name: str) -> str:
    """Checkpoint name without its ``-s<seed>`` suffix (the recipe it shares with other seeds)."""
    head, _, tail = name.rpartition("-s")
    return head if head and tail.isdigit() else name


def _one_checkpoint(job: tuple[str, Any]) -> dict[str, Any]:
    import torch

    from mythos_lens.adapters import adapter_for
    from mythos_lens.analysis.tables import depth_table
    from mythos_lens.capture import capture
    from mythos_lens.checkpoint import load_checkpoint, load_task, read_config
    from mythos_lens.studies.hop_evidence import hop_evidence
    from mythos_lens.studies.measures import answer_loops

    path, cfg = job
    torch.set_num_threads(1)
    ck = Path(path)
    model, task = load_checkpoint(ck), load_task(ck)
    if task is None or not hasattr(task, "max_hops"):
        raise MythosLensError(f"{ck} records no hop task", "a checkpoint trained on a task")
    tc = read_config(ck).get("metadata", {}).get("train_config", {}) or {}
    n_loops = cfg.n_loops or int(tc.get("eval_loops") or model.cfg.max_loop_iters)
    print(f"depth table of {ck.name} ...", flush=True)
    depth = depth_table(model, task, cfg, n_loops, ck.name)
    hop_loops = task.max_hops + HOP_EVIDENCE_LOOPS_PAST_DEPTH
    hops = hop_evidence(model, task, ck.name, n_loops=hop_loops, per_depth=cfg.depth_examples * 2,
                        seed=cfg.seed)  # fmt: skip
    b = task.generate(cfg.n_examples, "heldout", seed=cfg.seed)  # the trained depths
    tr = capture(model, b.input_ids, n_loops=n_loops, run_all_loops=True,
                 sites=list(adapter_for(model).exit_sites))  # fmt: skip
    matters, _ = answer_loops(model, tr)
    recipe = {"checkpoint": ck.name, "readout_rule": tc.get("readout_rule", "act"),
              "trained_depth": task.train_hops, "trained_loops": n_loops, "task": task.name,
              "lora": tc.get("lora", True),
              "loops_that_matter": " ".join(str(t) for t in matters.loop[matters.matters]),
              "act_weight_sum": float(tr["act_weight"][:, :, -1].double().sum(0).mean())}  # fmt: skip
    return {"depth": depth, "hops": hops, "recipe": recipe}


def seed_summary(depth: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per recipe group, hops and loop count: mean accuracy over seeds and a percentile
    bootstrap interval over them (NaN for one seed). Columns: ``group, hops, n_loops, n, mean,
    ci_low, ci_high``."""
    rows = []
    grouped = depth.assign(group=depth.checkpoint.map(recipe_group))
    for (grp, hop, n), g in grouped.groupby(["group", "hops", "n_loops"], sort=True):
        v = g["accuracy"].to_numpy(float)
        ci = (bootstrap_ci(v, seed=seed, method="percentile") if len(v) >= 2
              else {"low": np.nan, "high": np.nan})  # fmt: skip
        rows.append({"group": grp, "hops": hop, "n_loops": n, "n": len(v),
                     "mean": float(v.mean()), "ci_low": ci["low"], "ci_high": ci["high"]})  # fmt: skip
    return pd.DataFrame(rows)


def depth_figures(seeds: pd.DataFrame, marks: pd.DataFrame,
                  hops: pd.DataFrame) -> list[tuple[str, Any]]:  # fmt: skip
    """Heatmap of accuracy (depth × loops, marks in the cells) per recipe, and per checkpoint
    the exit lens's hop reading (depth × loop)."""
    import plotly.graph_objects as go

    figs = []
    for grp, g in seeds.groupby("group", sort=False):
        grid = g.pivot(index="hops", columns="n_loops", values="mean")
        mk = marks[marks.checkpoint.map(recipe_group) == grp]
        over = mk.groupby(["hops", "n_loops"])["overthinking"].mean().unstack()
        helps = (mk.assign(h=mk["mark"] == "helps").groupby(["hops", "n_loops"])["h"].mean()
                 .unstack())  # fmt: skip
        text = [[f"{grid.iloc[i, j]:.2f}" + ("↑" if helps.iloc[i, j] >= 0.5 else "")
                 + ("▼" if over.iloc[i, j] >= 0.5 else "") for j in range(grid.shape[1])]
                for i in range(grid.shape[0])]  # fmt: skip
        fig = go.Figure(go.Heatmap(z=grid.to_numpy(float), x=grid.columns, y=grid.index,
                                   zmin=0, zmax=1, text=text, texttemplate="%{text}",
                                   colorbar={"title": "accuracy"}))  # fmt: skip
        fig.update_layout(title=f"{grp}: accuracy, depth × loops; ↑ more loops help, "
                          "▼ overthinking", xaxis_title="loops at test", yaxis_title="depth")  # fmt: skip
        figs.append((f"{grp}: held-out accuracy; ↑ = significantly above the previous loop "
                     "count, ▼ = significantly below the row's best at a higher loop count.", fig))  # fmt: skip
    for ck, g in hops.groupby("checkpoint", sort=False):
        fig = share_heatmap(g, "depth", "loop", "exit_reads_hop", title=f"{ck}: a run stopped "
                            "after loop t outputs hop t+1's entity", xaxis_title="loop t",
                            yaxis_title="depth")  # fmt: skip
        figs.append((f"{ck}: exit lens reads hop t+1 (depth × loop); chance "
                     f"{g.chance_exit.iloc[0]:.3f}.", fig))  # fmt: skip
    return figs


def run_depth_study(
    checkpoints: Sequence[str | Path],
    out: str | Path,
    cfg: Any,
    *,
    overwrite: bool = False,
    plotlyjs: str = "inline",
    jobs: int = 1,
) -> Path:
    """Write, atomically to ``out``: ``depth`` (accuracy per checkpoint × depth × loops),
    ``depth_marks``, ``depth_seeds`` (:func:`seed_summary`), ``hop_evidence``
    (:data:`~mythos_lens.studies.hop_evidence.HOP_EVIDENCE_COLUMNS`), ``recipes`` (readout rule,
    trained depth and loops per checkpoint) as parquet + csv, and ``report.html``."""
    t0 = time.perf_counter()
    atomic = AtomicDir(out, overwrite)
    with atomic as tmp:
        job_list = [(str(c), cfg) for c in checkpoints]
        res = pool_map(_one_checkpoint, job_list, jobs)
        depth = pd.concat([r["depth"] for r in res], ignore_index=True)
        hops = pd.concat([r["hops"] for r in res], ignore_index=True)
        recipes = pd.DataFrame([r["recipe"] for r in res])
        marks = depth_marks(depth)
        seeds = seed_summary(depth, cfg.seed)
        tables = {"depth": depth, "depth_marks": marks, "depth_seeds": seeds,
                  "hop_evidence": hops, "recipes": recipes}  # fmt: skip
        for name, df in tables.items():
            df.to_parquet(tmp / f"{name}.parquet", index=False)
            df.to_csv(tmp / f"{name}.csv", index=False)
        meta = {"checkpoints": [str(c) for c in checkpoints],
                "config": dataclasses.asdict(cfg),
                "seconds": round(time.perf_counter() - t0, 1),
                "peak_rss_mb": round(peak_rss_mb(), 1)}  # fmt: skip
        atomic.write_run(json.loads(json.dumps(meta, default=str)))
        html = build_report({"depth": depth}, meta, title="mythos-lens study: depth extrapolation",
                            plotlyjs=plotlyjs, summary=depth_statements(depth),
                            figures=depth_figures(seeds, marks, hops))  # fmt: skip
        (tmp / "report.html").write_text(html, encoding="utf-8")
    return Path(out)
