"""``collect`` across processes (issue 20): two gloo ranks spawned here write the shards one
process writes, byte for byte, and the same instrument tables; a run killed mid-shard by SIGKILL
resumes to the same result; a resume with another world size is refused and touches nothing."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
import signal
from pathlib import Path

import collect_worker as worker
import datasets
import pandas as pd
import pytest
import torch
import torch.multiprocessing as tmp

from mythos_lens.activations.store import MANIFEST_FILE, read_rank
from mythos_lens.errors import MythosLensError


@pytest.fixture(scope="module")
def runs(tiny_ckpt, tmp_path_factory):
    """The reference single-process run, a 2-rank gloo run and a run killed in shard 1 (the
    children start first, so their start-up overlaps the reference run)."""
    d = tmp_path_factory.mktemp("runs")
    killed = multiprocessing.get_context("spawn").Process(
        target=worker.killed_main, args=(0, str(tiny_ckpt), str(d / "killed"), 1, 1)
    )
    killed.start()
    ranks = tmp.start_processes(worker.rank_main, nprocs=2, join=False, start_method="spawn",
                                args=(2, str(d / "init"), str(tiny_ckpt), str(d / "two")))  # fmt: skip
    worker.run(str(tiny_ckpt), str(d / "one"))
    while not ranks.join():
        pass
    killed.join()
    return {"dir": d, "killed_exit": killed.exitcode}


def _manifest(out: Path) -> dict:
    return json.loads((out / MANIFEST_FILE).read_text())


def _tables_equal(a: Path, b: Path) -> None:
    names = _manifest(a)["tables"]
    assert names == _manifest(b)["tables"] and {"cka", "router", "lens", "effective_depth"} <= set(
        names
    )
    for name in names:
        x = pd.read_parquet(a / "tables" / f"{name}.parquet")
        y = pd.read_parquet(b / "tables" / f"{name}.parquet")
        exact = [c for c in x.columns if not pd.api.types.is_float_dtype(x[c])]
        pd.testing.assert_frame_equal(x[exact], y[exact], check_exact=True)  # keys and counts
        # floats: sums of the same numbers in another order (float64)
        pd.testing.assert_frame_equal(x, y, check_exact=False, rtol=1e-12, atol=1e-14)


def _files(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and p.suffix != ".lock"}  # fmt: skip


def test_two_ranks_write_the_shards_and_tables_of_one_process(runs):
    one, two = runs["dir"] / "one", runs["dir"] / "two"
    m1, m2 = _manifest(one), _manifest(two)
    assert m2["world_size"] == 2 and [s["rank"] for s in m2["shards"]] == [0, 1, 0]
    # tensor for tensor: the same Arrow bytes, whichever process wrote a shard
    assert [s["sha256"] for s in m1["shards"]] == [s["sha256"] for s in m2["shards"]]
    assert m1["tokens"] == m2["tokens"] and m1["tokens"]["sequences"] == worker.N_SEQUENCES
    a = datasets.load_from_disk(str(one)).with_format("torch")[:]
    b = datasets.load_from_disk(str(two)).with_format("torch")[:]
    assert list(a) == list(b) and all(torch.equal(a[c], b[c]) for c in a)
    _tables_equal(one, two)
    assert len(m2["ranks"]) == 2 and all(r["peak_rss_mb"] > 0 for r in m2["ranks"])


def test_a_killed_run_resumes_to_the_same_result(runs, tiny_ckpt):
    out = runs["dir"] / "killed"
    assert runs["killed_exit"] == -signal.SIGKILL
    record, _ = read_rank(out, 0)
    assert sorted(record["shards"]) == ["0"]  # shard 1 died half-written
    assert list(out.glob(".data-00001-of-00003.arrow.*.tmp")) and not (out / MANIFEST_FILE).exists()
    shard0 = (out / "data-00000-of-00003.arrow").read_bytes()
    worker.run(str(tiny_ckpt), str(out))
    assert (out / "data-00000-of-00003.arrow").read_bytes() == shard0  # kept, not redone
    assert not list(out.glob(".*.tmp"))
    ref = runs["dir"] / "one"
    assert [s["sha256"] for s in _manifest(out)["shards"]] == [
        s["sha256"] for s in _manifest(ref)["shards"]
    ]
    _tables_equal(ref, out)


def test_resuming_with_another_world_size_is_refused_and_changes_nothing(runs, tiny_ckpt, tmp_path):
    out = tmp_path / "two"
    shutil.copytree(runs["dir"] / "two", out)
    (out / MANIFEST_FILE).unlink()  # as if killed before the end
    before = _files(out)
    with pytest.raises(MythosLensError, match=r"started by 2 process\(es\); this run has 1"):
        worker.run(str(tiny_ckpt), str(out))
    assert _files(out) == before
