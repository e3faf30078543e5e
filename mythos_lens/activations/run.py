"""``mythos-lens collect``: a model run over token sequences, every chosen site at every loop
step written as Arrow shards (:mod:`.layout`, :mod:`.store`), by one process or many
(:mod:`.ranks`), with the streaming instruments summed over them (:mod:`.instruments`).

Work is cut into shards of ``shard_size`` sequences, batches of ``batch_size`` inside a shard;
shard k belongs to rank ``k % world_size``. Neither depends on the number of processes, so N
processes write the tensors one process writes. Memory per process is one batch's capture plus
the instrument sums, whatever the number of tokens.
"""

from __future__ import annotations

import math
import os
import resource
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mythos_lens.activations import instruments, layout, store
from mythos_lens.activations.config import (
    FORMAT,
    CollectConfig,
    directory_fingerprint,
    model_fingerprint,
    tensor_sha256,
)
from mythos_lens.activations.ranks import Ranks
from mythos_lens.adapters import adapter_for
from mythos_lens.analysis.config import Inputs
from mythos_lens.capture import capture
from mythos_lens.errors import MythosLensError
from mythos_lens.model import check_n_loops


def _check_mask(mask: Any, ids: torch.Tensor, mode: str) -> torch.Tensor | None:
    if mode != "mask":
        if mask is not None:
            raise MythosLensError(f"a mask with positions={mode!r}", "positions='mask'")
        return None
    if mask is None:
        raise MythosLensError("positions='mask' without a mask", "a [sequences, seq] 0/1 mask")
    m = torch.as_tensor(mask)
    if (
        tuple(m.shape) != tuple(ids.shape)
        or m.is_floating_point()
        or bool(((m != 0) & (m != 1)).any())
    ):
        raise MythosLensError(f"a mask of shape {tuple(m.shape)}, dtype {m.dtype}",
                              f"0/1 values of shape {tuple(ids.shape)} like the inputs")  # fmt: skip
    return m.bool()


def collect(
    model: Any,
    inputs: Inputs,
    out: str | os.PathLike,
    cfg: CollectConfig | None = None,
    *,
    mask: Any = None,
    model_info: dict[str, str] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> Path:
    """Write the activation dataset of `model` on `inputs` (``[sequences, seq]`` ids) to `out`
    (see :mod:`mythos_lens.activations.store`); resumes a run that `out` already holds.

    Runs on every process of an initialised ``torch.distributed`` group (each writes its own
    shards), or alone. `mask` ``[sequences, seq]`` (0/1) chooses the positions for
    ``positions="mask"``. `model_info` ``{"name", "fingerprint"}`` identifies the model (default:
    a hash of its tensors; give :func:`directory_fingerprint` for a dispatched model).
    ``on_batch(shard, batch)`` runs after each batch is written (progress, tests).
    Returns `out`; its ``manifest.json`` says what is there."""
    t0 = time.perf_counter()
    cfg = cfg or CollectConfig()
    ranks = Ranks.current()
    adapter = adapter_for(model)
    model.eval()
    torch.manual_seed(cfg.seed)
    ids = adapter.check_ids(inputs.input_ids, model).cpu()
    N, T = ids.shape
    m = _check_mask(mask, ids, cfg.positions)
    sites = layout.check_sites(adapter, cfg.sites)
    n_loops = check_n_loops(
        cfg.n_loops if cfg.n_loops is not None else adapter.default_steps(model)
    )
    col = None
    needed = list(sites)
    if cfg.instruments:
        col = instruments.make_collector(model, n_loops, cfg.position, cfg.seed)
        needed += [s for s in col.capture_sites(inputs.task) if s not in needed]

    def run(rows: slice):
        return capture(model, ids[rows], n_loops=n_loops, sites=needed, run_all_loops=True,
                       step_options=cfg.step_options, store_device=cfg.store_device)  # fmt: skip

    first = run(slice(0, 1))  # sizes every column (and the CKA shift) before any work
    columns = layout.columns_of(adapter, first, sites, cfg.store_dtype)
    if col is not None:
        instruments.start(col, first, ranks)
    n_pos = {"all": T, "last": 1, "mask": None}[cfg.positions]
    features = layout.features(columns, n_pos)
    n_shards = math.ceil(N / cfg.shard_size)
    info = model_info or {"name": type(model).__name__, "fingerprint": model_fingerprint(model)}
    plan = {
        "format": FORMAT, "world_size": ranks.world,
        "model": {"name": info["name"], "fingerprint": info["fingerprint"], "adapter": adapter.name},
        "inputs": {"source": inputs.source, "sequences": N, "seq_len": T,
                   "sha256": tensor_sha256(ids)},
        "sites": sites, "n_loops": n_loops, "steps": {k: len(v) for k, v in first.steps.items()},
        "step_options": cfg.step_options, "positions": cfg.positions,
        "mask_sha256": None if m is None else tensor_sha256(m),
        "store_dtype": cfg.store_dtype, "batch_size": cfg.batch_size,
        "shard_size": cfg.shard_size, "n_shards": n_shards, "instruments": cfg.instruments,
        "query_position": cfg.position, "seed": cfg.seed,
        "columns": [c.spec(n_pos) for c in columns],
    }  # fmt: skip
    out = Path(out)
    if store.open_run(out, plan, ranks):
        return out
    per_shard = math.ceil(cfg.shard_size / cfg.batch_size)

    def batches(k: int) -> Iterator[dict[str, Any]]:
        lo, hi = k * cfg.shard_size, min(N, (k + 1) * cfg.shard_size)
        for b, start in enumerate(range(lo, hi, cfg.batch_size)):
            rows = slice(start, min(start + cfg.batch_size, hi))
            tr = run(rows)
            if tr.steps != first.steps:
                raise MythosLensError(f"steps {tr.steps} in sequences {rows.start}…",
                                      f"the steps of the first sequence ({first.steps})")  # fmt: skip
            if col is not None:  # the batch index seeds lens controls: global, not per rank
                with torch.no_grad():
                    col.update(ids[rows], inputs.labels(rows), inputs.task, k * per_shard + b, tr)
            keep = layout.kept_positions(cfg.positions, ids[rows], None if m is None else m[rows])
            yield layout.rows(tr, columns, np.arange(rows.start, rows.stop), ids[rows], keep,
                              n_pos is None, cfg.store_dtype)  # fmt: skip
            if on_batch is not None:
                on_batch(k, b)

    mine = [k for k in range(n_shards) if k % ranks.world == ranks.rank]
    with store.rank_lock(out, ranks.rank):
        record, tensors = store.read_rank(out, ranks.rank)
        done: dict[str, dict] = {} if record is None else record["shards"]
        if record is not None and col is not None:
            instruments.load_state(col, tensors, record["instruments"])
        store.remove_partial(out, [store.shard_file(k, n_shards) for k in mine])
        todo = [k for k in mine if str(k) not in done]
        bar = tqdm(todo, desc=f"rank {ranks.rank}: shards", position=ranks.rank, leave=False,
                   disable=not cfg.progress)  # fmt: skip
        for k in bar:
            rec = store.write_shard(out, store.shard_file(k, n_shards), features, batches(k))
            lo, hi = k * cfg.shard_size, min(N, (k + 1) * cfg.shard_size)
            kept = int(m[lo:hi].sum()) if m is not None else (hi - lo) * (n_pos or 0)
            done[str(k)] = {**rec, "shard": k, "rank": ranks.rank, "sequences": hi - lo,
                            "input_tokens": (hi - lo) * T, "stored_positions": kept}  # fmt: skip
            state, meta = instruments.state(col) if col is not None else ({}, None)
            store.write_rank(out, ranks.rank, {"shards": done, "instruments": meta}, state)
    return _finish(out, plan, features, col, model, info, ranks, done, t0)


def _finish(out, plan, features, col, model, info, ranks, done, t0) -> Path:
    """Every rank: sum the instruments; rank 0: tables, datasets files and the manifest."""
    ranks.barrier()
    if col is not None:
        instruments.reduce(col, ranks)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    parts = ranks.gather_json({"shards": done, "peak_rss_mb": round(rss, 1),
                               "seconds": round(time.perf_counter() - t0, 2)})  # fmt: skip
    if ranks.rank == 0:
        shards = sorted((s for p in parts for s in p["shards"].values()), key=lambda s: s["shard"])
        if [s["shard"] for s in shards] != list(range(plan["n_shards"])):
            raise MythosLensError(f"shards {[s['shard'] for s in shards]} are finished",
                                  f"all {plan['n_shards']} shards")  # fmt: skip
        tables = instruments.tables(col, model, info["name"], plan["seed"]) if col else {}
        totals = {
            k: sum(s[k] for s in shards)
            for k in ("sequences", "input_tokens", "stored_positions", "rows", "bytes")
        }
        manifest = {**plan, "model": {**plan["model"], **info}, "tokens": totals,
                    "shards": shards, "tables": sorted(tables),
                    "ranks": [{"rank": r, "peak_rss_mb": p["peak_rss_mb"], "seconds": p["seconds"]}
                              for r, p in enumerate(parts)]}  # fmt: skip
        store.finish(out, manifest, features, tables)
    ranks.barrier()
    return out


def collect_from_dir(
    model_dir: str | os.PathLike,
    out: str | os.PathLike,
    cfg: CollectConfig,
    *,
    ids_file: str | os.PathLike | None = None,
    text_file: str | os.PathLike | None = None,
    mask_file: str | os.PathLike | None = None,
    n_examples: int = 512,
    hops: list[int] | None = None,
    device: str = "cpu",
    device_map: dict[str, Any] | None = None,
    offload_dir: str | os.PathLike | None = None,
) -> Path:
    """:func:`collect` on a model directory: inputs from `ids_file`, `text_file` (its
    tokenizer) or its task (`n_examples`, `hops`, ``cfg.seed``); the model on `device`, or
    dispatched by accelerate over `device_map` (with `offload_dir` for ``"disk"``). Joins the
    process group a launcher describes (``torchrun``)."""
    from mythos_lens.activations.ranks import process_device, process_group
    from mythos_lens.analysis.config import read_inputs, task_inputs, text_inputs
    from mythos_lens.checkpoint import load_task
    from mythos_lens.inputs import parse_token_ids
    from mythos_lens.loading import check_model_dir, load_model, load_tokenizer

    path = Path(model_dir)
    check_model_dir(path)
    if ids_file is not None and text_file is not None:
        raise MythosLensError("both --ids and --text", "one source of inputs")
    if ids_file is not None:
        inputs = read_inputs(ids_file)
    elif text_file is not None:
        inputs = text_inputs(text_file, load_tokenizer(path))
    else:
        task = load_task(path)
        if task is None:
            raise MythosLensError(f"{path} records no task", "--ids FILE or --text FILE")
        inputs = task_inputs(task, n_examples, cfg.seed, hops)
    mask = None
    if mask_file is not None:
        if not Path(mask_file).is_file():
            raise MythosLensError(f"{mask_file} does not exist", "a text file of 0/1 rows")
        mask = torch.tensor(parse_token_ids(Path(mask_file).read_text(encoding="utf-8")))
    info = {"name": path.name, "fingerprint": directory_fingerprint(path)}
    with process_group(device) as ranks:
        model = load_model(path, "cpu" if device_map else process_device(device, ranks))
        if device_map:
            from mythos_lens.dispatch import dispatch

            model = dispatch(model, device_map, offload_dir)
        return collect(model, inputs, out, cfg, mask=mask, model_info=info)
