"""`fail`: always fails, with the given message (for testing retries and error reporting).

Payload: {"error_message"?: str = "task failed"}. run raises TaskFailed(error_message).
"""

from __future__ import annotations

from typing import Any, NoReturn

from common.config import Config
from tasks import fields
from tasks.errors import TaskFailed

NAME = "fail"
DEFAULT_MESSAGE = "task failed"
MAX_MESSAGE_LENGTH = 10000


def validate(payload: dict[str, Any], config: Config) -> dict[str, Any]:
    fields.check_fields(NAME, payload, (), ("error_message",))
    message = fields.string(
        NAME, payload, "error_message", DEFAULT_MESSAGE, max_len=MAX_MESSAGE_LENGTH
    )
    return {"error_message": message}


def run(payload: dict[str, Any]) -> NoReturn:
    raise TaskFailed(payload.get("error_message", DEFAULT_MESSAGE))
