"""Task types: a registry of named (validate, run) pairs.

Task types are usually made with `@task` (tasks/typed.py): a typed function whose
signature is the payload's schema. Underneath, each is a (validate, run) pair, and the
low-level `registry.register(name, validate, run)` registers such a pair directly.

The dispatcher calls `registry.validate(name, payload, config)` before storing a task
(InvalidPayload -> HTTP 400 with str(exc) as the message); the worker's pool processes
call `run_task(name, payload, context)` with the normalized payload and the task's
TaskContext (tasks/context.py): a typed task receives it as an argument when it declares
one; a low-level `run(payload)` is called with the payload alone and may reach the
context through `tasks.context.current()`. The five built-in types are registered below;
TASK_MODULES names extra modules that register more.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from common.config import Config
from common.rules import Refusal
from tasks.context import TaskContext
from tasks.errors import InvalidPayload, TaskCancelled, TaskFailed, UnknownTaskType
from tasks.typed import Task, task

__all__ = [
    "InvalidPayload",
    "Registry",
    "Task",
    "TaskCancelled",
    "TaskContext",
    "TaskFailed",
    "TaskType",
    "UnknownTaskType",
    "load_modules",
    "registry",
    "run_task",
    "task",
]

describe = Refusal.describe

NO_OPTIONS: dict[str, Any] = {}
Validate = Callable[[dict, Config], dict]
Run = Callable[[dict], Any]


@dataclass(frozen=True)
class TaskType:
    name: str
    validate: Validate
    run: Run
    typed: Task | None = None  # made by @task: its schema, defaults and description

    @property
    def flat(self) -> bool:
        """Its stored payloads hold no nested objects or arrays (nothing to walk)."""
        return self.typed is not None and self.typed.flat

    def accept(self, payload: Any, config: Config) -> dict:
        """The payload to store (defaults filled in), or InvalidPayload."""
        if self.typed is not None:
            return self.typed.validate(payload, config)
        if not isinstance(payload, dict):
            raise InvalidPayload(
                f"payload for {self.name} must be a JSON object, not {describe(payload)}"
            )
        return self.validate(payload, config)

    @property
    def options(self) -> dict[str, Any]:
        """The defaults of this type's submissions (queue, priority, timeout, ...)."""
        return self.typed.options if self.typed is not None else NO_OPTIONS

    def describe(self) -> dict[str, Any]:
        """What GET /task-types shows of this type."""
        if self.typed is not None:
            return {
                "name": self.name,
                "schema": self.typed.schema(),
                "defaults": self.typed.defaults(),
                "options": self.options,
                "description": self.typed.description,
            }
        doc = (self.run.__doc__ or "").strip().split("\n", 1)[0]
        return {
            "name": self.name,
            "schema": {"type": "object", "description": "checked by the type's own validate"},
            "defaults": {},
            "options": {},
            "description": doc,
        }


def accept_object(payload: dict, config: Config) -> dict:
    """The default validate: any JSON object, returned as is."""
    if not isinstance(payload, dict):
        raise InvalidPayload(f"payload must be a JSON object, not {describe(payload)}")
    return payload


class Registry:
    def __init__(self) -> None:
        self._types: dict[str, TaskType] = {}

    def register(self, name: str, validate: Validate, run: Run) -> None:
        """The low-level form: `validate(payload, config)` returns the payload to store
        (or raises InvalidPayload), `run(payload)` runs it in a worker."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a task type name must be a non-empty string, not {name!r}")
        if not callable(validate) or not callable(run):
            raise TypeError(f"task type {name!r}: validate and run must be callable")
        self._add(TaskType(name, validate, run))

    def add(self, typed: Task) -> None:
        """Register a task type made by @task."""
        self._add(TaskType(typed.name, typed.validate, typed.run, typed))

    def _add(self, task_type: TaskType) -> None:
        if task_type.name in self._types:
            raise ValueError(f"task type {task_type.name!r} is already registered")
        self._types[task_type.name] = task_type

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
        return self.get(name).accept(payload, config)

    def run(self, name: str, payload: dict, context: TaskContext | None = None) -> Any:
        """Run a stored payload; a typed task gets `context` as an argument when it wants
        it; a low-level `run(payload)` the payload alone (tasks.context.current() has it)."""
        task_type = self.get(name)
        if task_type.typed is None:
            return task_type.run(payload)
        return task_type.typed.run(payload, context)

    def describe(self) -> list[dict[str, Any]]:
        """Every type as GET /task-types shows it, by name."""
        return [self._types[name].describe() for name in self.names()]

    def types(self) -> list[TaskType]:
        return [self._types[name] for name in self.names()]

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
    # importing them registers them (their @task)
    from tasks import compute, fail, http_request, primes, sleep  # noqa: F401


_register_builtins()
