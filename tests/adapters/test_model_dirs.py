"""Model directories of any family (issue 13): a transformers HRM-Text saved with
save_pretrained opens in `analyze` (text in, through its tokenizer.json), pickled weights are
refused, and our checkpoints keep working."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from hrm_models import hrm_model, saved_hrm, word_tokenizer

from mythos_lens.cli import main
from mythos_lens.errors import MythosLensError
from mythos_lens.loading import check_model_dir, encode_texts, load_model, load_tokenizer


def test_load_hrm_directory_and_tokenizer(tmp_path):
    d = saved_hrm(tmp_path / "hrm")
    word_tokenizer(d)
    model = load_model(d)
    x = torch.randint(0, 64, (1, 5))
    with torch.no_grad():
        assert torch.equal(model(input_ids=x, use_cache=False).logits,
                           hrm_model(0)(input_ids=x, use_cache=False).logits)  # fmt: skip
    tok = load_tokenizer(d)
    assert encode_texts(tok, "w1 w2 w3\nw4 w5 w6") == [[1, 2, 3], [4, 5, 6]]
    with pytest.raises(MythosLensError, match="same number of tokens"):
        encode_texts(tok, "w1 w2\nw3")


def test_pickled_weights_are_refused(tmp_path):
    d = saved_hrm(tmp_path / "hrm")
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    with pytest.raises(MythosLensError, match="only pickled"):
        check_model_dir(d)
    raw = json.loads((d / "config.json").read_text())
    raw["model_type"] = "gpt2"
    (d / "config.json").write_text(json.dumps(raw))
    with pytest.raises(MythosLensError, match="neither a mythos-lens checkpoint"):
        load_model(d)


def test_analyze_an_hrm_directory_from_text(tmp_path, capsys):
    d = saved_hrm(tmp_path / "hrm")
    word_tokenizer(d)
    text = tmp_path / "in.txt"
    text.write_text(
        "\n".join(" ".join(f"w{(7 * i + j) % 64}" for j in range(8)) for i in range(12))
    )
    out = tmp_path / "out"
    argv = ["analyze", str(d), "--out", str(out), "--text", str(text), "--batch-size", "6",
            "--probe-examples", "12", "--no-progress", "--plotlyjs", "cdn"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    cka = pd.read_csv(out / "cka.csv")
    assert set(cka["site"]) == {"H_out", "delta_h"}  # the carried state: H
    lens = pd.read_csv(out / "lens.csv")
    assert set(lens["lens"]) == {"exit", "logit"}
    assert len(pd.read_csv(out / "router.csv")) == 0  # no router in HRM-Text: empty, not zero
    ed = pd.read_csv(out / "effective_depth.csv")
    assert list(ed["loop"]) == [0, 1] and ed["kl_full_exit"].iloc[-1] == 0
    assert "Loops that matter" in (out / "report.html").read_text()
