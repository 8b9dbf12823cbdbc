"""Task types from typed functions: `@task("name")` on a function whose parameters are
the payload's fields.

    @task("wordcount", queue="text", timeout=60)
    def wordcount(text: Annotated[str, Meta(max_length=100_000)], top: int = 10) -> dict:
        ...

The payload's schema comes from the type hints through msgspec: a Struct with one field
per parameter (its default, when it has one, is the field's), unknown fields refused.
Rules go in `Annotated[...]` as msgspec.Meta (ge, le, min_length, max_length, pattern)
or as annotated_types' Ge/Gt/Le/Lt/MinLen/MaxLen/Len/Interval. A rule that needs the
configuration or several fields at once is a `check(payload, config)` function: it may
raise InvalidPayload and may return a replacement payload.

A parameter annotated `TaskContext` is not a payload field: it receives the running
task's context (task id, attempt, queue, progress).

Calling the decorated object runs the function in-process, as a plain call (with a
local TaskContext when the function wants one and none is given): tests do that.
"""

from __future__ import annotations

import functools
import inspect
import math
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from common import limits
from common.config import Config
from common.rules import Refusal, explain
from tasks.context import TaskContext
from tasks.errors import InvalidPayload

Check = Callable[[dict, Config], "dict | None"]

OPTIONS = ("queue", "priority", "timeout", "max_retries")


class Options(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """@task's options: the bounds of a submission's own fields (dispatcher/bodies.py)."""

    queue: (
        Annotated[
            str, Meta(min_length=1, max_length=limits.MAX_ID_LENGTH, pattern=limits.NOT_BLANK)
        ]
        | None
    ) = None
    priority: Annotated[int, Meta(ge=-limits.MAX_PRIORITY, le=limits.MAX_PRIORITY)] | None = None
    timeout: Annotated[float, Meta(ge=limits.MIN_TIMEOUT, le=limits.MAX_TIMEOUT)] | None = None
    max_retries: Annotated[int, Meta(ge=0, le=limits.MAX_RETRIES)] | None = None


# annotated_types' constraint classes, read by name so that the package is optional.
_BOUNDS = {"Ge": "ge", "Gt": "gt", "Le": "le", "Lt": "lt", "MultipleOf": "multiple_of"}


class Task:
    """A task type made from a function; registered on `registry` when made."""

    def __init__(
        self, fn: Callable[..., Any], name: str, options: dict[str, Any], check: Check | None
    ) -> None:
        """`options`: @task's queue, priority, timeout, max_retries (None: not set)."""
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.name = name
        self.options = _checked_options(name, options)
        self._check = check
        self.context_param, fields = _fields(fn, name)
        self.payload_type = msgspec.defstruct(
            _struct_name(name), fields, forbid_unknown_fields=True, kw_only=True
        )
        try:  # msgspec reads the types when first used: use them now, so that a bad
            msgspec.json.schema(self.payload_type)  # signature fails at import, named
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"task {name!r}: its signature is not a payload schema: {exc}"
            ) from None
        self._floats = tuple(n for n, kind, *_ in fields if _is_float(kind))
        self.flat = all(_is_scalar(kind) for _, kind, *_ in fields)
        self.description = (inspect.getdoc(fn) or "").strip().split("\n", 1)[0]

    def __repr__(self) -> str:
        return f"<task {self.name!r} ({self.fn.__module__}.{self.fn.__qualname__})>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the function here and now, as a plain call."""
        if self.context_param and self.context_param not in kwargs:
            bound = inspect.signature(self.fn).bind_partial(*args, **kwargs)
            if self.context_param not in bound.arguments:
                kwargs[self.context_param] = TaskContext()
        return self.fn(*args, **kwargs)

    # -- validation ------------------------------------------------------------------

    def check(self, payload: Any) -> dict:
        """The payload as stored: types and rules of the signature checked, defaults
        filled in; InvalidPayload naming the field and the rule otherwise. What needs
        the configuration is `validate`'s (this is what a client can check locally)."""
        if not isinstance(payload, dict):
            raise InvalidPayload(
                f"payload for {self.name} must be a JSON object, not {_describe(payload)}"
            )
        try:
            value = msgspec.convert(payload, self.payload_type)
        except msgspec.ValidationError as exc:
            raise InvalidPayload(self._explain(str(exc), payload)) from None
        if self.flat:  # plain fields: a shallow dict is all JSON already
            stored = msgspec.structs.asdict(value)
            for key in self._floats:
                number = stored[key]
                if isinstance(number, float) and not math.isfinite(number):
                    raise InvalidPayload(f"{self.name} field {key!r} must be a finite number")
            return stored
        stored = msgspec.to_builtins(value)  # nested Structs, sets, tuples: as JSON has them
        where = _non_finite(stored)
        if where is not None:
            raise InvalidPayload(f"{self.name} field {where!r} must be a finite number")
        return stored

    def validate(self, payload: dict, config: Config) -> dict:
        """`check`, then the type's own `check(payload, config)` if it has one."""
        stored = self.check(payload)
        if self._check is not None:
            try:
                replaced = self._check(stored, config)
            except InvalidPayload:
                raise
            except Exception as exc:  # a bug in the check: still the submitter's answer
                raise InvalidPayload(
                    f"{self.name} payload could not be checked "
                    f"({self._check.__name__} raised {type(exc).__name__}: {exc})"
                ) from exc
            if replaced is not None:
                stored = replaced
        return stored

    def _explain(self, text: str, payload: dict) -> str:
        refusal = explain(text, payload, self.payload_type)
        inside = f" in {refusal.where!r}" if refusal.where else ""
        if refusal.kind == "missing":
            return f"missing required field {refusal.field!r}{inside} for {self.name}"
        if refusal.kind == "unknown":
            if inside:
                return f"unknown field {refusal.field!r}{inside} for {self.name}"
            known = ", ".join(sorted(self.payload_type.__struct_fields__)) or "none"
            return f"unknown field {refusal.field!r} for {self.name} (allowed fields: {known})"
        return f"{self.name} field {refusal.where!r} {refusal.rule}"

    # -- running ----------------------------------------------------------------------

    def run(self, payload: dict, context: TaskContext | None = None) -> Any:
        """Run one stored payload (in a worker's pool process)."""
        if not self.flat:  # Structs, sets, tuples: as the signature declares them
            value = msgspec.convert(payload, self.payload_type)
            payload = {name: getattr(value, name) for name in value.__struct_fields__}
        if self.context_param is None:
            return self.fn(**payload)
        return self.fn(**payload, **{self.context_param: context or TaskContext()})

    # -- what GET /task-types shows -----------------------------------------------------

    def schema(self) -> dict:
        """The payload's JSON Schema (one object, no references when it has no nested
        Structs)."""
        return payload_schema(self.payload_type)

    def defaults(self) -> dict:
        """The payload's defaults (what is filled in when a field is left out)."""
        return payload_defaults(self.payload_type)

    # -- submitting (the client library) ----------------------------------------------

    def submit(self, **fields: Any) -> Any:
        """Submit one task of this type through the default Client: a TaskHandle."""
        from taskqueue.client import default_client

        return default_client().submit(self, fields)

    delay = submit  # the Celery and Huey habit

    def map(self, payloads: Iterable[dict], max_in_flight: int = 100) -> Iterator[Any]:
        """Results of one task per payload (dicts of this function's arguments), in order."""
        from taskqueue.client import default_client

        return default_client().map(self, payloads, max_in_flight=max_in_flight)


def task(
    name: str,
    *,
    queue: str | None = None,
    priority: int | None = None,
    timeout: float | None = None,
    max_retries: int | None = None,
    check: Check | None = None,
    registry: Any = None,
) -> Callable[[Callable[..., Any]], Task]:
    """Make the decorated function task type `name` (see the module docstring). The
    options are the defaults of its submissions; a submission's own fields win."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a task type name must be a non-empty string, not {name!r}")

    def decorate(fn: Callable[..., Any]) -> Task:
        options = {"queue": queue, "priority": priority, "timeout": timeout}
        made = Task(fn, name, {**options, "max_retries": max_retries}, check)
        if registry is None:
            from tasks import registry as default

            default.add(made)
        else:
            registry.add(made)
        return made

    return decorate


# -- the payload Struct from a signature ------------------------------------------------


def _fields(fn: Callable[..., Any], name: str) -> tuple[str | None, list[tuple]]:
    """(the parameter that takes the TaskContext or None, the Struct's fields)."""
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:
        raise TypeError(f"task {name!r}: cannot read the type hints of {fn!r}: {exc}") from exc
    context, fields = None, []
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise TypeError(
                f"task {name!r}: parameter {param.name!r} must be an ordinary or keyword "
                "parameter (the payload's fields are passed by name)"
            )
        kind = hints.get(param.name, Any)
        if kind is TaskContext:
            context = param.name
            continue
        kind = _translate(kind)
        if param.default is param.empty:
            fields.append((param.name, kind))
        else:
            fields.append((param.name, kind, param.default))
    return context, fields


def _translate(kind: Any) -> Any:
    """`Annotated[T, Ge(1), MaxLen(5)]` (annotated_types) as msgspec's Meta, wherever it
    sits in the type (inside Optional, list[...], dict[...], ...)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is Annotated:
        base, *extras = args
        rules: dict[str, Any] = {}
        kept = []
        for extra in extras:
            cls = type(extra).__name__
            if type(extra).__module__.split(".")[0] != "annotated_types":
                kept.append(extra)
            elif cls in _BOUNDS:
                rules[_BOUNDS[cls]] = getattr(extra, _BOUNDS[cls])
            elif cls == "Interval":
                rules.update({k: getattr(extra, k) for k in ("gt", "ge", "lt", "le")})
            elif cls in ("MinLen", "MaxLen", "Len"):
                rules["min_length"] = getattr(extra, "min_length", None)
                rules["max_length"] = getattr(extra, "max_length", None)
            else:
                raise TypeError(f"unsupported constraint {extra!r}: use msgspec.Meta")
        rules = {key: value for key, value in rules.items() if value is not None}
        if rules:
            kept.append(Meta(**rules))
        base = _translate(base)
        return Annotated[(base, *kept)] if kept else base
    if not args or origin is typing.Literal:
        return kind
    inner = tuple(_translate(arg) if arg is not Ellipsis else arg for arg in args)
    if inner == args:
        return kind
    if origin in (typing.Union, types.UnionType):
        return typing.Union[inner]  # noqa: UP007 - built from a tuple
    return origin[inner]


def _checked_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """@task's options, held to the bounds of a submission's own fields."""
    try:
        checked = msgspec.structs.asdict(msgspec.convert(options, Options))
        return {key: value for key, value in checked.items() if value is not None}
    except msgspec.ValidationError as exc:
        raise ValueError(f"task {name!r}: option {exc}") from None


def _non_finite(value: Any, where: str = "") -> str | None:
    """Where a stored payload holds NaN or an infinity (JSON has neither), or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else where
    if isinstance(value, dict):
        items = ((f"{where}.{k}" if where else str(k), v) for k, v in value.items())
    elif isinstance(value, list):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for inner_where, inner in items:
        found = _non_finite(inner, inner_where)
        if found is not None:
            return found
    return None


def _is_float(kind: Any) -> bool:
    while typing.get_origin(kind) is Annotated:
        kind = typing.get_args(kind)[0]
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return any(_is_float(k) for k in typing.get_args(kind))
    return kind is float


SCALARS = (int, float, str, bool, type(None))


def _is_scalar(kind: Any) -> bool:
    """A type whose values hold no object or array (so no nesting to bound)."""
    while typing.get_origin(kind) is Annotated:
        kind = typing.get_args(kind)[0]
    origin = typing.get_origin(kind)
    if origin is typing.Literal:
        return True
    if origin in (typing.Union, types.UnionType):
        return all(_is_scalar(k) for k in typing.get_args(kind))
    return kind in SCALARS


def _struct_name(name: str) -> str:
    words = "".join(c if c.isalnum() else " " for c in name).title().replace(" ", "")
    return f"{words or 'Task'}Payload"


def payload_schema(kind: type) -> dict:
    schema = msgspec.json.schema(kind)
    definitions = schema.pop("$defs", {})
    reference = schema.pop("$ref", "")
    own = definitions.pop(reference.rsplit("/", 1)[-1], schema)
    if definitions:
        own["$defs"] = definitions
    return own


def payload_defaults(kind: type) -> dict:
    defaults = {}
    for f in msgspec.structs.fields(kind):
        if f.default is not msgspec.NODEFAULT:
            defaults[f.name] = f.default
        elif f.default_factory is not msgspec.NODEFAULT:
            defaults[f.name] = f.default_factory()
    return msgspec.to_builtins(defaults)  # as JSON says them (a set is a list)


def _describe(value: object) -> str:
    return Refusal.describe(value)
