"""Task registry, dataset files and the `tasks` CLI."""

import json

import torch

from mythos_lens.cli import main
from mythos_lens.tasks import get_task, list_tasks, task_from_spec
from mythos_lens.tasks.io import load_dataset, save_dataset


def test_registry_lists_and_rebuilds_from_spec():
    names = [t.name for t in list_tasks()]
    assert "pointer" in names and "assoc-recall" in names
    task = get_task("pointer", n_entities=6, train_hops=2)
    again = task_from_spec(json.loads(json.dumps(task.spec())))
    assert again.spec() == task.spec()
    recall = get_task("assoc-recall")
    assert recall.max_hops == 1 and set(recall.generate(50, "train").hops.tolist()) == {1}


def test_dataset_roundtrip(tmp_path):
    task = get_task("pointer")
    batch = task.generate(64, "heldout", seed=2, hops=range(1, 7))
    path, sidecar = save_dataset(batch, task, tmp_path / "d.safetensors", {"split": "heldout"})
    back, task2, meta = load_dataset(path)
    for k, v in batch.tensors().items():
        assert torch.equal(v, back.tensors()[k]), k
    assert task2.spec() == task.spec()
    assert meta["split"] == "heldout" and meta["n_examples"] == 64
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind


def test_cli_tasks(tmp_path, capsys):
    assert main(["tasks", "list"]) == 0
    assert "pointer" in capsys.readouterr().out
    assert main(["tasks", "show", "-n", "2", "--hops", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("-> v") == 2 and "h2" in out
    out_path = tmp_path / "held.safetensors"
    rc = main(["tasks", "generate", "--hops", "1-6", "-n", "60", "--out", str(out_path)])
    assert rc == 0
    batch, _, meta = load_dataset(out_path)
    assert len(batch) == 60 and meta["seed"] == 0 and meta["hops_requested"] == [1, 2, 3, 4, 5, 6]
    assert main(["tasks", "show", "--task", "nope"]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
    assert main(["tasks", "show", "--hops", "x"]) == 2
