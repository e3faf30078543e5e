"""``collect`` in one process (issue 20): the dataset reads back with ``load_from_disk`` under
the documented column names and shapes, equal to ``capture``; SAELens's cached-activation
contract and a crosscoder's read; positions last / mask; store dtypes; HRM-Text; bad input (a
directory of another model, a target that cannot be written) gives one error and loses no
finished shard."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
from pathlib import Path

import collect_worker as worker
import datasets
import numpy as np
import pytest
import torch
from hrm_models import hrm_model

from mythos_lens.activations.config import CollectConfig
from mythos_lens.activations.layout import to_store_dtype
from mythos_lens.activations.run import collect
from mythos_lens.activations.store import MANIFEST_FILE, read_rank
from mythos_lens.analysis.config import Inputs, task_inputs
from mythos_lens.capture import capture
from mythos_lens.checkpoint import load_task
from mythos_lens.errors import MythosLensError
from mythos_lens.loading import load_model

SITES = ["resid_post", "block_out", "halt_prob", "expert_ids"]


@pytest.fixture(scope="module")
def model(tiny_ckpt):
    return load_model(tiny_ckpt)


@pytest.fixture(scope="module")
def inputs(tiny_ckpt):
    return task_inputs(load_task(tiny_ckpt), worker.N_SEQUENCES, 0, None)


@pytest.fixture(scope="module")
def ref(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "out"
    worker.run(str(tiny_ckpt), str(out))
    return out


def _captured(model, ids, sites, shard=5, batch=3, **kw) -> dict[str, torch.Tensor]:
    """Each site ``[step, sequence, pos, ...]``, captured in collect's batches (the batch a
    sequence runs in changes its float rounding, so collect's plan fixes both sizes)."""
    parts = [capture(model, ids[s : min(s + batch, lo + shard, len(ids))], sites=sites, **kw)
             for lo in range(0, len(ids), shard) for s in range(lo, min(lo + shard, len(ids)), batch)]  # fmt: skip
    return {s: torch.cat([p[s] for p in parts], dim=1) for s in sites}


def _manifest(out: Path) -> dict:
    return json.loads((out / MANIFEST_FILE).read_text())


def _hashes(out: Path) -> list[str]:
    return [s["sha256"] for s in _manifest(out)["shards"]]


def test_load_from_disk_reads_back_every_loop_under_its_hook_name(ref, model, inputs):
    ds = datasets.load_from_disk(str(ref))
    n, T = inputs.input_ids.shape
    steps = [f"recurrent.loop.{t}.hook_{s}" for s in SITES for t in range(3)]
    assert ds.column_names == ["seq", "positions", "token_ids", *steps] and len(ds) == n
    assert ds.features["recurrent.loop.2.hook_resid_post"].shape == (T, 32)
    assert ds.features["recurrent.loop.0.hook_expert_ids"].shape == (T, 2)
    man = _manifest(ref)
    assert [c["name"] for c in man["columns"]] == steps and man["steps"] == {"loop": 3}
    assert man["tokens"]["input_tokens"] == n * T == man["tokens"]["stored_positions"]
    assert man["model"]["adapter"] == "openmythos" and len(man["model"]["fingerprint"]) == 64
    assert sorted(man["shards"][0]) == ["bytes", "file", "input_tokens", "rank", "rows",
                                        "sequences", "sha256", "shard", "stored_positions"]  # fmt: skip
    got = ds.with_format("torch")[:]
    tr = _captured(model, inputs.input_ids, SITES, run_all_loops=True)
    for s in SITES:
        for t in range(3):
            col = got[f"recurrent.loop.{t}.hook_{s}"]
            assert torch.equal(col, tr[s][t].to(col.dtype))
    assert torch.equal(got["seq"], torch.arange(n))
    assert torch.equal(got["token_ids"], inputs.input_ids.int())
    assert torch.equal(got["positions"][0], torch.arange(T, dtype=torch.int32))


def test_saelens_cached_activations_contract_and_a_crosscoder_read(ref, model, inputs):
    """What SAELens's ActivationsStore does with a cached dataset: load_from_disk, check the
    hook column's feature shape is (context_size, d_in), set_format torch on the hook and
    token_ids columns, read rows and flatten to [tokens, d_in]. A crosscoder stacks loops."""
    n, T = inputs.input_ids.shape
    hook = "recurrent.loop.1.hook_resid_post"
    ds = datasets.load_from_disk(str(ref))
    assert ds.features[hook].shape == (T, 32)
    ds.set_format(type="torch", columns=[hook, "token_ids"], dtype=torch.float32)
    rows = ds[4:12]
    acts = rows[hook].reshape(-1, 32)  # [tokens, d] for an SAE on loop 1
    tr = _captured(model, inputs.input_ids, ["resid_post"], run_all_loops=True)
    assert acts.shape == (8 * T, 32)
    assert torch.equal(acts, tr["resid_post"][1, 4:12].reshape(-1, 32))
    assert rows["token_ids"].shape == (8, T)
    loops = [f"recurrent.loop.{t}.hook_resid_post" for t in range(3)]
    both = datasets.load_from_disk(str(ref)).with_format("torch", columns=loops)[:]
    cross = torch.stack([both[c] for c in loops], dim=2).reshape(-1, 3, 32)  # [tokens, loop, d]
    assert torch.equal(cross, tr["resid_post"].permute(1, 2, 0, 3).reshape(-1, 3, 32))


def test_positions_last_and_mask_and_store_dtypes(model, inputs, tmp_path):
    ids = inputs.input_ids[:7]
    few = Inputs(ids, source="test")
    n, T = ids.shape
    tr = _captured(model, ids, ["resid_post", "halt_prob"], 5, 4, run_all_loops=True)
    cfg = dict(sites=["resid_post", "halt_prob"], batch_size=4, shard_size=5, instruments=False,
               progress=False)  # fmt: skip
    last = collect(model, few, tmp_path / "last", CollectConfig(**cfg, positions="last",
                                                                 store_dtype="bfloat16"))  # fmt: skip
    ds = datasets.load_from_disk(str(last))
    assert ds.features["recurrent.loop.0.hook_resid_post"].shape == (1, 32)
    got = ds.with_format("torch")[:]["recurrent.loop.2.hook_resid_post"]
    assert torch.equal(got, tr["resid_post"][2][:, -1:].to(torch.bfloat16).float())
    assert not torch.equal(got, tr["resid_post"][2][:, -1:])  # really rounded
    mask = torch.zeros(n, T, dtype=torch.int64)
    mask[:, 0] = 1
    mask[::2, T // 2 :] = 1  # rows of different lengths
    out = collect(model, few, tmp_path / "mask",
                  CollectConfig(**cfg, positions="mask", store_dtype="float16"), mask=mask)  # fmt: skip
    ds = datasets.load_from_disk(str(out))
    assert ds.features["recurrent.loop.0.hook_resid_post"].shape == (None, 32)
    assert _manifest(out)["tokens"]["stored_positions"] == int(mask.sum())
    for i, row in enumerate(ds.with_format("numpy")):
        keep = mask[i].bool()
        assert row["positions"].tolist() == torch.nonzero(keep)[:, 0].tolist()
        want = tr["resid_post"][1, i, keep].half().numpy()
        assert np.array_equal(row["recurrent.loop.1.hook_resid_post"], want)
        assert np.array_equal(
            row["recurrent.loop.1.hook_halt_prob"], tr["halt_prob"][1, i, keep].half().numpy()
        )
    with pytest.raises(MythosLensError, match="beyond float16's range"):
        to_store_dtype(torch.tensor([1.0, 7e4]), "float16", "x")
    with pytest.raises(MythosLensError, match="0/1 values of shape"):
        collect(model, few, tmp_path / "bad", CollectConfig(**cfg, positions="mask"), mask=mask[:3])
    with pytest.raises(MythosLensError, match="not one value per token"):
        collect(model, few, tmp_path / "bad", CollectConfig(**cfg | {"sites": ["attn_pattern"]}))


def test_hrm_text_writes_every_cycle_and_its_instruments(tmp_path):
    hrm = hrm_model(seed=3)
    ids = torch.randint(0, 64, (5, 8), generator=torch.Generator().manual_seed(0))
    cfg = CollectConfig(sites=["L_out", "H_out"], batch_size=2, shard_size=3, progress=False)
    out = collect(hrm, Inputs(ids, source="test"), tmp_path / "hrm", cfg)
    got = datasets.load_from_disk(str(out)).with_format("torch")[:]
    tr = _captured(hrm, ids, ["L_out", "H_out"], 3, 2)
    assert _manifest(out)["steps"] == {"L": 6, "H": 2}
    for t in range(6):
        assert torch.equal(got[f"L_steps.{t}.hook_L_out"], tr["L_out"][t])
    assert torch.equal(got["H_steps.1.hook_H_out"], tr["H_out"][1])
    assert {"cka", "lens", "effective_depth"} <= set(_manifest(out)["tables"])


def test_a_directory_of_another_model_is_refused_and_changes_nothing(ref, tiny_ckpt, tmp_path):
    from tiny_models import tiny_checkpoint

    other = tiny_checkpoint(tmp_path / "other", seed=5)
    before = {p.name: p.read_bytes() for p in ref.iterdir() if p.is_file()}
    with pytest.raises(MythosLensError, match="holds activations of model") as err:
        worker.run(str(other), str(ref))
    assert "the same model to resume, or a new --out" in str(err.value)
    assert {p.name: p.read_bytes() for p in ref.iterdir() if p.is_file()} == before
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(MythosLensError, match="is not empty and holds no collect.json"):
        worker.run(str(tiny_ckpt), str(tmp_path / "junk"))


def test_a_target_that_cannot_be_written_gives_one_error_and_keeps_finished_shards(
    ref, model, inputs, tmp_path
):
    """Non-root: the directory is made read-only after shard 0; root ignores permissions, so
    there the file-size limit (RLIMIT_FSIZE, what a full disk does to a write) stops shard 1."""
    out = tmp_path / "full"
    root = os.geteuid() == 0
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def fill(shard: int, batch: int) -> None:
        if (shard, batch) == (1, 0):
            if root:
                size = (out / "data-00000-of-00003.arrow").stat().st_size
                resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, old_limit[1]))
            else:
                out.chmod(0o555)

    try:
        with pytest.raises(
            MythosLensError, match="cannot write .*data-00001-of-00003.arrow"
        ) as err:
            collect(model, inputs, out, worker.config(), on_batch=fill)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
        out.chmod(0o755)
    assert "finished shards are kept" in str(err.value)
    record, _ = read_rank(out, 0)
    assert sorted(record["shards"]) == ["0"]
    shard0 = out / "data-00000-of-00003.arrow"
    assert hashlib.sha256(shard0.read_bytes()).hexdigest() == _hashes(ref)[0]
    assert not (out / "data-00001-of-00003.arrow").exists()
    collect(model, inputs, out, worker.config())  # space again: the same command resumes
    assert _hashes(out) == _hashes(ref)


def test_a_disk_offloaded_dispatch_captures_the_tensors_of_the_plain_model(tmp_path):
    from tiny_models import make_model

    from mythos_lens.dispatch import complete_device_map, dispatch

    ids = torch.randint(0, 64, (6, 10), generator=torch.Generator().manual_seed(2))
    cfg = CollectConfig(sites=["resid_post", "block_out", "lora_delta"], batch_size=3,
                        shard_size=3, progress=False)  # fmt: skip
    plain = make_model("gqa_all_loops")
    info = {"name": "tiny", "fingerprint": "same weights"}
    a = collect(plain, Inputs(ids, source="t"), tmp_path / "plain", cfg, model_info=info)
    big = make_model("gqa_all_loops")
    device_map = {"embed": "cpu", "prelude": "disk", "recurrent.norm": "cpu",
                  "recurrent.block": "disk", "recurrent.lora": "disk",
                  "recurrent.injection": "disk", "recurrent.act": "cpu", "coda": "disk",
                  "norm": "cpu", "head": "cpu"}  # fmt: skip
    full = complete_device_map(big, device_map)
    assert full["freqs_cis"] == full["freqs_cis_mla"] == "cpu"  # upstream's root buffers
    dispatch(big, device_map, tmp_path / "offload")
    assert big.recurrent.block.attn.wq.weight.is_meta  # really offloaded: loaded per call
    b = collect(big, Inputs(ids, source="t"), tmp_path / "big", cfg, model_info=info)
    assert _hashes(a) == _hashes(b)  # every loop's tensors, byte for byte
    for bad, match in (({"recurrent.nope": "cpu"}, "not a module or tensor"),
                       ({"prelude": "tpu"}, "a GPU index"), ({"prelude": "disk"}, "--offload-dir")):  # fmt: skip
        with pytest.raises(MythosLensError, match=match):
            dispatch(make_model("gqa_all_loops"), bad)


def test_the_command_line_writes_resumes_and_refuses_bad_input(tiny_ckpt, tmp_path, capsys):
    from mythos_lens.cli import main

    out = tmp_path / "cli"
    args = ["collect", str(tiny_ckpt), "--out", str(out), "-n", "5", "--batch-size", "2",
            "--shard-size", "3", "--sites", "resid_post,lora_delta", "--dtype", "bfloat16",
            "--no-progress", "--device-map", '{"prelude": "disk", "coda": "cpu"}',
            "--offload-dir", str(tmp_path / "offload")]  # fmt: skip
    assert main(args) == 0
    assert "5 sequences, 6 columns in 2 shards" in capsys.readouterr().out
    ds = datasets.load_from_disk(str(out))
    assert "recurrent.loop.2.hook_lora_delta" in ds.column_names and len(ds) == 5
    assert main(args) == 0  # already complete: nothing redone
    for extra, match in ((["--positions", "mask"], "without a mask"),
                         (["--device-map", '{"nope": "cpu"}'], "not a module or tensor")):  # fmt: skip
        assert main([*args[:3], str(tmp_path / "x"), *args[4:], *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("mythos-lens: error:") and match in err and len(err.splitlines()) == 1


def test_the_readme_reading_example_runs(ref, inputs, monkeypatch, tmp_path):
    import re

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S)
                 if "load_from_disk" in b)  # fmt: skip
    (tmp_path / "acts").symlink_to(ref)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    n, T = inputs.input_ids.shape
    assert scope["x"].shape == (n * T, 32) and scope["xs"].shape == (n, T, 3, 32)
