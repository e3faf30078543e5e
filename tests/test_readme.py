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


def test_python_version_agrees_everywhere():
    """README, pyproject's requires-python and the pinned requirements name one minimum Python
    (issue 9, item 14): the highest minimum any pinned package declares."""
    import importlib.metadata as md
    import tomllib

    from packaging.specifiers import SpecifierSet

    repo = README.parent
    readme = re.search(r"Python (\d+\.\d+)\+", README.read_text()).group(1)
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == f">={readme}"
    pins = [
        line.split("==")[0]
        for line in (repo / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    ]
    needs = {}
    for pin in pins:
        spec = md.metadata(pin).get("Requires-Python")
        if spec:
            needs[pin] = SpecifierSet(spec)
    older = f"{readme.split('.')[0]}.{int(readme.split('.')[1]) - 1}"
    assert all(readme + ".0" in s for s in needs.values()), needs  # every pin runs on it
    assert any(older + ".99" not in s for s in needs.values()), needs  # and some need it


def test_causal_example_runs():
    capture_block = next(b for b in _python_blocks() if "AblateLora" in b)
    causal_block = next(b for b in _python_blocks() if "effective_depth" in b)
    scope: dict = {}
    exec(compile(capture_block + causal_block, "README.md", "exec"), scope)
    assert tuple(scope["depth"].shape) == (2, 12)
    assert torch.equal(scope["exit_logits"][-1], scope["tr"].logits)


def test_hrm_example_runs():
    block = next(b for b in _python_blocks() if "HrmTextConfig" in b)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    assert scope["tr"].steps["L"] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert tuple(scope["tr"]["L_out"].shape) == (6, 1, 8, 32)
    assert scope["more"].steps["H"] == [0, 1, 2]
