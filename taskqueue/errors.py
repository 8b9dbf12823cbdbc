"""What the client library raises when the dispatcher refuses a request.

Every refusal (a 4xx) is a `common.client.ApiError` with `.status` and `.message` (the
dispatcher's one sentence); the frequent ones are subclasses too, so that a caller can
catch what it means with the built-in exception it resembles:

    InvalidRequest  400  (also a ValueError)       a bad task, payload, option or batch
    Unauthorized    401  (also a PermissionError)  API_TOKEN missing or wrong
    Forbidden       403  (also a PermissionError)  the token's role may not make this call
    NotFound        404  (also a LookupError)      unknown task id (or endpoint)
    Conflict        409                            cancel a finished task, retry an unfailed one

A 429 (the queue holds MAX_PENDING_TASKS; see Client's `retry_429_for`) stays an
ApiError with `.status` 429 and `.retry_after`.

No answer, or a 5xx, is `common.client.DispatcherUnreachable`.
"""

from __future__ import annotations

import re

from common.client import ApiError


class InvalidRequest(ApiError, ValueError):
    """400: nothing was stored or changed."""


class Unauthorized(ApiError, PermissionError):
    """401: the dispatcher wants API_TOKEN (`Client(token=...)`)."""


class Forbidden(ApiError, PermissionError):
    """403: the token is known, but its role may not make this call (docs/SECURITY.md):
    `role read may not POST /task/<id>/cancel`."""


class NotFound(ApiError, LookupError):
    """404: no such task (or no such endpoint, on a dispatcher older than this client)."""


class Conflict(ApiError):
    """409: the task's status refuses the change."""


BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
}


def refine(exc: ApiError, message: str | None = None) -> ApiError:
    """The same refusal as the class that names it (and, given, another message)."""
    cls = BY_STATUS.get(exc.status, ApiError)
    if cls is type(exc) and message is None:
        return exc
    return cls(exc.status, exc.message if message is None else message, exc.retry_after)


def shift_index(message: str, offset: int) -> str:
    """A batch's 400 names `tasks[i]` within its batch; name it within the whole list."""
    if not offset:
        return message
    return re.sub(r"^tasks\[(\d+)\]", lambda m: f"tasks[{int(m[1]) + offset}]", message)
