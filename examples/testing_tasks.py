"""Task types for the test suite only: misbehaving and introspective tasks.

NOT for production use. `testing_kill_worker` kills the process that runs the worker;
load this module (TASK_MODULES=examples.testing_tasks) only in test clusters, as
tests/integration/test_operations.py does. Every name starts with `testing_`.

- `testing_exit_child` {}: the pool process running it exits at once (exit code 3),
  like a task that crashes the interpreter.
- `testing_kill_worker` {}: SIGKILL to the pool process's parent, the worker itself:
  a "poison pill" that takes its worker down every time it runs.
- `testing_pid` {}: returns {"pid": the pool process's id}.
- `testing_fail_until_file` {"path": str}: fails with "waiting for <path>" until that
  file exists, then returns {"found": path}; a failure a person can fix, then retry.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from common.config import Config
from tasks import InvalidPayload, TaskFailed, registry

EXIT_CODE = 3


def no_fields(name: str):
    def validate(payload: dict[str, Any], config: Config) -> dict[str, Any]:
        if payload:
            raise InvalidPayload(f"{name} takes no payload fields, not {sorted(payload)}")
        return {}

    return validate


@registry.task("testing_exit_child", validate=no_fields("testing_exit_child"))
def exit_child(payload: dict[str, Any]) -> None:
    os._exit(EXIT_CODE)


@registry.task("testing_kill_worker", validate=no_fields("testing_kill_worker"))
def kill_worker(payload: dict[str, Any]) -> None:
    os.kill(os.getppid(), signal.SIGKILL)
    os._exit(EXIT_CODE)  # nobody is left to report to


@registry.task("testing_pid", validate=no_fields("testing_pid"))
def pid(payload: dict[str, Any]) -> dict[str, int]:
    return {"pid": os.getpid()}


def validate_path(payload: dict[str, Any], config: Config) -> dict[str, Any]:
    path = payload.get("path")
    if set(payload) != {"path"} or not isinstance(path, str) or not path:
        raise InvalidPayload("testing_fail_until_file takes one field, 'path' (a string)")
    return {"path": path}


@registry.task("testing_fail_until_file", validate=validate_path)
def fail_until_file(payload: dict[str, Any]) -> dict[str, str]:
    path = payload["path"]
    if not Path(path).exists():
        raise TaskFailed(f"waiting for {path}")
    return {"found": path}
