"""Fixtures for the app tests: a folder of two small real checkpoints (LoRA on and off) of the
pointer task, and the app run once on them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from apphelpers import APP, make_checkpoint
from streamlit.testing.v1 import AppTest


@pytest.fixture(scope="session")
def checkpoint_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("checkpoints")
    make_checkpoint(root / "pointer-lora-on", lora=True)
    make_checkpoint(root / "pointer-lora-off", lora=False, seed=1)
    return root


@pytest.fixture
def app(checkpoint_root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AppTest]:
    """The app, run once on the test checkpoints (default selection)."""
    monkeypatch.setenv("MYTHOS_LENS_CHECKPOINTS", str(checkpoint_root))
    at = AppTest.from_file(APP, default_timeout=120)
    threads = torch.get_num_threads()  # the app uses 1 thread; give the other tests theirs back
    torch.set_num_threads(1)
    at.run()
    assert not at.exception, at.exception
    yield at
    torch.set_num_threads(threads)
