"""``mythos-lens study depth``: accuracy over hop count x loop count, cells marked where more
loops help, stop helping and hurt (:func:`mythos_lens.analysis.summary.depth_marks`)."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mythos_lens.analysis.report import build_report
from mythos_lens.analysis.run import peak_rss_mb
from mythos_lens.analysis.summary import depth_marks, depth_statements
from mythos_lens.analysis.tables import depth_table
from mythos_lens.atomic import AtomicDir
from mythos_lens.checkpoint import load_checkpoint, load_task
from mythos_lens.errors import MythosLensError
from mythos_lens.studies.stats import t_interval


def recipe_group(name: str) -> str:
    """Checkpoint name without its ``-s<seed>`` suffix (the recipe it shares with other seeds)."""
    head, _, tail = name.rpartition("-s")
    return head if head and tail.isdigit() else name


def run_depth_study(
    checkpoints: Sequence[str | Path],
    out: str | Path,
    cfg: Any,
    *,
    overwrite: bool = False,
    plotlyjs: str = "inline",
) -> Path:
    """Accuracy over hops × loops per checkpoint (``depth``), cells marked (``depth_marks``:
    helps / flat / hurts vs the previous loop count, best, overthinking), and the mean over seeds
    of each recipe with a 95 % t-interval (``depth_seeds``: ``group, hops, n_loops, n, mean,
    ci_low, ci_high``). Written atomically to ``out`` with ``report.html``."""
    import plotly.graph_objects as go

    t0 = time.perf_counter()
    atomic = AtomicDir(out, overwrite)
    with atomic as tmp:
        frames = []
        for ck in checkpoints:
            ck = Path(ck)
            model, task = load_checkpoint(ck), load_task(ck)
            if task is None:
                raise MythosLensError(f"{ck} records no task", "a checkpoint trained on a task")
            n_loops = cfg.n_loops or model.cfg.max_loop_iters
            print(f"depth table of {ck.name} ...", flush=True)
            frames.append(depth_table(model, task, cfg, n_loops, ck.name))
        depth = pd.concat(frames, ignore_index=True)
        marks = depth_marks(depth)
        rows = []
        for (grp, hop, n), g in depth.assign(group=depth.checkpoint.map(recipe_group)).groupby(
            ["group", "hops", "n_loops"], sort=True
        ):
            m, lo, hi, k = t_interval(g["accuracy"].to_numpy())
            rows.append({"group": grp, "hops": hop, "n_loops": n, "n": k, "mean": m,
                         "ci_low": lo, "ci_high": hi})  # fmt: skip
        seeds = pd.DataFrame(rows)
        for name, df in (("depth", depth), ("depth_marks", marks), ("depth_seeds", seeds)):
            df.to_parquet(tmp / f"{name}.parquet", index=False)
            df.to_csv(tmp / f"{name}.csv", index=False)
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
            fig.update_layout(title=f"{grp}: accuracy, hops × loops (mean over "
                              f"{int(g.n.max())} seed(s)); ↑ more loops help, ▼ overthinking",
                              xaxis_title="loops at test", yaxis_title="hops")  # fmt: skip
            figs.append((f"{grp}: held-out accuracy; ↑ = significantly above the previous loop "
                         "count, ▼ = significantly below the row's best at a higher loop count "
                         "(in at least half of the seeds).", fig))  # fmt: skip
        meta = {"checkpoints": [str(c) for c in checkpoints],
                "config": dataclasses.asdict(cfg),
                "seconds": round(time.perf_counter() - t0, 1),
                "peak_rss_mb": round(peak_rss_mb(), 1)}  # fmt: skip
        atomic.write_run(json.loads(json.dumps(meta, default=str)))
        html = build_report({"depth": depth}, meta, title="mythos-lens study: depth extrapolation",
                            plotlyjs=plotlyjs, summary=depth_statements(depth),
                            figures=figs)  # fmt: skip
        (tmp / "report.html").write_text(html, encoding="utf-8")
    return Path(out)
