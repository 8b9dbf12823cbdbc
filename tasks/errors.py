"""The exceptions of the task layer (kept apart so task modules can import them freely)."""

from __future__ import annotations


class InvalidPayload(ValueError):
    """A submitted payload is unacceptable; str(exc) is one sentence for the HTTP client."""


class UnknownTaskType(InvalidPayload):
    """The task type name is not registered."""


class TaskFailed(Exception):
    """Raised by a run function to fail the task with a clean message (no traceback)."""
