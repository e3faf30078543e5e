"""Fixtures for the app tests: a folder of two small real checkpoints (LoRA on and off) of the
pointer task, and the app run once on them."""

from __future__ import annotations

from pathlib import Path

import pytest
from apphelpers import APP, make_checkpoint
from streamlit.testing.v1 import AppTest


@pytest.fixture(scope="session")
def checkpoint_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("checkpoints")
    make_checkpoint(root / "pointer-lora-on", lora=True)
    make_checkpoint(root / "pointer-lora-off", lora=False, seed=1)
    return root


@pytest.fixture
def app(checkpoint_root: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    """The app, run once on the test checkpoints (default selection)."""
    monkeypatch.setenv("MYTHOS_LENS_CHECKPOINTS", str(checkpoint_root))
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at
