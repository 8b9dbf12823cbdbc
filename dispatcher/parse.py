"""Request bodies -> typed values, through the Structs of bodies.py. Every failure is a
BadRequest naming the field and the rule it broke."""

from __future__ import annotations

import functools
import math
import re
from typing import Any

import msgspec
from msgspec import inspect as mi

from common import rules
from common.config import MAX_QUEUES, Config  # noqa: F401  (re-exported for the tests)
from common.rules import joined, plain
from tasks import Registry

from . import bodies
from .bodies import MAX_DEPTH, MAX_ERROR_LENGTH  # noqa: F401  (MAX_DEPTH: for the tests)
from .errors import BadRequest, QueueError
from .storage import STATUSES, NewTask, Result

MAX_OFFSET = 10**12  # GET /tasks paging


def body(data: Any) -> dict:
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


def convert(data: Any, kind: type, what: str = "request body") -> Any:
    """`data` as a `kind` Struct. JSON has one number type, so 3.0 is the whole number 3:
    msgspec's ints refuse floats, so a refused body gets one more try with its whole
    floats made ints where an int is declared."""
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError:
        pass
    whole = _whole(data, rules.info(kind))
    try:
        return msgspec.convert(whole, kind)
    except msgspec.ValidationError as exc:
        raise BadRequest(_explain(str(exc), whole, kind, what)) from None


def _whole(value: Any, t: mi.Type) -> Any:
    t = plain(t)
    if isinstance(value, float) and isinstance(t, mi.IntType) and value.is_integer():
        return int(value)
    if isinstance(value, dict) and isinstance(t, mi.StructType):
        kinds = {f.encode_name: f.type for f in t.fields}
        return {k: _whole(v, kinds[k]) if k in kinds else v for k, v in value.items()}
    if isinstance(value, list) and isinstance(t, mi.ListType):
        return [_whole(v, t.item_type) for v in value]
    return value


def _explain(text: str, data: Any, kind: type, what: str) -> str:
    """msgspec's complaint (`Expected ... - at `$.tasks[1].priority``), told as the rule of
    the field it is about, as bodies.py declares it. A value of an object keyed by the
    client (`$.progress[...]`) is named by its key."""
    refusal = rules.explain(text, data, kind)
    if refusal.kind == "key":  # a key of such an object
        return f"{refusal.where}: a key {_rule(plain(refusal.type), refusal.text, None)}"
    here = joined(refusal.head, refusal.last)
    if refusal.kind == "missing":
        rule, where = f"'{refusal.field}' is required", here
    elif refusal.kind == "unknown":
        cls = plain(refusal.type).cls
        name = getattr(cls, "NOUN", None) or cls.__name__.removeprefix("New")
        noun = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name).lower()  # RateLimit: rate limit
        rule, where = f"unknown field '{refusal.field}' in {noun}", here
    else:
        t, value = refusal.type, refusal.value
        rule = (
            f"'{refusal.last}' {_rule(plain(t), refusal.text, value)}"
            if refusal.last
            else f"{what} {_rule(t, refusal.text, value)}"
        )
        where = refusal.head
    return f"{where}: {rule}" if where else rule


def _rule(t: mi.Type, text: str, value: Any) -> str:
    wrong_type = ", got `" in text
    if isinstance(t, mi.IntType):
        return "must be a whole number" if wrong_type else f"must be between {t.ge} and {t.le}"
    if isinstance(t, mi.FloatType):
        if wrong_type:
            return "must be a number"
        if t.gt is not None:
            return f"must be more than {t.gt:g} and at most {t.le:g}"
        return f"must be between {t.ge:g} and {t.le:g}"
    if isinstance(t, mi.BoolType):
        return "must be true or false"
    if isinstance(t, mi.StrType):
        if "length <=" in text:
            return f"must be at most {t.max_length} characters"
        return "must be a non-empty string" if t.min_length else "must be a string"
    if isinstance(t, mi.ListType):
        if "length <=" in text:
            return f"holds {len(value)} items; at most {t.max_length} per call"
        return "must be a non-empty list" if t.min_length else "must be a list"
    if isinstance(t, mi.LiteralType):
        return "must be " + " or ".join(repr(v) for v in t.values)
    if isinstance(t, (mi.DictType, mi.StructType, mi.AnyType)):
        return "must be a JSON object"
    return f"is not valid ({text})"


@functools.lru_cache(maxsize=256)
def _defaults(kind: type) -> tuple[tuple[str, Any], ...]:
    """The fields of `kind` whose default is not null, with that default."""
    return tuple(
        (f.name, f.default)
        for f in msgspec.structs.fields(kind)
        if f.default not in (None, msgspec.NODEFAULT)
    )


def _null_means_default(item: Any) -> Any:
    for name, default in _defaults(type(item)):
        if getattr(item, name) is None:
            setattr(item, name, default)
    return item


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


# -- the bodies ---------------------------------------------------------------------


def new_task(data: Any, config: Config, registry: Registry) -> NewTask:
    """A submission (POST /submit-task), validated by its task type."""
    return _stored(convert(data, bodies.requests(config).new_task), config, registry, None)


def new_tasks(data: Any, config: Config, registry: Registry) -> list[NewTask]:
    """A batch of submissions (POST /submit-tasks); the first bad one is refused with its
    position."""
    tasks = []
    for i, item in enumerate(convert(data, bodies.requests(config).new_tasks).tasks):
        try:
            tasks.append(_stored(item, config, registry, i))
        except (QueueError, ValueError) as exc:
            raise BadRequest(f"tasks[{i}]: {exc}") from None
    return tasks


def depends_on(refs: list[str], index: int | None) -> list[str | int]:
    """A task's depends_on as NewTask holds it: ids, and "#N" as the int N, an earlier
    task of the batch (`index`: this task's place in it; None, not in a batch); each
    named once (a repeat is dropped)."""
    out: dict[str | int, None] = {}
    for ref in refs:
        if ref.startswith("#"):
            n = ref[1:]
            if index is None:
                raise BadRequest(
                    f"'depends_on': {ref!r} names a task of the same batch; "
                    "only POST /submit-tasks has one"
                )
            if not (n.isdigit() and n.isascii() and str(int(n)) == n and int(n) < index):
                raise BadRequest(
                    f"'depends_on': {ref!r} is not an earlier task of this batch "
                    f'("#0" to "#{index - 1}")'
                    if index
                    else f"'depends_on': {ref!r}: the batch's first task can depend on none "
                    "of the batch"
                )
            out[int(n)] = None
        else:
            out[storable(ref, "depends_on")] = None
    return list(out)


def _stored(task: Any, config: Config, registry: Registry, index: int | None) -> NewTask:
    task_type = registry.get(task.type)
    payload = task_type.accept(task.payload, config)
    if not task_type.flat:  # a typed payload of plain fields cannot nest
        shallow(payload, "payload")
    options = task_type.options
    if options:
        _type_defaults(task, options)
    queue = "default" if task.queue is None else task.queue
    if queue != "default" or task.idempotency_key is not None:  # most tasks: neither
        storable(queue, "queue")
        if task.idempotency_key is not None:
            storable(task.idempotency_key, "idempotency_key")
    if task.expires_in is not None and task.delay is not None and task.delay >= task.expires_in:
        raise BadRequest(
            f"'expires_in' ({task.expires_in:g} s) must be more than 'delay' "
            f"({task.delay:g} s): the task would expire before it is ready"
        )
    # What a submission leaves out: its type's default (above), else the dispatcher's.
    refs = depends_on(task.depends_on, index) if task.depends_on else None
    return NewTask(
        task.type,
        payload,
        queue,
        0 if task.priority is None else task.priority,
        0.0 if task.delay is None else task.delay,
        config.default_max_retries if task.max_retries is None else task.max_retries,
        config.default_task_timeout if task.timeout is None else task.timeout,
        task.idempotency_key,
        refs or None,
        task.expires_in,
    )


def _type_defaults(task: Any, options: dict) -> None:
    """The options of @task fill in what the submission left out."""
    for key, value in options.items():
        if getattr(task, key) is None:
            setattr(task, key, value)


def queue_name(name: str) -> str:
    """A queue named in a URL (PUT /queues/<name>): a submission's queue's bounds."""
    return storable(convert({"queue": name}, bodies.QueueRef, "queue").queue, "queue")


def queue_changes(data: Any) -> dict:
    """PUT /queues/<name>: the settings it changes, {field: value} (None: no limit)."""
    body = convert(data, bodies.QueueChanges)
    changes = {
        f: getattr(body, f)
        for f in ("paused", "max_in_flight", "rate_limit")
        if getattr(body, f) is not msgspec.UNSET
    }
    if not changes:
        raise BadRequest("give at least one of 'paused', 'max_in_flight', 'rate_limit'")
    rate = changes.get("rate_limit")
    if rate is not None:
        changes["rate_limit"] = {"count": rate.count, "per_seconds": rate.per_seconds}
    return changes


def claim(data: Any, config: Config) -> Any:
    """POST /get-task: worker_id, instance_id ("" if none), queues (a tuple, each named
    once), wait and max_tasks."""
    body = _worker(_null_means_default(convert(data, bodies.requests(config).claim)))
    if body.queues is None:
        body.queues = ("default",)
    else:
        body.queues = tuple(dict.fromkeys(storable(q, "queues") for q in body.queues))
    return body


def heartbeat(data: Any) -> Any:
    """POST /heartbeat: worker_id, instance_id ("" if none), task_ids, state, concurrency,
    and progress ({task_id: {"fraction", "message"}}, or None when none was sent)."""
    beat = _worker(convert(data, bodies.Heartbeat))
    for task_id in beat.task_ids or ():
        storable(task_id, "task_ids")
    if beat.progress:
        beat.progress = {
            storable(task_id, "progress"): {"fraction": p.fraction, "message": p.message or ""}
            for task_id, p in beat.progress.items()
        }
    return beat


def _worker(body: Any) -> Any:
    storable(body.worker_id, "worker_id")
    body.instance_id = storable(body.instance_id, "instance_id") if body.instance_id else ""
    return body


def release(data: Any, config: Config) -> tuple[str, list[tuple[str, str]]]:
    """POST /release: the worker, and the (task_id, lease_token) of each task."""
    body = convert(data, bodies.requests(config).release)
    items = [
        (storable(t.task_id, "task_id"), storable(t.lease_token, "lease_token")) for t in body.tasks
    ]
    return storable(body.worker_id, "worker_id"), items


def wait_tasks(data: Any, config: Config) -> tuple[list[str], float]:
    """POST /wait-tasks: the task ids (each once, in order) and the wait."""
    body = _null_means_default(convert(data, bodies.requests(config).wait_tasks))
    return list(dict.fromkeys(storable(t, "task_ids") for t in body.task_ids)), body.wait


def results(data: Any, config: Config) -> tuple[list, Any]:
    """POST /submit-results: the items, each to be read by `result` on its own, and the
    claim sent with them (None if none), to be read by `claim`."""
    body = convert(data, bodies.requests(config).results)
    return body.results, body.claim


def result(data: Any) -> Result:
    """One result (POST /submit-result, or an item of /submit-results)."""
    item = convert(data, bodies.Result, "a result")
    for key in ("task_id", "lease_token", "worker_id"):
        storable(getattr(item, key), key)
    error = item.error
    if error:
        storable(error, "error", nul=True)
    if item.status == "failed" and not error:
        error = "failed (no error message)"
    return Result(
        task_id=item.task_id,
        lease_token=item.lease_token,
        worker_id=item.worker_id,
        status=item.status,
        result=shallow(item.result, "result"),
        error=error[:MAX_ERROR_LENGTH] if error else None,
    )


# -- query parameters (GET /task/<id>, GET /tasks) ------------------------------------


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
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or (what == "a whole number" and not value.is_integer()):
        raise BadRequest(f"'{key}' must be {what}")
    return value


def query_number(args, key: str, default: float, low: float, high: float) -> float:
    value = _query_value(args, key, "a number")
    if value is None:
        return default
    if not low <= value <= high:
        raise BadRequest(f"'{key}' must be between {low:g} and {high:g}")
    return value


def query_integer(args, key: str, default: int, low: int, high: int) -> int:
    value = _query_value(args, key, "a whole number")
    if value is None:
        return default
    if not low <= value <= high:
        raise BadRequest(f"'{key}' must be between {low} and {high}")
    return int(value)
