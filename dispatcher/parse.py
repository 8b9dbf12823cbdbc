"""Request bodies -> typed values. Every failure is a BadRequest naming the field."""

from __future__ import annotations

import math
from typing import Any

from common.config import MAX_QUEUES, Config
from tasks import Registry

from .errors import BadRequest, QueueError
from .storage import STATUSES, WORKER_STATES, NewTask, Result

MAX_ID_LENGTH = 200
MAX_KEY_LENGTH = 200
MAX_ERROR_LENGTH = 10_000
MAX_PRIORITY = 1_000_000
MAX_RETRIES = 100
MAX_DELAY = 365 * 86_400.0  # a year
MIN_TIMEOUT = 0.001
MAX_TIMEOUT = 7 * 86_400.0  # a week
MAX_OFFSET = 10**12  # GET /tasks paging
MAX_DEPTH = 100  # nesting of a stored payload or result: JSON must hold it on the way out
BARE_TASK = frozenset({"type", "payload"})  # a task naming no option
TASK_FIELDS = {
    "type",
    "payload",
    "queue",
    "max_retries",
    "timeout",
    "priority",
    "delay",
    "idempotency_key",
}


def body(data: Any) -> dict:
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


def string(data: dict, key: str, *, required: bool = True, max_len: int = MAX_ID_LENGTH):
    value = data.get(key)
    if value is None:
        if required:
            raise BadRequest(f"'{key}' is required")
        return None
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"'{key}' must be a non-empty string")
    if len(value) > max_len:
        raise BadRequest(f"'{key}' must be at most {max_len} characters")
    return storable(value, key)


def storable(value: str, key: str, nul: bool = False) -> str:
    """Text both databases can hold as a column: JSON allows a lone surrogate escape,
    which is not UTF-8, and a NUL character, which PostgreSQL text cannot hold (ids,
    names and keys refuse it; an error message may keep it: PostgreSQL stores U+FFFD
    instead). Inside payloads and results both are fine: those are JSON text, escaped."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"'{key}' holds a lone surrogate, which is not valid text") from None
    if not nul and "\x00" in value:
        raise BadRequest(f"'{key}' holds a NUL character, which is not valid text")
    return value


def integer(data: dict, key: str, default: int, low: int, high: int) -> int:
    value = data.get(key, default)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():  # JSON has one number type: 3.0 is 3
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"'{key}' must be a whole number")
    if not low <= value <= high:
        raise BadRequest(f"'{key}' must be between {low} and {high}")
    return value


def number(data: dict, key: str, default: float, low: float, high: float) -> float:
    value = data.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"'{key}' must be a number")
    try:
        value = float(value)
    except OverflowError:  # an int too big for any float
        raise BadRequest(f"'{key}' must be between {low:g} and {high:g}") from None
    if not math.isfinite(value):
        raise BadRequest(f"'{key}' must be a number")
    if not low <= value <= high:
        raise BadRequest(f"'{key}' must be between {low:g} and {high:g}")
    return float(value)


def shallow(value: Any, key: str) -> Any:
    """A JSON value nested at most MAX_DEPTH levels. Deeper ones are refused before they
    are stored: the responses that carry them back (a claim, GET /tasks) nest them further,
    and an encoder that hits its recursion limit there would fail every later read."""

    def walk(item: Any, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise BadRequest(f"'{key}' is nested more than {MAX_DEPTH} levels deep")
        if isinstance(item, dict):
            for inner in item.values():
                if isinstance(inner, (dict, list)):
                    walk(inner, depth + 1)
        elif isinstance(item, list):
            for inner in item:
                if isinstance(inner, (dict, list)):
                    walk(inner, depth + 1)

    if isinstance(value, (dict, list)):
        walk(value, 1)
    return value


def batch(data: dict, key: str, config: Config) -> list:
    items = data.get(key)
    if not isinstance(items, list) or not items:
        raise BadRequest(f"'{key}' must be a non-empty list")
    if len(items) > config.max_batch:
        raise BadRequest(f"'{key}' holds {len(items)} items; at most {config.max_batch} per call")
    return items


def new_task(
    data: Any, config: Config, registry: Registry, defaults: tuple | None = None
) -> NewTask:
    """A submission, validated by its task type. `defaults`: the options of a task that
    names none (new_tasks works them out once per batch)."""
    data = body(data)
    if not TASK_FIELDS.issuperset(data):
        raise BadRequest(f"unknown field '{sorted(set(data) - TASK_FIELDS)[0]}' in task")
    type_ = string(data, "type")
    payload = data.get("payload", {})
    if not isinstance(payload, dict):
        raise BadRequest("'payload' must be a JSON object")
    payload = shallow(registry.validate(type_, payload, config), "payload")
    if defaults is None or not BARE_TASK.issuperset(data):
        defaults = _options(data, config)
    return NewTask(type_, payload, *defaults)


def new_tasks(items: list, config: Config, registry: Registry) -> list[NewTask]:
    """A batch of submissions; the first bad one is refused with its position. The
    options of tasks that name none are worked out once for the batch."""
    defaults = _options({}, config)
    tasks = []
    for i, item in enumerate(items):
        try:
            tasks.append(new_task(item, config, registry, defaults))
        except (QueueError, ValueError) as exc:
            raise BadRequest(f"tasks[{i}]: {exc}") from None
    return tasks


def _options(data: dict, config: Config) -> tuple:
    """A submission's options, in NewTask's order after type and payload."""
    return (
        string(data, "queue", required=False) or "default",
        integer(data, "priority", 0, -MAX_PRIORITY, MAX_PRIORITY),
        number(data, "delay", 0.0, 0.0, MAX_DELAY),
        integer(data, "max_retries", config.default_max_retries, 0, MAX_RETRIES),
        number(data, "timeout", config.default_task_timeout, MIN_TIMEOUT, MAX_TIMEOUT),
        string(data, "idempotency_key", required=False, max_len=MAX_KEY_LENGTH),
    )


def queues(data: dict) -> tuple[str, ...]:
    value = data.get("queues")
    if value is None:
        return ("default",)
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(q, str) and q and len(q) <= MAX_ID_LENGTH for q in value)
    ):
        raise BadRequest("'queues' must be a non-empty list of queue names")
    if len(value) > MAX_QUEUES:
        raise BadRequest(f"'queues' names {len(value)} queues; at most {MAX_QUEUES}")
    for name in value:
        storable(name, "queues")
    return tuple(dict.fromkeys(value))


def result(data: Any) -> Result:
    data = body(data)
    status = data.get("status")
    if status not in ("completed", "failed"):
        raise BadRequest("'status' must be 'completed' or 'failed'")
    error = data.get("error")
    if error is not None and not isinstance(error, str):
        raise BadRequest("'error' must be a string")
    if error:
        storable(error, "error", nul=True)
    if status == "failed" and not error:
        error = "failed (no error message)"
    return Result(
        task_id=string(data, "task_id"),
        lease_token=string(data, "lease_token"),
        worker_id=string(data, "worker_id"),
        status=status,
        result=shallow(data.get("result"), "result"),
        error=error[:MAX_ERROR_LENGTH] if error else None,
    )


def task_ids(data: dict) -> list[str] | None:
    value = data.get("task_ids")
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        isinstance(t, str) and len(t) <= MAX_ID_LENGTH for t in value
    ):
        raise BadRequest("'task_ids' must be a list of task ids")
    for task_id in value:
        storable(task_id, "task_ids")
    return value


def worker_state(data: dict) -> str | None:
    """A heartbeat's optional `state`: stopping (shutting down, claims nothing more) or
    stopped (gone, not dead)."""
    value = data.get("state")
    if value is None:
        return None
    if value not in WORKER_STATES:
        raise BadRequest(f"'state' must be one of {', '.join(WORKER_STATES)}")
    return value


def release_items(data: dict, config: Config) -> list[tuple[str, str]]:
    out = []
    for item in batch(data, "tasks", config):
        if not isinstance(item, dict):
            raise BadRequest("each item of 'tasks' must be an object with task_id and lease_token")
        out.append((string(item, "task_id"), string(item, "lease_token")))
    return out


def status_filter(value: str | None) -> str | None:
    if value and value not in STATUSES:
        raise BadRequest(f"'status' must be one of {', '.join(STATUSES)}")
    return value or None


def _query_value(args, key: str, what: str) -> float | None:
    """A query parameter as a number; None when absent or empty ("not given")."""
    raw = args.get(key)
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise BadRequest(f"'{key}' must be {what}") from None


def query_number(args, key: str, default: float, low: float, high: float) -> float:
    value = _query_value(args, key, "a number")
    return number({key: value}, key, default, low, high)


def query_integer(args, key: str, default: int, low: int, high: int) -> int:
    value = _query_value(args, key, "a whole number")
    return integer({key: value}, key, default, low, high)
