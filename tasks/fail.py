"""`fail`: always fails, with the given message (for testing retries and error reporting)."""

from __future__ import annotations

from typing import Annotated, NoReturn

from msgspec import Meta

from tasks.errors import TaskFailed
from tasks.typed import task

DEFAULT_MESSAGE = "task failed"
MAX_MESSAGE_LENGTH = 10000


@task("fail")
def fail(
    error_message: Annotated[str, Meta(max_length=MAX_MESSAGE_LENGTH)] = DEFAULT_MESSAGE,
) -> NoReturn:
    """Always fails, with `error_message` as the task's error."""
    raise TaskFailed(error_message)
