"""Named errors, and the one place that turns them into JSON responses."""

from __future__ import annotations

import logging

from flask import Flask
from werkzeug.exceptions import HTTPException

from tasks import InvalidPayload

log = logging.getLogger("dispatcher")


class QueueError(Exception):
    """An error the client caused or must know about; str(exc) is what the client reads."""

    http_status = 400


class BadRequest(QueueError):
    http_status = 400


class Unauthorized(QueueError):
    http_status = 401


class TaskNotFound(QueueError):
    http_status = 404

    def __init__(self, task_id: str):
        super().__init__(f"task {task_id} not found")


class Conflict(QueueError):
    """A state change the task's current state refuses (finished, other lease, taken over)."""

    http_status = 409


class LeaseConflict(Conflict):
    pass


class WorkerTakenOver(Conflict):
    def __init__(self, worker_id: str):
        super().__init__(
            f"worker id {worker_id} was taken over by a newer instance; this instance must stop"
        )


class WorkerStopping(QueueError):
    """The worker said it is shutting down: it is given no more tasks (its claims are
    answered with none)."""

    http_status = 409

    def __init__(self, worker_id: str):
        super().__init__(f"worker {worker_id} is stopping: it claims nothing more")


class DatabaseUnavailable(QueueError):
    http_status = 503


class DiskFull(DatabaseUnavailable):
    """The database's disk is full: writes are refused, reads go on."""

    def __init__(self, detail: str):
        super().__init__(
            f"the database's disk is full ({detail}); nothing was stored: "
            "try again once space is freed"
        )


class ReadOnly(DatabaseUnavailable):
    """The database takes no writes (a read-only file, mount or server)."""

    def __init__(self, detail: str):
        super().__init__(
            f"the database is read-only ({detail}); nothing was stored: try again later"
        )


class TooManyHeld(QueueError):
    """A process holds as many waiting requests as it may; the client retries later."""

    http_status = 429

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class RequestTimeout(QueueError):
    """The client stopped sending its request body (DISPATCHER_READ_TIMEOUT)."""

    http_status = 408


def register(app: Flask) -> None:
    """Every error leaves the dispatcher as {"error": "..."} with its status."""

    @app.errorhandler(QueueError)
    def queue_error(exc: QueueError):
        headers = {}
        if isinstance(exc, TooManyHeld):
            headers["Retry-After"] = str(exc.retry_after)
        return {"error": str(exc)}, exc.http_status, headers

    @app.errorhandler(InvalidPayload)
    def invalid_payload(exc: InvalidPayload):
        return {"error": str(exc)}, 400

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
