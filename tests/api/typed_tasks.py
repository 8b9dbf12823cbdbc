"""Typed task types for tests/api/test_task_types.py (loaded with TASK_MODULES)."""

from __future__ import annotations

from typing import Annotated, Literal

from annotated_types import Ge, Le, MaxLen
from msgspec import Meta

from common.config import Config
from taskqueue import InvalidPayload, TaskContext, task


def under_primes_limit(payload: dict, config: Config) -> None:
    if payload["n"] > config.primes_max_limit:
        raise InvalidPayload(f"testing_typed field 'n' must be at most {config.primes_max_limit}")


@task(
    "testing_typed",
    queue="slow",
    priority=7,
    timeout=12.5,
    max_retries=0,
    check=under_primes_limit,
)
def typed(
    n: Annotated[int, Ge(1), Le(1000)],
    context: TaskContext,
    word: Annotated[str, MaxLen(5)] = "hi",
    mode: Literal["a", "b"] = "a",
    ratio: float = 0.5,
    tags: Annotated[list[str], Meta(max_length=3)] = [],  # noqa: B006 - msgspec copies it
) -> dict:
    """Echo the arguments, with the task's id.

    More text that GET /task-types leaves out.
    """
    return {"n": n, "word": word, "mode": mode, "tags": tags, "task_id": context.task_id}
