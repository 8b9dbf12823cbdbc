"""Named errors of the HTTP layer, the HTTP status of every error (storage's too), and
the one place that turns them into JSON responses."""

from __future__ import annotations

import logging

from flask import Flask
from werkzeug.exceptions import HTTPException

from tasks import InvalidPayload

from . import metrics
from .storage.errors import (  # noqa: F401  (re-exported: the app's names for them)
    BadValue,
    Conflict,
    DatabaseUnavailable,
    DiskFull,
    LeaseConflict,
    QueueFull,
    ReadOnly,
    ScheduleNotFound,
    StorageError,
    TaskNotFound,
    UnknownDependency,
    WorkerStopping,
    WorkerTakenOver,
)

log = logging.getLogger("dispatcher")


class QueueError(Exception):
    """An error the client caused or must know about; str(exc) is what the client reads."""

    http_status = 400


class BadRequest(QueueError):
    http_status = 400


class Unauthorized(QueueError):
    http_status = 401


class TooManyHeld(QueueError):
    """A process holds as many waiting requests as it may; the client retries later."""

    http_status = 429

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class RequestTimeout(QueueError):
    """The client stopped sending its request body (DISPATCHER_READ_TIMEOUT)."""

    http_status = 408


# storage's errors, most specific first
STORAGE_STATUS: tuple[tuple[type[StorageError], int], ...] = (
    (TaskNotFound, 404),
    (ScheduleNotFound, 404),
    (Conflict, 409),
    (WorkerStopping, 409),
    (QueueFull, 429),
    (BadValue, 400),
    (UnknownDependency, 400),
    (DatabaseUnavailable, 503),
)

QUEUE_FULL_RETRY_AFTER = 1  # seconds a refused submission waits before it tries again

CLIENT_ERRORS = (QueueError, StorageError, InvalidPayload)


def http_status(exc: Exception) -> int:
    """The status a client gets for `exc` (500 for anything unexpected)."""
    if isinstance(exc, QueueError):
        return exc.http_status
    if isinstance(exc, InvalidPayload):
        return 400
    for kind, status in STORAGE_STATUS:
        if isinstance(exc, kind):
            return status
    return 500


def register(app: Flask) -> None:
    """Every error leaves the dispatcher as {"error": "..."} with its status."""

    @app.errorhandler(QueueError)
    @app.errorhandler(StorageError)
    @app.errorhandler(InvalidPayload)
    def client_error(exc: Exception):
        headers = {}
        if isinstance(exc, DatabaseUnavailable):
            metrics.DATABASE_ERRORS.inc()
        if isinstance(exc, TooManyHeld):
            headers["Retry-After"] = str(exc.retry_after)
        elif isinstance(exc, QueueFull):  # the queue drains at the workers' pace: soon
            headers["Retry-After"] = str(QUEUE_FULL_RETRY_AFTER)
        return {"error": str(exc)}, http_status(exc), headers

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        messages = {
            404: "no such endpoint",
            405: "method not allowed on this endpoint",
            413: f"request body too large (limit {app.config['MAX_CONTENT_LENGTH']} bytes)",
        }
        message = messages.get(exc.code or 500, exc.description or exc.name)
        # keep what the exception says besides its HTML type, e.g. 405's Allow header
        headers = [(k, v) for k, v in exc.get_headers() if k.lower() != "content-type"]
        return {"error": message}, exc.code or 500, headers

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unexpected error: %s", exc)
        return {"error": "internal error; see the dispatcher log"}, 500
