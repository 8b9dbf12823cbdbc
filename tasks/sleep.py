"""`sleep`: sleep for a while (the worker kills the task at its timeout)."""

from __future__ import annotations

import time
from typing import Annotated

from msgspec import Meta

from tasks.typed import task

MAX_DURATION = 86400


@task("sleep")
def sleep(duration: Annotated[float, Meta(ge=0, le=MAX_DURATION)]) -> dict:
    """Sleep for `duration` seconds (0 to 86400); returns {"slept": duration}."""
    time.sleep(duration)
    return {"slept": duration}
