"""Long-lived child processes that run tasks, each call killed and replaced at its timeout.

A call runs a *chunk*: one task, or several quick ones in a row, so that a pool round
trip (~0.2 ms of the parent's CPU with pebble) is paid once per chunk, not per task.
Each task of a chunk gets its own outcome: one task raising does not touch the others.
Only the death of the process (a timeout, a crash) ends a chunk as a whole.

Each task runs with its TaskContext (its id, attempt, queue, and its dependencies'
results), which is also
`tasks.context.current()` while it runs; its progress reports reach the worker through
the pool's progress channel (worker/progress.py), made once with the pool.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable
from concurrent.futures import CancelledError
from typing import Any

from pebble import ProcessExpired, ProcessFuture, ProcessPool

import tasks
from common.config import HostAllowList
from tasks import http_fetch
from tasks.context import TaskContext, set_current

from .progress import Channel, Outbox

log = logging.getLogger("worker")

# what a pool call runs, per task: (task_id, attempt, queue, type, payload), and the
# results of its dependencies ({task_id: result}) when it has some
Item = tuple[str, int, str, str, dict] | tuple[str, int, str, str, dict, dict]


class TaskPool:
    def __init__(
        self,
        concurrency: int,
        max_tasks_per_child: int,
        modules: tuple[str, ...],
        allowed_hosts: HostAllowList | None = None,
        on_progress: Callable[[str, float, str, float], None] = lambda *report: None,
    ):
        """`on_progress(task_id, fraction, message, at)` gets each progress report (on
        the channel's reader thread); `allowed_hosts` is what http_request's real mode
        may reach (HTTP_REQUEST_ALLOWED_HOSTS)."""
        self._channel = Channel(on_progress)
        self._settings = {
            "max_workers": concurrency,
            "max_tasks": max_tasks_per_child,
            "initializer": start_process,
            "initargs": (modules, self._channel.sender, allowed_hosts or HostAllowList()),
        }
        self._pool = ProcessPool(**self._settings)

    def warm(self) -> None:
        """Start the pool processes now (before the worker's threads exist), so the
        first task does not pay for them."""
        self._pool.schedule(run_chunk, args=([],)).result(timeout=60)

    def start(self, items: list[Item], timeout: float) -> ProcessFuture:
        """Run items in one pool process, in order; killed at `timeout`."""
        try:
            return self._pool.schedule(run_chunk, args=(items,), timeout=timeout)
        except RuntimeError as exc:
            if "Unexpected error" not in str(exc):  # stopped, not broken: refuse
                raise
            # pebble gives up on the whole pool when a process dies before the pool has
            # seen it take its task ("All workers expired": a task that kills its
            # process at once can do that); its calls end with BrokenProcessPool, and
            # every later call is refused. A new pool lets the worker go on.
            log.warning("process pool broke (%s); starting a new one", exc)
            self._renew()
            return self._pool.schedule(run_chunk, args=(items,), timeout=timeout)

    def _renew(self) -> None:
        broken, self._pool = self._pool, ProcessPool(**self._settings)
        broken.stop()
        broken.join(timeout=1)

    def stop(self) -> None:
        self._pool.stop()
        self._pool.join(timeout=10)
        self._channel.close()


# -- in a pool process ------------------------------------------------------------------

_outbox: Outbox | None = None  # this pool process's progress reports


def start_process(
    modules: tuple[str, ...], progress: socket.socket, allowed_hosts: HostAllowList
) -> None:
    """A pool process's initializer: the task modules, where progress goes, and the
    worker's HTTP_REQUEST_ALLOWED_HOSTS, which http_request's real mode checks before
    connecting (the one setting a built-in type needs)."""
    global _outbox
    tasks.load_modules(modules)
    _outbox = Outbox(progress)
    http_fetch.use_allow_list(allowed_hosts)


def run_chunk(items: list[Item]) -> list[dict[str, Any]]:
    """In a pool process: each item's result body, {"status", "result"|"error"}."""
    return [_run_one(*item) for item in items]


def _run_one(
    task_id: str,
    attempt: int,
    queue: str,
    type_: str,
    payload: dict,
    dependencies: dict | None = None,
) -> dict[str, Any]:
    report = _outbox.report if _outbox is not None else None
    context = TaskContext(task_id, attempt, queue, dependencies or {}, report=report)
    set_current(context)
    try:
        value = tasks.run_task(type_, payload, context)
    except tasks.TaskFailed as exc:
        return {"status": "failed", "error": str(exc) or "task failed"}
    except Exception as exc:  # whatever the task raised
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    finally:
        set_current(None)
    try:
        json.dumps(value, allow_nan=False)  # what the dispatcher would refuse
    except (TypeError, ValueError) as exc:
        return {"status": "failed", "error": f"result is not JSON-serialisable: {exc}"}
    return {"status": "completed", "result": value}


def outcomes(future: ProcessFuture, timeout: float) -> list[dict[str, Any]] | str | None:
    """A finished chunk: the list of result bodies; or, when the process did not come
    back (timed out, died), one sentence saying why; None when it was cancelled."""
    try:
        return future.result()
    except CancelledError:
        return None
    except TimeoutError:
        return f"timed out after {timeout:g} s (task killed)"
    except ProcessExpired as exc:
        return f"task process died (exit code {exc.exitcode})"
    except BaseException as exc:  # e.g. SystemExit raised by the task
        return f"task process failed: {type(exc).__name__}: {exc}"
