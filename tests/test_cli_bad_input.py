"""The command line (issue 9, items 11, 15-17): bad input is one line and exit status 2, every
input is validated before any work, start-up stays light, upstream .pt files convert safely."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import make_model, tiny_checkpoint

from mythos_lens.checkpoint import load_checkpoint, save_checkpoint
from mythos_lens.cli import main, parse_ints
from mythos_lens.errors import MythosLensError


def one_line_error(capsys, argv, phrase):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mythos-lens: error: "), err
    assert len(err.strip().splitlines()) == 1, err
    assert phrase in err, err
    return err


@pytest.fixture(scope="module")
def tiny_ck(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ck") / "tiny")


@pytest.mark.parametrize(
    ("argv", "phrase"),
    [
        (["tasks", "show", "--params", "{bad"], "--params '{bad' is not valid JSON"),
        (["tasks", "show", "--params", "[1]"], "a JSON object"),
        (["tasks", "show", "--hops", "x"], "--hops 'x'"),
        (["tasks", "show", "--hops", "1-1000000000"], "at most 100000 values"),
        (["train", "--set", "notjson"], "--set 'notjson' is not valid JSON"),
        (["train", "--set", '{"lr": "fast"}', "--steps", "1"], "lr='fast'"),
        (["train", "--device", "banana", "--steps", "1"], "device='banana'"),
        (["train", "--device", "cuda:7", "--steps", "1"], "device='cuda:7'"),
    ],
)
def test_11_cli_parsing_errors_are_one_line(capsys, argv, phrase):
    one_line_error(capsys, argv, phrase)


@pytest.mark.parametrize(
    ("extra", "phrase"),
    [
        (["--batch-size", "0"], "batch_size=0"),
        (["--batch-size", "-3"], "batch_size=-3"),
        (["--depth-loops", "0-2"], "depth_loops entry=0"),
        (["--seeds", "x"], None),  # analyze has no --seeds: argparse's own usage error
        (["--loops", "1"], "n_loops=1"),
        (["--threads", "0"], "--threads=0"),
    ],
)
def test_11_analyze_option_errors(capsys, tiny_ck, tmp_path, extra, phrase):
    argv = ["analyze", str(tiny_ck), "--out", str(tmp_path / "out"), "-n", "4", *extra]
    if phrase is None:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        return
    one_line_error(capsys, argv, phrase)
    assert not (tmp_path / "out").exists()


def test_11_study_design_and_missing_checkpoints(capsys, tmp_path):
    one_line_error(capsys, ["study", "lora", "--design", "huge", "--out", str(tmp_path / "o")],
                   "unknown study design 'huge'")  # fmt: skip
    argv = ["study", "lora", "--reuse", "--dir", str(tmp_path / "none"), "--out",
            str(tmp_path / "o")]  # fmt: skip
    one_line_error(capsys, argv, "study checkpoints missing")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        (b"\xff\xfe1 2 3\n", "is not UTF-8 text"),
        (b"1 2 " + b"9" * 30 + b"\n", "is too large"),
        (b"1 2 -4\n", "'-4' on line 1 is not a token id"),
    ],
)
def test_11_bad_ids_files(capsys, tiny_ck, tmp_path, content, phrase):
    ids = tmp_path / "ids.txt"
    ids.write_bytes(content)
    argv = ["analyze", str(tiny_ck), "--out", str(tmp_path / "out"), "--ids", str(ids)]
    one_line_error(capsys, argv, phrase)


def test_16_every_input_is_checked_before_any_work(capsys, tiny_ck, tmp_path, monkeypatch):
    import mythos_lens.analysis.run as run_module

    def no_work(*args, **kw):
        raise AssertionError("work started before the inputs were validated")

    monkeypatch.setattr(run_module, "analyze_model", no_work)
    twin = tmp_path / "other" / tiny_ck.name
    twin.parent.mkdir()
    save_checkpoint(load_checkpoint(tiny_ck), twin)
    out = tmp_path / "out"
    one_line_error(capsys, ["analyze", str(tiny_ck), str(twin), "--out", str(out)], "given twice")
    one_line_error(capsys, ["analyze", str(tiny_ck), str(tmp_path / "nope"), "--out", str(out)],
                   "no config.json")  # fmt: skip
    one_line_error(capsys, ["analyze", str(tiny_ck), "--out", "."], "current directory")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_15_cli_start_imports_no_torch():
    code = "import sys, mythos_lens.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    code = ("import sys; from mythos_lens.cli import main; main(['tasks', 'list']); "
            "print('torch' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False" and "pointer" in out.stdout


def _upstream_pt(path, model, **extra):
    payload = {
        "step": 7,
        "model": model.state_dict(),
        "optimizer": torch.optim.AdamW(model.parameters()).state_dict(),
        "cfg": model.cfg,
        "vocab_size": model.cfg.vocab_size,
        "seed": 1337,
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(), "cuda": None},
        "scaler": None,
        "torch_version": torch.__version__,
        **extra,
    }  # fmt: skip
    torch.save(payload, path)
    return path


def test_17_import_upstream_training_checkpoint(capsys, tmp_path, ids):
    model = make_model("mla_all_loops")
    src = _upstream_pt(tmp_path / "step_0000007.pt", model)
    one_line_error(capsys, ["demo", "--checkpoint", str(src)], "import-checkpoint")
    assert main(["import-checkpoint", str(src), str(tmp_path / "ck")]) == 0
    loaded = load_checkpoint(tmp_path / "ck")
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


class _RunsCode:
    def __reduce__(self):
        return (os.getpid, ())


def test_17_arbitrary_pickles_need_trust(capsys, tmp_path):
    src = _upstream_pt(tmp_path / "evil.pt", make_model("gqa_all_loops"), extra=_RunsCode())
    err = one_line_error(capsys, ["import-checkpoint", str(src), str(tmp_path / "ck")],
                         "can only be unpickled by running code")  # fmt: skip
    assert "posix.getpid" in err and "--trust-pickle" in err and not (tmp_path / "ck").exists()
    assert main(["import-checkpoint", str(src), str(tmp_path / "ck"), "--trust-pickle"]) == 0


# -- property-based: parsers either succeed or raise MythosLensError, never anything else -------


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parse_ints_never_raises_anything_else(text):
    try:
        values = parse_ints(text, "--hops")
    except MythosLensError:
        return
    assert isinstance(values, list) and all(isinstance(v, int) for v in values)
