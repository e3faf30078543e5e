"""Named tasks: list them, build one by name, rebuild one from its saved spec."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mythos_lens.errors import MythosLensError

if TYPE_CHECKING:
    from mythos_lens.tasks.pointer import PointerTask


@dataclass(frozen=True)
class TaskInfo:
    """A registered task: its name, a one-line description and its factory."""

    name: str
    description: str
    factory: Callable[..., PointerTask]
    defaults: dict[str, Any]


# Factories import their task class when called, so listing tasks does not import torch.
def _pointer(**params: Any) -> PointerTask:
    from mythos_lens.tasks.pointer import PointerTask

    return PointerTask(**params)


def _fixed_point(**params: Any) -> Any:
    from mythos_lens.tasks.fixed_point import FixedPointTask

    return FixedPointTask(**params)


def _assoc_recall(**params: Any) -> PointerTask:
    params.setdefault("train_hops", 1)
    params.setdefault("max_hops", 1)
    return _pointer(**params)


TASKS: dict[str, TaskInfo] = {
    "pointer": TaskInfo(
        "pointer",
        "pointer chasing over a random function in context: pairs, h<j>, k<s> -> v<f^j(s)>",
        _pointer,
        {"n_entities": 8, "train_hops": 3, "max_hops": 6, "heldout_permille": 200},
    ),
    "fixed-point": TaskInfo(
        "fixed-point",
        "chains ending in fixed points, in context, no hop token: pairs, k<s> -> v<end of s's "
        "chain> (depth implicit: more hops need only more loops)",
        _fixed_point,
        {"n_chains": 4, "chain_len": 7, "train_hops": 3, "heldout_permille": 200},
    ),
    "assoc-recall": TaskInfo(
        "assoc-recall",
        "associative recall: the pointer task restricted to one hop (pairs, h1, k<s> -> v<f(s)>)",
        _assoc_recall,
        {"n_entities": 8, "train_hops": 1, "max_hops": 1, "heldout_permille": 200},
    ),
}


def list_tasks() -> list[TaskInfo]:
    """Every registered task, sorted by name."""
    return [TASKS[k] for k in sorted(TASKS)]


def get_task(name: str, **params: Any) -> PointerTask:
    """Build the task registered as `name`, with `params` overriding its defaults."""
    if name not in TASKS:
        raise MythosLensError(f"unknown task {name!r}", f"one of {sorted(TASKS)}")
    info = TASKS[name]
    unknown = sorted(set(params) - set(info.defaults))
    if unknown:
        raise MythosLensError(
            f"unknown parameter(s) {unknown} for task {name!r}", f"some of {sorted(info.defaults)}"
        )
    return info.factory(**{**info.defaults, **params})


def task_from_spec(spec: dict[str, Any]) -> PointerTask:
    """Rebuild a task from ``task.spec()`` (as stored in checkpoints and datasets)."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise MythosLensError(f"task spec {spec!r}", "a dict with a 'name' (from task.spec())")
    name = spec["name"]
    if name not in TASKS:
        raise MythosLensError(f"unknown task {name!r} in a spec", f"one of {sorted(TASKS)}")
    params = {k: spec[k] for k in TASKS[name].defaults if k in spec}
    if name == "pointer" and params.get("train_hops") == 1 and params.get("max_hops") == 1:
        return get_task("pointer", **params)
    return get_task(name, **params)
