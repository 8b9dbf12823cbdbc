"""Long-lived child processes that run tasks, each killed and replaced at its timeout."""

from __future__ import annotations

import json
from concurrent.futures import CancelledError
from typing import Any

from pebble import ProcessExpired, ProcessFuture, ProcessPool

import tasks


class TaskPool:
    def __init__(self, concurrency: int, max_tasks_per_child: int, modules: tuple[str, ...]):
        self._pool = ProcessPool(
            max_workers=concurrency,
            max_tasks=max_tasks_per_child,
            initializer=tasks.load_modules,
            initargs=(modules,),
        )

    def warm(self) -> None:
        """Start the pool processes now (before the worker's threads exist), so the
        first task does not pay for them."""
        self._pool.schedule(_noop).result(timeout=60)

    def start(self, type_: str, payload: dict, timeout: float) -> ProcessFuture:
        return self._pool.schedule(tasks.run_task, args=(type_, payload), timeout=timeout)

    def stop(self) -> None:
        self._pool.stop()
        self._pool.join(timeout=10)


def _noop() -> None:
    return None


def outcome(future: ProcessFuture, timeout: float) -> dict[str, Any] | None:
    """A finished future as a result body ({"status", "result"|"error"}); None when it
    was cancelled (the task was abandoned: nothing to report)."""
    try:
        value = future.result()
    except CancelledError:
        return None
    except TimeoutError:
        return {"status": "failed", "error": f"timed out after {timeout:g} s (task killed)"}
    except ProcessExpired as exc:
        return {"status": "failed", "error": f"task process died (exit code {exc.exitcode})"}
    except tasks.TaskFailed as exc:
        return {"status": "failed", "error": str(exc) or "task failed"}
    except Exception as exc:  # whatever the task raised
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    try:
        json.dumps(value, allow_nan=False)  # what the dispatcher would refuse
    except (TypeError, ValueError) as exc:
        return {"status": "failed", "error": f"result is not JSON-serialisable: {exc}"}
    return {"status": "completed", "result": value}
