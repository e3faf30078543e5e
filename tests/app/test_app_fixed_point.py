"""The app on a checkpoint of the implicit-depth task (fixed-point chains): every page runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from apphelpers import APP, make_checkpoint
from streamlit.testing.v1 import AppTest

PAGES = ["trajectories", "experts", "loops", "lora", "causal", "compare"]


@pytest.fixture(scope="module")
def fixed_point_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fixed_point")
    make_checkpoint(root / "fixed-point-last", lora=True, task_name="fixed-point")
    return root


@pytest.mark.parametrize("page", PAGES)
def test_every_page_on_a_fixed_point_checkpoint(fixed_point_root, monkeypatch, page):
    monkeypatch.setenv("MYTHOS_LENS_CHECKPOINTS", str(fixed_point_root))
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert at.get("plotly_chart"), f"{page} drew no chart"
