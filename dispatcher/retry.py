"""When a failed attempt may run again: a pure function, applied by storage."""

from __future__ import annotations

import random
from collections.abc import Callable


def retry_at(
    attempt: int,
    max_retries: int,
    now: float,
    base: float,
    cap: float,
    rand: Callable[[], float] = random.random,
) -> float | None:
    """The time attempt `attempt + 1` may start, or None when no retries are left.

    The delay doubles per attempt from `base`, is capped at `cap`, and is jittered
    within [delay/2, delay] so that tasks failing together do not retry together.
    """
    if attempt > max_retries:
        return None
    delay = min(cap, base * 2 ** (attempt - 1))
    return now + delay / 2 + rand() * delay / 2
