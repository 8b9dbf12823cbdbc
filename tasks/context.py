"""TaskContext: what a running task may know about itself, and how it reports progress.

A task function that declares a parameter annotated `TaskContext` receives one; any
task code may ask for the one of the task running in its process with `current()`. In a
worker's pool process `progress()` hands the value to the worker, which sends it to the
dispatcher with its next heartbeat (worker/progress.py); called directly (a unit test),
it only records it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Reporter = Callable[[str, float, str], None]


@dataclass
class TaskContext:
    """`dependencies`: {task_id: result} of the tasks this one depends on (submitted with
    depends_on), those still stored; {} for a task without dependencies."""

    task_id: str = "local"
    attempt: int = 1
    queue: str = "default"
    dependencies: dict[str, Any] = field(default_factory=dict)
    report: Reporter | None = field(default=None, repr=False)
    last_progress: dict[str, Any] | None = None

    def progress(self, fraction: float, message: str = "") -> None:
        """How far the task has got: `fraction` from 0 to 1, and a short message."""
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
            raise TypeError(f"progress fraction must be a number, not {fraction!r}")
        if not math.isfinite(fraction) or not 0 <= fraction <= 1:
            raise ValueError(f"progress fraction must be between 0 and 1, not {fraction!r}")
        message = str(message)[:MAX_MESSAGE]
        self.last_progress = {"fraction": float(fraction), "message": message, "at": time.time()}
        if self.report is not None:
            self.report(self.task_id, float(fraction), message)


MAX_MESSAGE = 200

_current: TaskContext | None = None


def current() -> TaskContext | None:
    """The TaskContext of the task running in this process (the worker's pool sets it
    around each task's run), or None outside a task."""
    return _current


def set_current(context: TaskContext | None) -> None:
    """For the code that runs tasks: `context` is the running task's from now on."""
    global _current
    _current = context
