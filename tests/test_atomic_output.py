"""Output directories (issue 9, items 5-7): --overwrite replaces only what this tool wrote,
concurrent runs never silently replace each other, bad paths fail before any work, and an
interrupted run (Ctrl-C or SIGTERM) leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mythos_lens.atomic import RUN_FORMAT, AtomicDir, check_output_dir, read_run
from mythos_lens.errors import MythosLensError


def _hidden(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def _write(out: Path, overwrite: bool = False, text: str = "x") -> None:
    atomic = AtomicDir(out, overwrite)
    with atomic as tmp:
        (tmp / "table.csv").write_text(text)
        atomic.write_run({"what": text})


def test_05_overwrite_refuses_a_foreign_directory(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    with pytest.raises(MythosLensError, match="not written by mythos-lens"):
        _write(foreign, overwrite=True)
    assert (foreign / "thesis.tex").read_text() == "years of work"
    (foreign / "run.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(MythosLensError, match="not written by mythos-lens"):
        _write(foreign, overwrite=True)
    assert _hidden(tmp_path) == []


def test_05_overwrite_replaces_our_own_output(tmp_path):
    out = tmp_path / "run"
    _write(out, text="first")
    assert read_run(out)["format"] == RUN_FORMAT
    with pytest.raises(MythosLensError, match="exists"):
        _write(out, text="second")
    _write(out, overwrite=True, text="second")
    assert (out / "table.csv").read_text() == "second"
    assert _hidden(tmp_path) == []


def test_06_a_concurrent_run_never_silently_replaces_another(tmp_path):
    out = tmp_path / "run"
    slow = AtomicDir(out)
    with pytest.raises(MythosLensError, match="appeared while this run was working"):
        with slow as tmp:
            (tmp / "table.csv").write_text("slow")
            _write(out, text="fast")  # a second run finishes first
    assert (out / "table.csv").read_text() == "fast"  # the first finisher's results intact
    kept = [p for p in tmp_path.iterdir() if ".conflict-" in p.name]
    assert len(kept) == 1 and (kept[0] / "table.csv").read_text() == "slow"
    assert _hidden(tmp_path) == []


def test_06_overwrite_does_not_replace_a_run_that_finished_meanwhile(tmp_path):
    out = tmp_path / "run"
    _write(out, text="old")
    slow = AtomicDir(out, overwrite=True)
    with pytest.raises(MythosLensError, match="replaced by another run"):
        with slow as tmp:
            (tmp / "table.csv").write_text("slow")
            _write(out, overwrite=True, text="fast")
    assert (out / "table.csv").read_text() == "fast"
    assert _hidden(tmp_path) == []


def test_07_bad_output_paths_fail_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for bad in (".", str(tmp_path), "/"):
        with pytest.raises(MythosLensError, match="current directory or contains it"):
            check_output_dir(bad, overwrite=True)
    (tmp_path / "file").write_text("")
    with pytest.raises(MythosLensError, match="cannot create"):
        check_output_dir(tmp_path / "file" / "sub" / "out")
    assert _hidden(tmp_path) == []


def test_07_an_exception_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with AtomicDir(tmp_path / "run") as tmp:
            (tmp / "half.csv").write_text("half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


SIGTERM_SCRIPT = """
import sys, time
from mythos_lens.atomic import AtomicDir
with AtomicDir(sys.argv[1]) as tmp:
    (tmp / "partial.csv").write_text("partial")
    print("working", flush=True)
    time.sleep(60)
"""


def test_07_sigterm_leaves_no_hidden_directory(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGTERM_SCRIPT, str(tmp_path / "run")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "working"
    assert _hidden(tmp_path)  # the temporary directory exists while it works
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    time.sleep(0.1)
    assert list(tmp_path.iterdir()) == []
