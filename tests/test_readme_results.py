"""README's Results numbers are read from the files the studies wrote (analyses/results/)."""

from pathlib import Path

import pytest

from mythos_lens.errors import MythosLensError
from mythos_lens.studies.results import BLOCKS, readme_blocks, render_readme

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "analyses" / "results"


def test_every_results_block_is_in_the_readme():
    assert set(readme_blocks(README.read_text(encoding="utf-8"))) == set(BLOCKS)


def test_readme_results_equal_the_result_files():
    readme = README.read_text(encoding="utf-8")
    rendered = render_readme(readme, RESULTS)
    for name, text in readme_blocks(rendered).items():
        assert readme_blocks(readme)[name] == text, f"README block {name} differs from the files"
    assert rendered == readme


def test_a_changed_number_is_caught(tmp_path):
    readme = README.read_text(encoding="utf-8")
    block = readme_blocks(readme)["lora-verdict"]
    digit = next(c for c in block if c.isdigit())
    tampered = readme.replace(block, block.replace(digit, str((int(digit) + 1) % 10), 1))
    assert render_readme(tampered, RESULTS) != tampered
    with pytest.raises(MythosLensError, match="no renderer"):
        render_readme("<!-- results:nope -->\nx\n<!-- /results:nope -->", RESULTS)
