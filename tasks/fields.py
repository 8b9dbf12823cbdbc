"""Small helpers that check one payload field each and raise InvalidPayload naming it."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

from tasks.errors import InvalidPayload

_MISSING: Any = object()


def describe(value: object) -> str:
    """How a JSON value reads in an error message ("a boolean", "a string", ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number with a decimal point"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"


def show(value: object, limit: int = 40) -> str:
    """A value for an error message, shortened if long (a huge int or a long string)."""
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def check_fields(
    task: str, payload: Mapping[str, Any], required: Collection[str], optional: Collection[str]
) -> None:
    """Reject unknown fields, then missing required ones."""
    for key in payload:
        if key not in required and key not in optional:
            known = ", ".join(sorted({*required, *optional})) or "none"
            raise InvalidPayload(f"unknown field {key!r} for {task} (allowed fields: {known})")
    for key in required:
        if key not in payload:
            raise InvalidPayload(f"missing required field {key!r} for {task}")


def integer(task: str, payload: Mapping[str, Any], field: str, default: Any = _MISSING) -> int:
    """An int field; booleans and floats (even 5.0) are rejected."""
    value = payload.get(field, default)
    if value is _MISSING:
        raise InvalidPayload(f"missing required field {field!r} for {task}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidPayload(f"{task} field {field!r} must be an integer, not {describe(value)}")
    return value


def number(task: str, payload: Mapping[str, Any], field: str, default: Any = _MISSING) -> float:
    """A finite int or float field (not a boolean); the value keeps its type."""
    value = payload.get(field, default)
    if value is _MISSING:
        raise InvalidPayload(f"missing required field {field!r} for {task}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidPayload(f"{task} field {field!r} must be a number, not {describe(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidPayload(f"{task} field {field!r} must be a finite number, not {show(value)}")
    return value


def string(
    task: str, payload: Mapping[str, Any], field: str, default: Any = _MISSING, max_len: int = 0
) -> str:
    """A str field, at most max_len characters when max_len > 0."""
    value = payload.get(field, default)
    if value is _MISSING:
        raise InvalidPayload(f"missing required field {field!r} for {task}")
    if not isinstance(value, str):
        raise InvalidPayload(f"{task} field {field!r} must be a string, not {describe(value)}")
    if max_len and len(value) > max_len:
        raise InvalidPayload(
            f"{task} field {field!r} must be at most {max_len} characters long, not {len(value)}"
        )
    return value


def choice(
    task: str,
    payload: Mapping[str, Any],
    field: str,
    options: Collection[str],
    default: Any = _MISSING,
) -> str:
    """A str field that must be one of `options` (compared exactly)."""
    value = string(task, payload, field, default)
    if value not in options:
        raise InvalidPayload(
            f"{task} field {field!r} must be one of {', '.join(options)}, not {show(value)}"
        )
    return value


def in_range(task: str, field: str, value: float, low: float, high: float, note: str = "") -> None:
    """Raise unless low <= value <= high; `note` explains where a bound comes from."""
    if not low <= value <= high:
        suffix = f" {note}" if note else ""
        raise InvalidPayload(
            f"{task} field {field!r} must be between {low} and {high}{suffix}, not {show(value)}"
        )
