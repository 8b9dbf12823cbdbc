"""Task types: a registry of named (validate, run) pairs.

The dispatcher calls `registry.validate(name, payload, config)` before storing a task
(InvalidPayload -> HTTP 400 with str(exc) as the message); the worker's pool processes
call `run_task(name, payload, context)` with the normalized payload and the task's
TaskContext (tasks/context.py). A low-level `run(payload)` is called with the payload
alone; it may reach the context through `tasks.context.current()`. The five built-in
types are registered below; TASK_MODULES names extra modules that register more on
`registry`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from common.config import Config
from tasks.context import TaskContext
from tasks.errors import InvalidPayload, TaskFailed, UnknownTaskType
from tasks.fields import describe

__all__ = [
    "InvalidPayload",
    "Registry",
    "TaskFailed",
    "TaskType",
    "UnknownTaskType",
    "load_modules",
    "registry",
    "run_task",
]

Validate = Callable[[dict, Config], dict]
Run = Callable[[dict], Any]


@dataclass(frozen=True)
class TaskType:
    name: str
    validate: Validate
    run: Run


def accept_object(payload: dict, config: Config) -> dict:
    """The default validate: any JSON object, returned as is."""
    if not isinstance(payload, dict):
        raise InvalidPayload(f"payload must be a JSON object, not {describe(payload)}")
    return payload


class Registry:
    def __init__(self) -> None:
        self._types: dict[str, TaskType] = {}

    def register(self, name: str, validate: Validate, run: Run) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a task type name must be a non-empty string, not {name!r}")
        if not callable(validate) or not callable(run):
            raise TypeError(f"task type {name!r}: validate and run must be callable")
        if name in self._types:
            raise ValueError(f"task type {name!r} is already registered")
        self._types[name] = TaskType(name, validate, run)

    def task(self, name: str, validate: Validate | None = None) -> Callable[[Run], Run]:
        """Decorator form: `@registry.task("name", validate=...)` on the run function."""

        def decorate(run: Run) -> Run:
            self.register(name, validate or accept_object, run)
            return run

        return decorate

    def get(self, name: object) -> TaskType:
        if not isinstance(name, str) or name not in self._types:
            raise UnknownTaskType(
                f"unknown task type {name!r}; known types: {', '.join(self.names())}"
            )
        return self._types[name]

    def validate(self, name: str, payload: Any, config: Config) -> dict:
        """The normalized payload (defaults filled in), or InvalidPayload."""
        task_type = self.get(name)
        if not isinstance(payload, dict):
            raise InvalidPayload(
                f"payload for {name} must be a JSON object, not {describe(payload)}"
            )
        return task_type.validate(payload, config)

    def run(self, name: str, payload: dict, context: TaskContext | None = None) -> Any:
        """Run a task of type `name`; a low-level `run(payload)` gets the payload alone
        (the context is still there for it: tasks.context.current())."""
        return self.get(name).run(payload)

    def names(self) -> list[str]:
        return sorted(self._types)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._types

    def __len__(self) -> int:
        return len(self._types)


registry = Registry()


def run_task(name: str, payload: dict, context: TaskContext | None = None) -> Any:
    """Run one task of the module-level registry (top level, so process pools can pickle it)."""
    return registry.run(name, payload, context)


def load_modules(names: Iterable[str]) -> None:
    """Import each named module (its import registers more task types on `registry`).

    A plain string is taken as a comma-separated list, like the TASK_MODULES setting.
    Any failure while importing is raised as ImportError naming the module.
    """
    if isinstance(names, str):
        names = names.split(",")
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ImportError(f"cannot import task module {name!r}: {exc}", name=name) from exc
        except Exception as exc:
            raise ImportError(
                f"task module {name!r} failed while importing: {type(exc).__name__}: {exc}",
                name=name,
            ) from exc


def _register_builtins() -> None:
    from tasks import compute, fail, http_request, primes, sleep

    for module in (primes, compute, sleep, http_request, fail):
        registry.register(module.NAME, module.validate, module.run)


_register_builtins()
