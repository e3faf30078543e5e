"""Ground-truth tasks for looped models (see `mythos_lens.tasks.registry`).

Names are imported on first use, so ``mythos-lens tasks list`` does not pay for torch."""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "TaskBatch": "mythos_lens.tasks.base",
    "PointerLayout": "mythos_lens.tasks.pointer",
    "PointerTask": "mythos_lens.tasks.pointer",
    "get_task": "mythos_lens.tasks.registry",
    "list_tasks": "mythos_lens.tasks.registry",
    "task_from_spec": "mythos_lens.tasks.registry",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'mythos_lens.tasks' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
