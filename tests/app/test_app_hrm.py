"""The app on a transformers HRM-Text directory (issue 13): only the pages the model has, text
input through its tokenizer.json, every per-step view drawn from the adapter's roles."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from apphelpers import APP, figure, z
from streamlit.testing.v1 import AppTest

from mythos_lens.capture import capture
from mythos_lens.loading import load_model

sys.path.insert(0, str(Path(__file__).parents[1] / "adapters"))
from hrm_models import saved_hrm, word_tokenizer  # noqa: E402


@pytest.fixture
def hrm_app(tmp_path, monkeypatch):
    d = saved_hrm(tmp_path / "ckpts" / "hrm-tiny")
    word_tokenizer(d)
    monkeypatch.setenv("MYTHOS_LENS_CHECKPOINTS", str(tmp_path / "ckpts"))
    at = AppTest.from_file(APP, default_timeout=120)
    torch.set_num_threads(1)
    at.run()
    return at, d


def test_hrm_pages_text_input_and_trajectories(hrm_app):
    at, d = hrm_app
    assert not at.exception, at.exception
    assert at.sidebar.selectbox(key="checkpoint").value == "hrm-tiny"
    assert "Text" in at.sidebar.radio(key="input_source").options
    at.sidebar.radio(key="input_source").set_value("Text").run()
    at.sidebar.text_area(key="text_in").set_value("w1 w2 w3 w4 w5").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    heat = figure(at, "exit lens")
    assert heat["data"][0]["x"] == ["0:w1", "1:w2", "2:w3", "3:w4", "4:w5"]
    assert heat["data"][0]["y"] == ["loop 0", "loop 1", "output"]  # two H cycles, then output
    model = load_model(d)
    tr = capture(model, torch.tensor([[1, 2, 3, 4, 5]]))
    with torch.no_grad():
        exit_top1 = torch.softmax(model.lm_head(tr["H_out"]), -1).max(-1).values[:, 0]
    np.testing.assert_allclose(z(heat)[:2], exit_top1.numpy(), rtol=1e-5)
    assert set(at.radio(key="lens").options) == {"exit", "logit"}  # no coda, no task to tune


def test_hrm_loops_page_has_no_openmythos_parts(hrm_app):
    at, _ = hrm_app
    at.sidebar.radio(key="input_source").set_value("Text").run()
    at.sidebar.text_area(key="text_in").set_value("w1 w2 w3 w4\nw5 w6 w7 w8").run()
    at.switch_page("views/loops.py").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    cka = figure(at, "CKA (debiased): h_t (H_out)")
    assert z(cka).shape == (2, 2)
    assert not any(m.label.startswith("ρ(A)") for m in at.metric)  # no injection matrix
