"""`sleep`: sleep for a while (the worker kills the task at its timeout).

Payload: {"duration": number of seconds, 0..86400}. Result: {"slept": duration}.
"""

from __future__ import annotations

import time
from typing import Any

from common.config import Config
from tasks import fields

NAME = "sleep"
MAX_DURATION = 86400


def validate(payload: dict[str, Any], config: Config) -> dict[str, Any]:
    fields.check_fields(NAME, payload, ("duration",), ())
    duration = fields.number(NAME, payload, "duration")
    fields.in_range(NAME, "duration", duration, 0, MAX_DURATION, "seconds")
    return {"duration": duration}


def run(payload: dict[str, Any]) -> dict[str, Any]:
    duration = payload["duration"]
    time.sleep(duration)
    return {"slept": duration}
