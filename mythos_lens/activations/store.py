"""The output directory of a collect run: written so that a killed run resumes and no finished
shard is ever lost.

```
OUT/collect.json                  the plan (written first; a resumed run must match it)
OUT/data-00003-of-00008.arrow     shard 3: one Arrow file each, written beside and renamed
OUT/ranks/rank-00001.safetensors  rank 1's commit record: its finished shards (file, SHA-256,
                                  rows, tokens) and its instrument sums, replaced atomically
                                  after each shard (a shard counts once it is listed here)
OUT/tables/*.parquet, *.csv       instrument tables (rank 0, after the all-reduce)
OUT/dataset_info.json, state.json datasets' save_to_disk layout: load_from_disk(OUT)
OUT/manifest.json                 written last: the plan, token counts, shard hashes
```
Shard k belongs to rank ``k % world_size``. A file lock per rank (``ranks/rank-00001.lock``)
keeps two live processes from writing the same shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mythos_lens.activations.config import FORMAT, file_sha256, plan_mismatch
from mythos_lens.activations.ranks import Ranks
from mythos_lens.atomic import atomic_path, write_json_atomic
from mythos_lens.errors import MythosLensError

PLAN_FILE, MANIFEST_FILE = "collect.json", "manifest.json"
RANKS_DIR, TABLES_DIR = "ranks", "tables"


def shard_file(k: int, n_shards: int) -> str:
    """Shard `k`'s file name (datasets' ``save_to_disk`` names)."""
    return f"data-{k:05d}-of-{n_shards:05d}.arrow"


def _disk_error(what: str, exc: OSError) -> MythosLensError:
    return MythosLensError(
        f"cannot write {what} ({exc.strerror or exc})",
        "free space and a writable output directory; finished shards are kept and the same "
        "command resumes from them",
    )


def open_run(out: Path, plan: dict[str, Any], ranks: Ranks) -> bool:
    """Create `out` with `plan` or check that it holds the same run (rank 0 decides, every rank
    raises the same error). Returns whether the run there is already complete."""
    verdict: dict[str, Any] = {"error": None, "finished": False}
    if ranks.rank == 0:
        try:
            verdict["finished"] = _open_run(out, plan)
        except MythosLensError as exc:
            verdict["error"] = [exc.what, exc.expected]
    verdict = ranks.broadcast_json(verdict)
    if verdict["error"]:
        raise MythosLensError(*verdict["error"])
    return bool(verdict["finished"])


def _open_run(out: Path, plan: dict[str, Any]) -> bool:
    if out.exists() and not out.is_dir():
        raise MythosLensError(f"{out} is a file", "a directory for the activation dataset")
    path = out / PLAN_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise MythosLensError(
                f"{path} is unreadable ({exc})", "a collect.json this tool wrote"
            ) from None
        error = plan_mismatch(old, plan, out)
        if error is not None:
            raise error
        return (out / MANIFEST_FILE).is_file()
    if out.is_dir() and any(out.iterdir()):
        raise MythosLensError(f"{out} is not empty and holds no {PLAN_FILE}",
                              "a new or empty output directory, or one a collect run started")  # fmt: skip
    try:
        (out / RANKS_DIR).mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, plan)
    except OSError as exc:
        raise _disk_error(str(path), exc) from None
    return False


@contextmanager
def rank_lock(out: Path, rank: int) -> Iterator[None]:
    """Hold rank `rank`'s lock of `out` for the body (another live process holding it: error)."""
    from filelock import FileLock, Timeout

    path = out / RANKS_DIR / f"rank-{rank:05d}.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path), timeout=0)
        lock.acquire()
    except Timeout:
        raise MythosLensError(f"another process is writing rank {rank} of {out}",
                              "one collect run at a time per output directory") from None  # fmt: skip
    except OSError as exc:
        raise _disk_error(str(path), exc) from None
    try:
        yield
    finally:
        lock.release()


def _rank_path(out: Path, rank: int) -> Path:
    return out / RANKS_DIR / f"rank-{rank:05d}.safetensors"


def read_rank(out: Path, rank: int) -> tuple[dict[str, Any] | None, dict[str, torch.Tensor]]:
    """Rank `rank`'s commit record and instrument tensors (None, {} before its first shard);
    every shard it lists must still be there."""
    path = _rank_path(out, rank)
    if not path.is_file():
        return None, {}
    try:
        with safe_open(str(path), "pt") as f:
            record = json.loads(f.metadata()["record"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, ValueError, KeyError) as exc:
        raise MythosLensError(
            f"{path} is unreadable ({exc})", "a rank record this tool wrote"
        ) from None
    for rec in record["shards"].values():
        p = out / rec["file"]
        if not p.is_file() or p.stat().st_size != rec["bytes"]:
            raise MythosLensError(f"finished shard {p} is missing or changed",
                                  "the shard back, or a new --out")  # fmt: skip
    return record, tensors


def write_rank(
    out: Path, rank: int, record: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> None:
    """Replace rank `rank`'s commit record (and instrument tensors) atomically."""
    path = _rank_path(out, rank)
    try:
        with atomic_path(path) as tmp:
            data = {k: v.contiguous() for k, v in tensors.items()}
            save_file(data, str(tmp), metadata={"record": json.dumps(record)})
    except OSError as exc:
        raise _disk_error(str(path), exc) from None


def remove_partial(out: Path, files: Iterable[str]) -> None:
    """Delete temporary files a killed process left for these shard files."""
    for name in files:
        for tmp in out.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def write_shard(out: Path, name: str, features: Any, batches: Iterable[dict[str, Any]]) -> dict:
    """Write the rows of `batches` as the Arrow file `out/name` (beside, then renamed); returns
    ``{file, sha256, rows, bytes}``. A failed write leaves no file and raises one clear error."""
    from datasets.arrow_writer import ArrowWriter

    path = out / name
    try:
        with atomic_path(path) as tmp:
            writer = ArrowWriter(features=features, path=str(tmp))
            try:
                for rows in batches:
                    writer.write_batch(rows)
                n_rows, _ = writer.finalize()
            finally:
                writer.close()
            digest = file_sha256(tmp)
            size = tmp.stat().st_size
    except OSError as exc:
        raise _disk_error(str(path), exc) from None
    return {"file": name, "sha256": digest, "rows": n_rows, "bytes": size}


def finish(out: Path, manifest: dict[str, Any], features: Any, tables: dict[str, Any]) -> None:
    """Write the tables, datasets' ``state.json`` / ``dataset_info.json`` and, last,
    ``manifest.json`` (rank 0, once every shard is listed)."""
    from datasets import DatasetInfo

    from mythos_lens.analysis.tables import write_tables

    try:
        tmp = Path(tempfile.mkdtemp(dir=out, prefix=f".{TABLES_DIR}-"))
        write_tables(tables, tmp)
        final = out / TABLES_DIR
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        files = [s["file"] for s in manifest["shards"]]
        digest = json.dumps([s["sha256"] for s in manifest["shards"]]).encode()
        state = {"_data_files": [{"filename": f} for f in files], "_fingerprint":
                 hashlib.sha256(digest).hexdigest()[:16], "_format_columns": None, "_format_kwargs": {},
                 "_format_type": None, "_output_all_columns": False, "_split": None}  # fmt: skip
        write_json_atomic(out / "state.json", state)
        info = asdict(DatasetInfo(features=features, description=f"{FORMAT}: see manifest.json"))
        with atomic_path(out / "dataset_info.json") as path:  # nested keys keep column order
            path.write_text(json.dumps({k: info[k] for k in sorted(info)}, indent=2))
        write_json_atomic(out / MANIFEST_FILE, manifest)
    except OSError as exc:
        raise _disk_error(f"the tables and manifest of {out}", exc) from None
