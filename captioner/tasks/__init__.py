"""The tasks a run can be: one registration line each (a new task is a new module plus one line here)."""

from __future__ import annotations

from captioner.errors import CaptionerError
from captioner.tasks.base import EvalOptions, Setup, Task
from captioner.tasks.caption import CaptionTask
from captioner.tasks.vqa import VQATask

TASKS: dict[str, Task] = {task.name: task for task in (CaptionTask(), VQATask())}

__all__ = ["TASKS", "EvalOptions", "Setup", "Task", "get_task"]


def get_task(name: str) -> Task:
    """The registered task called `name`; a one-line error naming the others otherwise."""
    if name not in TASKS:
        raise CaptionerError(f"unknown task '{name}'; use {' or '.join(TASKS)}")
    return TASKS[name]
