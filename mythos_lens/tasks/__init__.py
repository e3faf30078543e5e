"""Ground-truth tasks for looped models (see `mythos_lens.tasks.registry`)."""

from mythos_lens.tasks.base import TaskBatch
from mythos_lens.tasks.pointer import PointerLayout, PointerTask
from mythos_lens.tasks.registry import get_task, list_tasks, task_from_spec

__all__ = ["PointerLayout", "PointerTask", "TaskBatch", "get_task", "list_tasks", "task_from_spec"]
