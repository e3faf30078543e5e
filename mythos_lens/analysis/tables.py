"""From a finished collector to tidy tables (columns: :data:`~mythos_lens.analysis.columns.TABLE_COLUMNS`), plus the depth table and table I/O."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from open_mythos.main import OpenMythos

from mythos_lens.analysis.collect import Collector
from mythos_lens.analysis.columns import TABLE_COLUMNS
from mythos_lens.analysis.config import AnalyzeConfig
from mythos_lens.capture import read_params
from mythos_lens.evaluate import depth_accuracy
from mythos_lens.tasks.pointer import PointerTask
from probes.convergence import rho_A
from probes.effective_depth import mark_loops
from probes.linear import hop_matrix, loop_channels, probe, probe_loop_index, summarize
from probes.lora import lora_delta_ratio, lora_scale_cosine
from probes.routing import (
    expert_load,
    load_from_counts,
    load_summary,
    overlap_matrix,
    random_overlap_baseline,
    summarize_load,
)


def _cat(buf: dict[str, list[torch.Tensor]], key: str, dim: int) -> torch.Tensor:
    return torch.cat(buf[key], dim=dim)


def probe_tables(col: Collector, cfg: AnalyzeConfig, name: str) -> pd.DataFrame:
    """Loop-index probes (with / without the loop-embedding channels) and hop probes."""
    buf = col.buffer
    n = col.kept
    if n < cfg.probe_splits:
        return pd.DataFrame(columns=list(TABLE_COLUMNS["probes"]))
    types = _cat(buf, "types", 0)  # [N, 1]
    frames = []
    kw = dict(n_splits=cfg.probe_splits, seed=cfg.seed)
    drop = loop_channels(col.d)
    for role in ("state", "block_in"):
        if role not in buf:
            continue
        site = col.site(role)
        acts = _cat(buf, role, 1)  # [L, N, 1, d]
        # the loop-index sinusoid lives in the first d/8 channels of OpenMythos's block input
        variants = (
            (("all", None), ("no_loop_emb", drop)) if "lora" in col.roles else (("all", None),)
        )
        for channels, dc in variants:
            s = summarize(probe_loop_index(acts, types=types, drop_channels=dc, **kw))
            frames.append(s.assign(probe="loop_index", site=site, channels=channels, loop=-1,
                                   hop=-1))  # fmt: skip
    if "hop_entities" in buf:
        he = _cat(buf, "hop_entities", 0)
        hops = _cat(buf, "hops", 0)
        labels = {}
        for j in range(1, int(hops.max()) + 1):
            lab = he[:, j - 1].clone()
            lab[hops < j] = -1
            if int((lab >= 0).sum()) >= 2 * cfg.probe_splits:
                labels[j] = lab.view(n, 1)
        acts = _cat(buf, "state", 1)
        if labels:
            hm = hop_matrix(acts, labels, types=types, **kw)
            # What memorising the input token type alone gives: the same probe on a one-hot of
            # the type (the start key). The control task above measures probe capacity instead.
            onehot = torch.nn.functional.one_hot(types.view(-1)).float()
            extra = []
            for j, lab in labels.items():
                s = summarize(probe(onehot, lab.view(-1), torch.arange(n), **kw))
                v = s[s.metric == "task_acc"].iloc[0]
                extra += [{"loop": t, "hop": j, "metric": "type_only_acc", "mean": v["mean"],
                           "std": v["std"], "n_folds": v["n_folds"]}
                          for t in sorted(hm.loop.unique())]  # fmt: skip
            hm = pd.concat([hm, pd.DataFrame(extra)], ignore_index=True)
            hm["probe"] = "hop_" + hm["hop"].astype(str)
            frames.append(hm.assign(site=col.site("state"), channels="all"))
    out = pd.concat(frames, ignore_index=True)
    out["checkpoint"] = name
    out["n_examples"] = n
    if "total" in out.columns:
        conv = out["metric"] == "not_converged"
        out.loc[conv, "mean"] = out.loc[conv, "total"]
    cols = ["checkpoint", "probe", "site", "channels", "loop", "hop", "metric", "mean", "std",
            "n_folds", "n_examples"]  # fmt: skip
    return out[cols].sort_values(cols[:7]).reset_index(drop=True)


def collector_tables(col: Collector, model: OpenMythos, cfg: AnalyzeConfig, name: str) -> dict:
    tables: dict[str, pd.DataFrame] = {}
    names = {"state": col.site("state"), "delta": "delta_h", "block_out": col.site("block_out")}
    frames = [acc.table(names[role]) for role, acc in col.cka.items()]
    cka = pd.concat(frames, ignore_index=True)
    cka.insert(0, "checkpoint", name)
    cka["n_tokens"] = col.n_tokens
    tables["cka"] = cka

    ro = col.router.frame(["loop_a", "loop_b", "metric"])
    if len(ro):
        mats = []
        for metric in ("overlap_at_k", "jaccard"):
            sub = ro[ro.metric == metric].rename(columns={"value": metric})
            mats.append(overlap_matrix(sub, metric))
        ro = pd.concat(mats, ignore_index=True)
        base = random_overlap_baseline(col.k, col.E)
        ro["random_baseline"] = ro["metric"].map(base)
        ro["n_tokens"] = col.n_tokens
    tables["router"] = ro.assign(checkpoint=name)

    lens = col.lens.frame(["lens", "loop", "metric"])
    lens.insert(0, "checkpoint", name)
    tables["lens"] = lens

    conv = col.conv.frame(["loop", "metric"]).drop(columns="n")
    params = read_params(col.adapter, model)
    extra = []
    if "injection_A" in params:
        extra.append(pd.DataFrame([{"loop": -1, "metric": "rho_A",
                                    "value": rho_A(params["injection_A"])}]))  # fmt: skip
    if col.spectral is not None:
        extra.append(col.spectral)
    conv = pd.concat([conv, *extra], ignore_index=True)
    conv.insert(0, "checkpoint", name)
    tables["convergence"] = conv

    ab = col.ablation.frame(["intervention", "ablated_loop", "metric"])
    ab.insert(0, "checkpoint", name)
    tables["ablation"] = ab

    acc = col.accuracy.frame(["what", "hops"])
    if len(acc):
        wide = acc.pivot(index="hops", columns="what", values="value").reset_index()
        counts = acc[acc.what == "accuracy"].set_index("hops")["n"]
        wide["n"] = wide["hops"].map(counts).astype(int)
        wide.insert(0, "checkpoint", name)
        tables["accuracy"] = wide[list(TABLE_COLUMNS["accuracy"])]
    else:
        tables["accuracy"] = pd.DataFrame(columns=list(TABLE_COLUMNS["accuracy"]))

    if "experts" in col.buffer:
        ids_all = _cat(col.buffer, "experts", 1)
        tables["load"] = load_summary(ids_all, col.E).assign(checkpoint=name)
        tables["expert_load"] = expert_load(ids_all, col.E).assign(checkpoint=name)
    elif col.expert_counts is not None:  # streamed: every sequence at the query position
        tables["expert_load"] = load_from_counts(col.expert_counts).assign(checkpoint=name)
        tables["load"] = summarize_load(tables["expert_load"]).assign(checkpoint=name)
    else:
        tables["load"] = tables["expert_load"] = pd.DataFrame(columns=["loop"])

    if "lora" in col.buffer:
        scale = params["lora_scale"]
        rows_used = [min(t, scale.shape[0] - 1) for t in range(col.n_loops)]
        lora = lora_delta_ratio(_cat(col.buffer, "lora", 1), _cat(col.buffer, "block_out", 1))
        norms = pd.DataFrame({"loop": range(col.n_loops), "metric": "scale_norm",
                              "value": [float(scale[r].norm()) for r in rows_used]})  # fmt: skip
        tables["lora"] = pd.concat([norms, lora], ignore_index=True).assign(checkpoint=name)
        tables["lora_cosine"] = lora_scale_cosine(scale).assign(checkpoint=name)
    else:
        tables["lora"] = tables["lora_cosine"] = pd.DataFrame(columns=["loop"])

    tables["probes"] = probe_tables(col, cfg, name)
    tables.update(col.causal.tables(name))
    matters = col.causal.matters()
    for k in LOOP_TABLES:
        tables[k] = mark_loops(tables[k], matters)
    return {k: v.reindex(columns=list(TABLE_COLUMNS[k])) for k, v in tables.items()}


# Tables with a loop axis: each gets ``loop_matters`` (does any token need that loop?).
LOOP_TABLES = ("cka", "router", "lens", "convergence", "ablation", "load", "lora", "probes",
               "attention_reads", "patching")  # fmt: skip


def depth_table(
    model: OpenMythos, task: PointerTask, cfg: AnalyzeConfig, n_loops: int, name: str
) -> pd.DataFrame:
    """Held-out accuracy per (hop count, loop count): ``cfg.depth_examples`` examples per hop
    count in ``cfg.depth_hops`` (default 1 … task.max_hops), loop counts ``cfg.depth_loops``
    (default 1 … 2·n_loops). Columns: ``TABLE_COLUMNS["depth"]``."""
    loops = cfg.depth_loops or list(range(1, 2 * n_loops + 1))
    hops = cfg.depth_hops or list(range(1, task.max_hops + 1))
    df = depth_accuracy(model, task, hops, loops, cfg.depth_examples, cfg.seed + 2,
                        desc=f"{name}: accuracy vs loops", progress=cfg.progress)  # fmt: skip
    df = df.assign(checkpoint=name, n=cfg.depth_examples)
    return df[list(TABLE_COLUMNS["depth"])]


def concat_tables(per_model: Sequence[dict[str, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    """Concatenate the tables of several models (same names)."""
    names = list(dict.fromkeys(k for t in per_model for k in t))
    out = {}
    for k in names:
        frames = [t[k] for t in per_model if k in t and len(t[k])]
        out[k] = pd.concat(frames, ignore_index=True) if frames else per_model[0][k]
    return out


def write_tables(tables: dict[str, pd.DataFrame], directory: Path) -> None:
    """Each table as ``<name>.parquet`` and ``<name>.csv`` (tables starting with _ are skipped)."""
    for name, df in tables.items():
        if name.startswith("_"):
            continue
        df = df.reset_index(drop=True)
        df.to_parquet(directory / f"{name}.parquet", index=False)
        df.to_csv(directory / f"{name}.csv", index=False)
