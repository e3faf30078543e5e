"""Sensitivity curves of the LoRA study's candidate endpoints (design v2's amendment).

Which endpoint can see depth-wise LoRA differentiating loops? Plant it at known doses and see:

- ``lora_rows`` — in each LoRA-on model, rows = mean + k·(learned − mean): k = 0 removes the
  per-loop differences, k = 1 is the model as trained (the dose training produced), k = 2 doubles
  them;
- ``transplant`` — in each LoRA-off model, the paired on model's *trained* LoRA (``down``, ``B``,
  rows) planted with the same k: differentiation with a trained LoRA's potency in a model that
  never learned to use it.

Every candidate (the v1 representational endpoints and the functional loop-identity endpoints of
:data:`mythos_lens.studies.measures.FUNCTIONAL`) is measured at every dose beside the dose's effect
on the output; its spread is the seed-to-seed SD of on − off with nothing planted (the on model
at k = 0 against its off partner) — what the study's paired test has to beat.
:func:`probes.sensitivity.sensitivity_curve` then says where each separates, and which are blind.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from mythos_lens.atomic import AtomicDir
from mythos_lens.studies.design import ENDPOINTS, REPRESENTATIONAL
from mythos_lens.studies.parallel import pool_map

FAMILIES = ("lora_rows", "transplant")
# transplanted rows reach the output weakly (the off model never learned to read them): its doses
# go further, to where the output effect matches what training produced in the on models
DOSES = {"lora_rows": (0.0, 0.25, 0.5, 1.0, 2.0),
         "transplant": (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)}  # fmt: skip


def endpoint_directions() -> dict[str, int]:
    """The sign each endpoint's response takes if it sees the loops differ more."""
    return {e: (1 if sign == "+" else -1) for e, (_, sign) in ENDPOINTS.items()}


def candidate_metrics(
    model: Any, batch: Any, *, n_loops: int, probe_splits: int, seed: int, n_permutations: int = 8
) -> dict[str, float]:
    """Every candidate endpoint of one (possibly planted) model on held-out `batch`."""
    from mythos_lens.studies.measures import FUNCTIONAL, loop_identity_effects, measure_model

    v = measure_model(model, batch, n_loops=n_loops, n_null=0, probe_splits=probe_splits,
                      seed=seed).values  # fmt: skip
    f = loop_identity_effects(model, batch.input_ids, batch.answer, n_loops, seed=seed,
                              n_permutations=n_permutations)  # fmt: skip
    return {**{e: v[e] for e in REPRESENTATIONAL}, **{e: f[e] for e in FUNCTIONAL}}


def _job(job: tuple[str, str, int, dict[str, Any]]) -> pd.DataFrame:
    """One seed pair: both families' dose tables and the off model's metrics (kept in
    ``cfg["cache"]`` when given, so an interrupted run resumes per seed pair)."""
    import hashlib
    import json

    from mythos_lens.atomic import atomic_path

    on_path, off_path, seed, cfg = job
    key = hashlib.sha256(json.dumps([on_path, off_path, seed, {k: v for k, v in cfg.items()
                                                             if k != "cache"}],
                                    sort_keys=True).encode()).hexdigest()[:16]  # fmt: skip
    cached = Path(cfg["cache"]) / f"pair-s{seed}-{key}.csv" if cfg.get("cache") else None
    if cached is not None and cached.is_file():
        return pd.read_csv(cached)
    table = _measure_pair(on_path, off_path, seed, cfg)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cached) as tmp:
            table.to_csv(tmp, index=False)
    return table


def _measure_pair(on_path: str, off_path: str, seed: int, cfg: dict[str, Any]) -> pd.DataFrame:
    from mythos_lens.checkpoint import load_checkpoint, load_task
    from mythos_lens.dose import lora_rows_plant, transplant_lora

    torch.set_num_threads(1)
    on, off, task = load_checkpoint(on_path), load_checkpoint(off_path), load_task(on_path)
    batch = task.generate(cfg["n_examples"], "heldout", seed=cfg["seed"])
    n = cfg["n_loops"]
    kw = {"n_loops": n, "probe_splits": cfg["probe_splits"], "seed": cfg["seed"],
          "n_permutations": cfg["n_permutations"]}  # fmt: skip
    tables = []
    for family in FAMILIES:
        source = on if family == "lora_rows" else transplant_lora(off, on)
        base, plant = lora_rows_plant(source, n)
        t = dose_response_of(base, plant, cfg["doses"][family], batch, **kw)
        tables.append(t.assign(family=family))
    off_values = candidate_metrics(off, batch, **kw)
    tables.append(pd.DataFrame([{"dose": float("nan"), "metric": k, "value": v,
                                 "family": "off_model"} for k, v in off_values.items()]))  # fmt: skip
    return pd.concat(tables, ignore_index=True).assign(unit=seed)


def run_sensitivity(
    pairs: dict[int, tuple[str, str]],
    out: str | Path,
    *,
    n_loops: int = 4,
    n_examples: int = 256,
    probe_splits: int = 3,
    n_permutations: int = 4,
    doses: dict[str, tuple[float, ...]] | None = None,
    seed: int = 0,
    jobs: int = 1,
    overwrite: bool = False,
    cache: str | Path | None = None,
) -> Path:
    """Sensitivity curves over seed pairs ``{seed: (on_dir, off_dir)}``; writes ``doses.csv``
    (every value), ``spread.csv``, ``curves.csv``, ``smallest.csv`` and ``run.json`` to `out`
    (atomically). With `cache`, each seed pair's table is kept there as it finishes and reused
    by a later run with the same settings. Defaults are lighter than the study's measures
    (256 examples, 3 probe splits, 4 permutations): responses and spreads use the same ones."""
    from mythos_lens.analysis.run import peak_rss_mb
    from probes.sensitivity import sensitivity_curve, smallest_detected, spread_of

    t0 = time.perf_counter()
    cfg = {"n_loops": n_loops, "n_examples": n_examples, "probe_splits": probe_splits,
           "n_permutations": n_permutations,
           "doses": {f: list(d) for f, d in (doses or DOSES).items()}, "seed": seed}  # fmt: skip
    atomic = AtomicDir(out, overwrite)
    with atomic as tmp:
        job_cfg = {**cfg, "cache": None if cache is None else str(cache)}
        jobs_list = [(on, off, s, job_cfg) for s, (on, off) in sorted(pairs.items())]
        values = pd.concat(pool_map(_job, jobs_list, jobs, desc="seed pairs"), ignore_index=True)
        values.to_csv(tmp / "doses.csv", index=False)
        on0 = values[(values.family == "lora_rows") & (values.dose == 0)]
        off = values[values.family == "off_model"]
        paired = on0.merge(off, on=["unit", "metric"], suffixes=("_on", "_off"))
        paired["value"] = paired.value_on - paired.value_off
        trained = values[(values.family == "lora_rows") & (values.dose == 1)].merge(
            off, on=["unit", "metric"], suffixes=("_on", "_off"))  # fmt: skip
        spread = spread_of(paired)
        sd_trained = spread_of(trained.assign(value=trained.value_on - trained.value_off))
        pd.DataFrame([{"metric": m, "spread": s, "sd_on_minus_off_trained": sd_trained.get(m)}
                      for m, s in sorted(spread.items())]).to_csv(tmp / "spread.csv",
                                                                  index=False)  # fmt: skip
        curve = sensitivity_curve(
            values[values.family != "off_model"], spread, endpoint_directions()
        )
        curve.to_csv(tmp / "curves.csv", index=False)
        smallest_detected(curve).to_csv(tmp / "smallest.csv", index=False)
        atomic.write_run({"kind": "lora-sensitivity", "pairs": {str(k): v for k, v in
                                                                pairs.items()}, **cfg,
                          "seconds": round(time.perf_counter() - t0, 1),
                          "peak_rss_mb": round(peak_rss_mb(), 1),
                          "peak_rss_mb_workers": round(peak_rss_mb(children=True), 1)})  # fmt: skip
    return Path(out)


PLANTS = ("lora-rows", "loop-embedding", "loop-identity")


def _dose_job(job: tuple[str, str, dict[str, Any]]) -> pd.DataFrame:
    from mythos_lens import dose
    from mythos_lens.checkpoint import load_checkpoint, load_task

    path, plant_name, cfg = job
    torch.set_num_threads(1)
    model, task = load_checkpoint(path), load_task(path)
    batch = task.generate(cfg["n_examples"], "heldout", seed=cfg["seed"])
    n = cfg["n_loops"]
    family = {"lora-rows": dose.lora_rows_plant, "loop-embedding": dose.loop_embedding_plant,
              "loop-identity": dose.loop_identity_plant}[plant_name]  # fmt: skip
    base, plant = family(model, n)
    kw = {"n_loops": n, "probe_splits": cfg["probe_splits"], "seed": cfg["seed"]}
    t = dose_response_of(base, plant, cfg["doses"], batch, **kw)
    return t.assign(unit=Path(path).name, family=plant_name)


def dose_response_of(
    base: Any, plant: Any, doses: list[float], batch: Any, *, n_loops: int, probe_splits: int,
    seed: int, n_permutations: int = 8,
) -> pd.DataFrame:  # fmt: skip
    """:func:`mythos_lens.dose.dose_response` with every candidate endpoint as the metrics."""
    from mythos_lens.dose import dose_response

    def metrics(m: Any) -> dict[str, float]:
        return candidate_metrics(m, batch, n_loops=n_loops, probe_splits=probe_splits, seed=seed,
                                 n_permutations=n_permutations)  # fmt: skip

    return dose_response(base, plant, doses, metrics, batch.input_ids, batch.answer,
                         n_loops=n_loops)  # fmt: skip


def run_dose(
    checkpoints: list[str],
    plant: str,
    out: str | Path,
    *,
    doses: tuple[float, ...] = DOSES["lora_rows"],
    n_loops: int | None = None,
    n_examples: int = 256,
    probe_splits: int = 3,
    seed: int = 0,
    jobs: int = 1,
    overwrite: bool = False,
) -> Path:
    """``mythos-lens dose``: one plant's dose-response on each checkpoint (a unit each); the
    spread is the SD over checkpoints of each metric at dose 0 (unknown with one checkpoint).
    Writes ``doses.csv``, ``curves.csv``, ``smallest.csv``, ``run.json``."""
    from mythos_lens.checkpoint import read_config
    from mythos_lens.errors import MythosLensError, check_int
    from probes.sensitivity import sensitivity_curve, smallest_detected, spread_of

    if plant not in PLANTS:
        raise MythosLensError(f"plant {plant!r}", f"one of {list(PLANTS)}")
    if not checkpoints:
        raise MythosLensError("no checkpoint", "one or more checkpoint directories")
    if n_loops is None:
        tc = read_config(checkpoints[0]).get("metadata", {}).get("train_config", {}) or {}
        n_loops = int(tc.get("eval_loops") or tc.get("loops") or 4)
    cfg = {"n_loops": check_int("--loops", n_loops, 2, 64),
           "n_examples": check_int("-n", n_examples, 8, 100_000),
           "probe_splits": probe_splits, "doses": sorted({0.0, *map(float, doses)}),
           "seed": seed}  # fmt: skip
    t0 = time.perf_counter()
    atomic = AtomicDir(out, overwrite)
    with atomic as tmp:
        tables = pool_map(_dose_job, [(c, plant, cfg) for c in checkpoints], jobs,
                          desc="checkpoints")  # fmt: skip
        values = pd.concat(tables, ignore_index=True)
        values.to_csv(tmp / "doses.csv", index=False)
        spread = spread_of(values[values.dose == 0]) if len(checkpoints) >= 2 else {
            m: float("nan") for m in values.metric.unique()}  # fmt: skip
        curve = sensitivity_curve(values, spread, endpoint_directions())
        curve.to_csv(tmp / "curves.csv", index=False)
        smallest_detected(curve).to_csv(tmp / "smallest.csv", index=False)
        atomic.write_run({"kind": "dose-response", "plant": plant, "checkpoints": checkpoints,
                          **cfg, "seconds": round(time.perf_counter() - t0, 1)})  # fmt: skip
    return Path(out)


def exploratory_pairs(directory: str | Path, seeds: list[int]) -> dict[int, tuple[str, str]]:
    """``{seed: (on_dir, off_dir)}`` of study models under `directory`."""
    from mythos_lens.errors import MythosLensError
    from mythos_lens.studies.models import is_trained, model_dir

    d = Path(directory)
    out = {}
    for s in seeds:
        on, off = model_dir(d, "on", s), model_dir(d, "off", s)
        missing = [p.name for p in (on, off) if not is_trained(p)]
        if missing:
            raise MythosLensError(f"study models missing under {d}: {', '.join(missing)}",
                                  "both arms of every seed pair given")  # fmt: skip
        out[s] = (str(on), str(off))
    return out
