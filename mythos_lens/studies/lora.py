"""``mythos-lens study lora``: does depth-wise LoRA differentiate iterations?

Runs the design of :mod:`mythos_lens.studies.design` on the models of
:mod:`mythos_lens.studies.models`: every model measured (:mod:`.measures`, parallel processes),
the positive control (:mod:`.control`) on every LoRA-off model, the endpoints tested
(:func:`probes.stats.endpoint_table`, primary also by a paired hierarchical bootstrap over seeds ×
examples), the verdict derived (:mod:`.verdict`). Everything lands in one output directory,
written atomically: ``pairs.csv, models.csv, nulls.csv, loops.csv, endpoints.csv,
descriptives.csv, control.csv, control_tests.csv, verdict.json, design.json, report.html`` (and
for design v2 ``uses.csv``: which models use loop-specific LoRA).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mythos_lens.analysis.run import peak_rss_mb
from mythos_lens.atomic import AtomicDir
from mythos_lens.studies.design import ENDPOINTS, REPRESENTATIONAL, LoraStudyDesign
from mythos_lens.studies.models import ARMS
from mythos_lens.studies.parallel import pool_map
from probes.stats import (
    bootstrap_ci,
    endpoint_table,
    paired_hierarchical_bootstrap,
    paired_sign_flip_test,
)

DESCRIPTIVE = ("accuracy", "n_matter", "act_weight_sum", "lora_delta_norm",
               "log10_kl_lora_removed", "delta_acc_lora_removed")  # fmt: skip


def _measure_job(job: tuple[str, dict[str, Any], str, int, float]) -> dict[str, Any]:
    """One model (``kind`` "model") or one seed's positive control (``kind`` "control": v1
    plants rows at multiples of ``target``, the LoRA-on model's delta norm, in the off model at
    `path`; v2 scales the on model's own row differences at `path` by the design's doses)."""
    from mythos_lens.checkpoint import load_checkpoint, load_task
    from mythos_lens.studies.control import VARIANTS, planted_model
    from mythos_lens.studies.measures import loop_identity_effects, measure_model

    path, design_dict, kind, seed, target = job
    torch.set_num_threads(1)
    d = LoraStudyDesign.from_dict(design_dict)
    model, task = load_checkpoint(path), load_task(path)
    batch = task.generate(d.n_examples, "heldout", seed=d.seed)
    n_loops = int(d.recipe["eval_loops"])
    kw = {"n_loops": n_loops, "probe_splits": d.probe_splits, "seed": d.seed}
    if kind == "model":
        data = measure_model(model, batch, n_null=d.n_null, null_examples=d.null_examples, **kw)
        if d.version >= 2:
            data.values.update(loop_identity_effects(
                model, batch.input_ids, batch.answer, n_loops, n_permutations=d.n_permutations,
                seed=d.seed))  # fmt: skip
        return {"path": path, "data": data}
    if d.version >= 2:
        return {"path": path, "control": _dose_control(model, batch, seed, d, kw)}
    off = measure_model(model, batch, n_null=0, **kw)
    loops = off.matters
    rows = []
    for size in d.control_sizes:
        for variant in VARIANTS:
            m, achieved = planted_model(model, batch.input_ids, n_loops=n_loops, loops=loops,
                                        target_norm=size * target, variant=variant,
                                        seed=d.seed + seed)  # fmt: skip
            v = measure_model(m, batch, n_null=0, **kw).values
            rows += [{"seed": seed, "size": size, "variant": variant, "endpoint": e,
                      "value": v[e], "delta_norm": achieved, "target_norm": size * target}
                     for e in REPRESENTATIONAL]  # fmt: skip
    return {"path": path, "control": rows}


def _dose_control(model: Any, batch: Any, seed: int, d: LoraStudyDesign,
                  kw: dict[str, Any]) -> list[dict[str, Any]]:  # fmt: skip
    """Design v2's positive control in one LoRA-on model: rows = mean + k·(learned − mean) for
    k in 0, the design's doses and 1; the primary and the output effect at each dose."""
    from mythos_lens.dose import lora_rows_plant
    from mythos_lens.studies.sensitivity import dose_response_of

    base, plant = lora_rows_plant(model, kw["n_loops"])
    doses = sorted({0.0, *d.control_doses, 1.0})
    t = dose_response_of(base, plant, doses, batch, n_permutations=d.n_permutations, **kw)
    keep = t.metric.isin([d.primary, "output_kl", "output_delta_acc"])
    return t[keep].assign(seed=seed).to_dict("records")


def primary_bootstrap(
    on: dict[int, Any], off: dict[int, Any], design: LoraStudyDesign
) -> dict[str, Any]:
    """Paired hierarchical bootstrap (seeds, then examples within each model) of on − off of
    the primary measure; each model's examples are coded ``model_index * N + example`` so the
    statistic can recompute the measure on the resampled examples."""
    from mythos_lens.studies.measures import cka_dh

    if design.primary != "cka_dh":  # the only primary with a per-example recomputation
        raise ValueError(f"no hierarchical bootstrap for primary {design.primary!r}")
    models = [*on.values(), *off.values()]
    N = models[0].h.shape[1]

    def codes(i: int) -> np.ndarray:
        return i * N + np.arange(N)

    def stat(c: np.ndarray) -> float:
        c = c.astype(np.int64)  # the bootstrap hands back floats
        return cka_dh(models[int(c[0]) // N], c % N)

    k = len(on)
    return paired_hierarchical_bootstrap(
        {s: codes(i) for i, s in enumerate(on)}, {s: codes(k + i) for i, s in enumerate(off)},
        statistic=stat, n_resamples=design.n_bootstrap, seed=design.seed)  # fmt: skip


def control_tests(control: pd.DataFrame, design: LoraStudyDesign) -> pd.DataFrame:
    """Per planted size and representational endpoint: distinct − same, paired over seeds
    (mean, bootstrap interval, two-sided sign-flip p, detected at α)."""
    rows = []
    for (size, e), g in control.groupby(["size", "endpoint"], sort=True):
        w = g.pivot(index="seed", columns="variant", values="value").dropna()
        diff = (w["distinct"] - w["same"]).to_numpy()
        row = {"size": size, "endpoint": e, "n": len(diff),
               "mean_distinct": float(w["distinct"].mean()), "mean_same": float(w["same"].mean()),
               "mean_diff": float(diff.mean()) if len(diff) else np.nan}  # fmt: skip
        if len(diff) >= 2:
            ci = bootstrap_ci(diff, seed=design.seed, method="percentile")
            t = paired_sign_flip_test(diff, "two-sided")
            expected = ENDPOINTS[e][1]
            right_way = (row["mean_diff"] < 0) if expected == "-" else (row["mean_diff"] > 0)
            row.update(ci_low=ci["low"], ci_high=ci["high"], p_value=t["p_value"],
                       detected=bool(t["p_value"] <= design.alpha and right_way))  # fmt: skip
        rows.append(row)
    return pd.DataFrame(rows)


def dose_control_tests(
    control: pd.DataFrame, models: pd.DataFrame, design: LoraStudyDesign
) -> pd.DataFrame:
    """Design v2's control: the primary's sensitivity curve over the on models (response to
    k·(learned − mean) against the spread of on − off with the differences removed, k = 0)."""
    from mythos_lens.studies.sensitivity import endpoint_directions
    from probes.sensitivity import sensitivity_curve, spread_of

    values = control.rename(columns={"seed": "unit"}).assign(family="lora_rows")
    off = models[(models.arm == "off") & (models.measure == design.primary)].set_index("seed")
    k0 = values[(values.dose == 0) & (values.metric == design.primary)].set_index("unit")
    paired = pd.DataFrame({"metric": design.primary,
                           "value": (k0.value - off.value.reindex(k0.index)).dropna()})  # fmt: skip
    curve = sensitivity_curve(values, spread_of(paired), endpoint_directions(), alpha=design.alpha)
    return curve.rename(columns={"dose": "size"}).assign(
        endpoint=design.primary, detected=curve.detects)  # fmt: skip


def model_uses(models: pd.DataFrame, design: LoraStudyDesign) -> pd.DataFrame:
    """Per model: does it use loop-specific LoRA? Material (KL ≥ ``materiality_kl`` or Δ accuracy
    ≤ ``materiality_acc`` when every loop's row is collapsed to the mean) and beyond its
    example-level null (``p_collapse_lora`` ≤ α) — :func:`probes.sensitivity.classify_use`."""
    from probes.sensitivity import classify_use

    w = models.pivot_table(index=["seed", "arm", "checkpoint"], columns="measure",
                           values="value", aggfunc="first").reset_index()  # fmt: skip
    rows = []
    for r in w.itertuples():
        kl, dacc, p = r.kl_collapse_lora, r.dacc_collapse_lora, r.p_collapse_lora
        rows.append({"seed": r.seed, "arm": r.arm, "checkpoint": r.checkpoint, "kl": kl,
                     "delta_acc": dacc, "p_value": p,
                     "material": bool(kl >= design.materiality_kl
                                      or dacc <= design.materiality_acc),
                     "uses_loop_specific_lora": classify_use(
                         kl, dacc, p, kl_threshold=design.materiality_kl,
                         acc_threshold=design.materiality_acc, alpha=design.alpha)})  # fmt: skip
    return pd.DataFrame(rows)


def descriptives(models: pd.DataFrame, design: LoraStudyDesign) -> pd.DataFrame:
    """Per measure and arm: mean over seeds with a percentile bootstrap interval."""
    rows = []
    for (measure, arm), g in models.groupby(["measure", "arm"], sort=True):
        v = g.sort_values("seed")["value"].to_numpy(float)
        v = v[np.isfinite(v)]
        ci = (bootstrap_ci(v, seed=design.seed, method="percentile") if len(v) >= 2
              else {"low": np.nan, "high": np.nan})  # fmt: skip
        rows.append({"measure": measure, "arm": arm, "n": len(v),
                     "mean": float(v.mean()) if len(v) else np.nan, "ci_low": ci["low"],
                     "ci_high": ci["high"], "values": ",".join(f"{x:.6g}" for x in v)})  # fmt: skip
    return pd.DataFrame(rows)


def run_lora_study(
    design: LoraStudyDesign,
    paths: dict[tuple[str, int], Path],
    pairs: pd.DataFrame,
    out: str | Path,
    *,
    jobs: int = 2,
    overwrite: bool = False,
    plotlyjs: str = "inline",
    extra_meta: dict[str, Any] | None = None,
) -> Path:
    """Measure every (arm, seed) model of `paths`, run the positive control, test the endpoints
    and write the module docstring's files to `out` (atomically)."""
    from mythos_lens.studies.report import lora_report
    from mythos_lens.studies.verdict import lora_verdict

    design.require_endpoints()
    t0 = time.perf_counter()
    atomic = AtomicDir(out, overwrite)
    seeds = sorted({s for _, s in paths})
    with atomic as tmp:
        dd = design.to_dict()
        keys = [(a, s) for s in seeds for a in ARMS]
        res = pool_map(
            _measure_job,
            [(str(paths[k]), dd, "model", k[1], 0.0) for k in keys],
            jobs,
            desc="measuring",
        )
        data = {k: r["data"] for k, r in zip(keys, res, strict=True)}
        planted_in = "on" if design.version >= 2 else "off"  # v2 doses the on model's own rows
        control_jobs = [(str(paths[(planted_in, s)]), dd, "control", s,
                         data[("on", s)].values["lora_delta_norm"]) for s in seeds]  # fmt: skip
        ctrl = pool_map(_measure_job, control_jobs, jobs, desc="measuring")
        control = pd.DataFrame([r for c in ctrl for r in c["control"]])
        models = pd.DataFrame([{"checkpoint": paths[k].name, "arm": k[0], "seed": k[1],
                                "measure": m, "value": v}
                               for k, d in data.items() for m, v in d.values.items()])  # fmt: skip
        nulls = pd.DataFrame([{"checkpoint": paths[k].name, "arm": k[0], "seed": k[1],
                               "test": t, **r} for k, d in data.items()
                              for t, r in d.nulls.items()])  # fmt: skip
        loops = pd.concat([d.loops.assign(checkpoint=paths[k].name, arm=k[0], seed=k[1])
                           for k, d in data.items()], ignore_index=True)  # fmt: skip
        wide = models.pivot(index=["seed", "arm"], columns="measure", values="value")
        diffs = {e: (wide.xs("on", level="arm")[e] - wide.xs("off", level="arm")[e])
                 .dropna().sort_index().to_numpy() for e in design.endpoints}  # fmt: skip
        endpoints = endpoint_table(diffs, design.primary, alpha=design.alpha,
                                   seed=design.seed, method="percentile")  # fmt: skip
        endpoints["meaning"] = endpoints.endpoint.map(lambda e: ENDPOINTS[e][0])
        endpoints["differentiation_sign"] = endpoints.endpoint.map(lambda e: ENDPOINTS[e][1])
        both = [s for s in seeds if all(np.isfinite(data[(a, s)].values[design.primary])
                                        for a in ARMS)]  # fmt: skip
        hb = (primary_bootstrap({s: data[("on", s)] for s in both},
                                {s: data[("off", s)] for s in both}, design)
              if len(both) >= 2 and design.primary == "cka_dh"
              else {"low": np.nan, "high": np.nan})  # fmt: skip
        endpoints["hb_low"] = np.where(endpoints.role == "primary", hb["low"], np.nan)
        endpoints["hb_high"] = np.where(endpoints.role == "primary", hb["high"], np.nan)
        desc = descriptives(models[models.measure.isin([*DESCRIPTIVE, *design.endpoints])],
                            design)  # fmt: skip
        tables = {
            "pairs": pairs,
            "models": models,
            "nulls": nulls,
            "loops": loops,
            "endpoints": endpoints,
            "descriptives": desc,
            "control": control,
        }
        if design.version >= 2:
            from mythos_lens.studies.verdict import lora_verdict_v2

            tables["control_tests"] = dose_control_tests(control, models, design)
            tables["uses"] = model_uses(models, design)
            verdict = lora_verdict_v2(endpoints, tables["control_tests"], tables["uses"], desc,
                                      pairs, design)  # fmt: skip
        else:
            tables["control_tests"] = control_tests(control, design)
            verdict = lora_verdict(endpoints, tables["control_tests"], desc, pairs, design)
        for name, df in tables.items():
            df.to_csv(tmp / f"{name}.csv", index=False)
        (tmp / "verdict.json").write_text(json.dumps(verdict, indent=1))
        (tmp / "design.json").write_text(json.dumps(design.to_dict(), indent=1))
        meta = {"design": design.name, "seed_pairs": seeds,
                "analysis_seconds": round(time.perf_counter() - t0, 1),
                "peak_rss_mb": round(peak_rss_mb(), 1),
                "peak_rss_mb_workers": round(peak_rss_mb(children=True), 1), "jobs": jobs,
                **(extra_meta or {})}  # fmt: skip
        atomic.write_run(json.loads(json.dumps(meta, default=str)))
        (tmp / "report.html").write_text(lora_report(tables, verdict, meta, plotlyjs),
                                         encoding="utf-8")  # fmt: skip
    return Path(out)
