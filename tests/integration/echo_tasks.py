"""Task types for tests/integration/test_injection.py and test_progress.py
(TASK_MODULES=tests.integration.echo_tasks).

- `testing_echo` {any JSON object}: returns its payload unchanged, so a test can check
  that a payload makes the whole trip (client, dispatcher, database, worker, pool process
  and back) byte for byte.
- `testing_big_result` {"size": int}: returns a string of `size` characters, a result
  larger than the dispatcher takes in one request.
- `testing_progress` {"fraction", "message", "path"}: a typed task (@task) that reports
  that progress through the TaskContext it declares, then runs until the file `path`
  exists (the test opens the gate), and returns its context's task id, attempt and queue.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from common.config import Config
from tasks import InvalidPayload, TaskContext, registry, task
from tasks.context import current


@registry.task("testing_echo")  # the default validation: any JSON object, as is
def echo(payload: dict[str, Any]) -> dict[str, Any]:
    return payload


def validate_size(payload: dict[str, Any], config: Config) -> dict[str, Any]:
    size = payload.get("size")
    if set(payload) != {"size"} or not isinstance(size, int) or not 0 <= size <= 10_000_000:
        raise InvalidPayload("testing_big_result takes one field, 'size' (0 to 10,000,000)")
    return {"size": size}


@registry.task("testing_big_result", validate=validate_size)
def big_result(payload: dict[str, Any]) -> str:
    return "x" * payload["size"]


@task("testing_progress")
def progress_then_wait(fraction: float, message: str, path: str, context: TaskContext) -> dict:
    assert context is current(), "the argument is the pool process's current TaskContext"
    context.progress(fraction, message)
    gate = Path(path)
    while not gate.exists():
        time.sleep(0.01)  # inside the task's process: the task's own work
    return {"task_id": context.task_id, "attempt": context.attempt, "queue": context.queue}
