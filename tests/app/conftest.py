"""Fixtures for the app tests: a folder of two small real checkpoints (LoRA on and off) of the
pointer task, and the app run once on them."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from mythos_lens.checkpoint import save_checkpoint
from mythos_lens.model import build_model
from mythos_lens.tasks.registry import get_task
from mythos_lens.train import TrainConfig, disable_lora, model_config_for, reinit_embedding

APP = str(Path(__file__).resolve().parents[2] / "app" / "main.py")
LOOPS = 4


def make_checkpoint(directory: Path, lora: bool, seed: int = 0) -> Path:
    """An untrained upstream OpenMythos for the pointer task, saved as a checkpoint (the same
    construction `mythos_lens.train` uses before its first step)."""
    task = get_task("pointer")
    cfg = TrainConfig(loops=LOOPS, lora=lora, seed=seed)
    model = build_model(model_config_for(cfg, task), seed=seed)
    reinit_embedding(model, 1.0, seed=seed + 7919)
    if not lora:
        disable_lora(model)
    meta = {"task": task.spec(), "train_config": {"loops": LOOPS, "lora": lora}}
    return save_checkpoint(model, directory, meta)


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
