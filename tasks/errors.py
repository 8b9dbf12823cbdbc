"""The exceptions of the task layer (kept apart so task modules can import them freely)."""

from __future__ import annotations

from typing import Any


class InvalidPayload(ValueError):
    """A submitted payload is unacceptable; str(exc) is one sentence for the HTTP client."""


class UnknownTaskType(InvalidPayload):
    """The task type name is not registered."""


class TaskFailed(Exception):
    """A task failed.

    Raised by a task's code to fail its attempt with a clean message (no traceback); and
    raised by the client library (`TaskHandle.result()`) for a task that ended `failed`,
    with `error` the task's error, `task_id`, and `history` its attempts.
    """

    def __init__(
        self, error: str = "task failed", task_id: str | None = None, history: Any = None
    ) -> None:
        super().__init__(error)
        self.error = error
        self.task_id = task_id
        self.history = list(history or [])


class TaskCancelled(Exception):
    """Raised by the client library for a task that ended `cancelled`."""

    def __init__(self, task_id: str, error: str | None = None) -> None:
        super().__init__(f"task {task_id} was cancelled" + (f": {error}" if error else ""))
        self.task_id = task_id
        self.error = error
