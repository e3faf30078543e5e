"""`mythos-lens demo` prints a per-loop summary; bad input is one line and exit code 2."""

from tiny_models import make_model

from mythos_lens.checkpoint import save_checkpoint
from mythos_lens.cli import main


def test_demo_on_a_checkpoint(tmp_path, capsys):
    save_checkpoint(make_model("gqa_all_loops"), tmp_path / "ck")
    assert main(["demo", "--checkpoint", str(tmp_path / "ck"), "--loops", "5"]) == 0
    out = capsys.readouterr().out
    assert "loops run: 5 of 5 requested" in out
    table = out.split("experts")[1].strip().splitlines()
    assert [int(line.split()[0]) for line in table[:5]] == [0, 1, 2, 3, 4]
    assert [int(line.split()[1]) for line in table[:5]] == [0, 1, 2, 3, 3]  # lora row reused


def test_demo_bad_input(tmp_path, capsys):
    assert main(["demo", "--checkpoint", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mythos-lens: error: no config.json")
    assert len(err.strip().splitlines()) == 1
    save_checkpoint(make_model("gqa_all_loops"), tmp_path / "ck")
    assert main(["demo", "--checkpoint", str(tmp_path / "ck"), "--loops", "0"]) == 2
    assert "n_loops=0; expected an integer >= 1" in capsys.readouterr().err
