"""The layering of the code (issue 10), checked by parsing every module's imports: data flows
model -> capture -> trace -> instruments -> tables -> figures -> app/analyses, never back."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("mythos_lens", "probes", "app", "analyses")
# The model-facing core: it must not know instruments, analyses, studies, the app or the CLI.
CORE = ("capture", "trace", "sites", "interventions", "hooked", "checkpoint", "model", "readouts")
MAX_LINES = 400
# cli.py holds every subcommand's options by design (the one module that knows argparse).
LIMITS = {"mythos_lens.cli": 700}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {
    _module_name(p): p
    for pkg in PACKAGES
    for p in sorted((REPO / pkg).rglob("*.py"))
    if "artifacts" not in p.parts
}


def imports_of(name: str) -> set[str]:
    """Every project module `name` imports (at any depth of its code, lazily or not)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for t in targets:
            # the longest known module that is t or a prefix of it
            parts = t.split(".")
            for k in range(len(parts), 0, -1):
                cand = ".".join(parts[:k])
                if cand in MODULES and cand != name:
                    found.add(cand)
                    break
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def test_there_are_modules_to_check():
    assert "mythos_lens.capture" in GRAPH and "probes.similarity" in GRAPH
    assert "app.state" in GRAPH and len(GRAPH) > 40


def test_no_import_cycle_anywhere():
    # Package __init__ modules that only re-export lazily are part of the graph too.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(GRAPH[n]):
            if state.get(m) == 1:
                cycle = stack[stack.index(m) :] + [m]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(GRAPH):
        if n not in state:
            visit(n)


def test_probes_know_tensors_not_models():
    allowed = {"mythos_lens.errors", "mythos_lens.atomic"}
    for name, deps in GRAPH.items():
        if name.startswith("probes"):
            bad = {d for d in deps if d.startswith("mythos_lens")} - allowed
            assert not bad, f"{name} imports {sorted(bad)}"


@pytest.mark.parametrize("core", CORE)
def test_core_imports_nothing_above_it(core):
    name = f"mythos_lens.{core}"
    forbidden = ("probes", "app", "analyses", "mythos_lens.analysis", "mythos_lens.studies",
                 "mythos_lens.cli")  # fmt: skip
    bad = {d for d in GRAPH[name] if d.startswith(forbidden)}
    assert not bad, f"{name} imports {sorted(bad)}"


def test_only_the_entry_point_knows_argparse_and_nobody_imports_cli():
    for name, path in MODULES.items():
        assert "mythos_lens.cli" not in GRAPH[name], f"{name} imports the CLI"
        if name.startswith("mythos_lens") and name != "mythos_lens.cli":
            tree = ast.parse(path.read_text())
            mods = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
            mods |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
            assert "argparse" not in mods, f"{name} imports argparse"


@pytest.mark.parametrize("pkg", ["mythos_lens", "probes", "app"])
def test_modules_stay_small(pkg):
    big = {
        name: n
        for name, path in MODULES.items()
        if name.startswith(pkg)
        and (n := len(path.read_text().splitlines())) > LIMITS.get(name, MAX_LINES)
    }
    assert not big, f"modules over {MAX_LINES} lines: {big}"
