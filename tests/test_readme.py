"""The README's examples run as written."""

import re
import runpy
from pathlib import Path

import torch

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_capture_example_runs_and_is_short():
    block = next(b for b in _python_blocks() if "AblateLora" in b)
    assert len(block.strip().splitlines()) <= 15
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    assert tuple(scope["trace"]["resid_post"].shape) == (8, 2, 12, 32)
    assert scope["patched"].n_loops == 8


def test_hooked_example_runs():
    capture_block = next(b for b in _python_blocks() if "AblateLora" in b)
    hooked_block = next(b for b in _python_blocks() if "HookedMythos" in b)
    scope: dict = {}
    exec(compile(capture_block + hooked_block, "README.md", "exec"), scope)
    assert tuple(scope["cache"]["recurrent.loop.3.hook_resid_post"].shape) == (2, 12, 32)
    assert sum(k.startswith("recurrent.loop.") for k in scope["cache"]) == 8


def test_nnsight_recipe_runs(tmp_path):
    capture_block = next(b for b in _python_blocks() if "AblateLora" in b)
    nn_block = next(b for b in _python_blocks() if "NNsight" in b)
    # nnsight reads the traced block's source from its file, so run it from a real file
    script = tmp_path / "recipe.py"
    script.write_text(capture_block + nn_block)
    scope = runpy.run_path(str(script))
    assert len(scope["resid"]) == 8
    assert torch.equal(scope["resid"][2], scope["trace"]["resid_post"][2])
    assert torch.equal(scope["logits"], scope["ablated"].logits)  # same edit as AblateLora([3])
