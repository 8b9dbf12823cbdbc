"""One log line per event, to stderr, at LOG_LEVEL; LOG_FORMAT picks its shape.

`text` (the default): `2026-01-01 12:00:00,123 INFO dispatcher[4242] message`.
`json`: one JSON object per line, for a log shipper: `ts` (ISO 8601 UTC), `level`,
`logger`, `message`, `pid`, and when known `task_id`, `worker_id`, `attempt`, `queue`,
`request_id` (plus `exception` with the traceback when there is one). Log sites pass the
known fields with `extra={"task_id": ...}`; process-wide ones (a worker's id) are set
once with `set_fields`, and the dispatcher names the request being served with
`set_request_id_source`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Callable
from datetime import datetime, timezone

FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s"
FORMATS = ("text", "json")
FIELDS = ("task_id", "worker_id", "attempt", "queue", "request_id")

# What an X-Request-ID may be to be kept (else the dispatcher makes a new one).
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")

_fields: dict[str, object] = {}  # process-wide fields (set_fields)
_request_id_source: list[Callable[[], str | None]] = []
_format = ["text"]


def new_request_id() -> str:
    """32 random hex digits (uuid4's randomness, without building a UUID: 0.5 µs, not 3)."""
    return os.urandom(16).hex()


def valid_request_id(value: str | None) -> bool:
    return value is not None and REQUEST_ID.fullmatch(value) is not None


class JsonFormatter(logging.Formatter):
    """A record as one JSON object on one line."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, timezone.utc)
        entry: dict[str, object] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for key in FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


class ContextFilter(logging.Filter):
    """Adds the process-wide fields and the current request's id to every record that
    does not carry them already."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _fields.items():
            if getattr(record, key, None) is None:
                setattr(record, key, value)
        if _request_id_source and getattr(record, "request_id", None) is None:
            record.request_id = _request_id_source[0]()
        return True


def set_fields(**fields: object) -> None:
    """Fields every later line of this process carries (e.g. the worker's id)."""
    _fields.update(fields)


def set_request_id_source(source: Callable[[], str | None]) -> None:
    """`source()` names the request being served (None outside a request)."""
    _request_id_source[:] = [source]


def json_mode() -> bool:
    return _format[0] == "json"


def formatter(log_format: str | None = None) -> logging.Formatter:
    return JsonFormatter() if (log_format or _format[0]) == "json" else logging.Formatter(FORMAT)


def use_format(handler: logging.Handler, log_format: str | None = None) -> None:
    """Give `handler` (ours, or gunicorn's) the formatter and filter of LOG_FORMAT."""
    handler.setFormatter(formatter(log_format))
    for f in [f for f in handler.filters if isinstance(f, ContextFilter)]:
        handler.removeFilter(f)
    if (log_format or _format[0]) == "json":
        handler.addFilter(ContextFilter())


def setup_logging(level: str, log_format: str = "text") -> None:
    _format[0] = log_format
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "_taskqueue", False)]
    if not ours:
        handler = logging.StreamHandler(sys.stderr)
        handler._taskqueue = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        ours = [handler]
    for handler in ours:
        use_format(handler, log_format)
    root.setLevel(level.upper())
