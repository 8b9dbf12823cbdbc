"""A value read again only when it is older than its time to live."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class Cached:
    """A value read at most once per `ttl_s`, whoever asks (the storage gauges of
    /metrics, the dashboard's full counts: reads of every task's index entry)."""

    def __init__(self, read: Callable[[], Any], ttl_s: float, clock: Callable[[], float]):
        self.read, self.ttl_s, self.clock = read, ttl_s, clock
        self.lock = threading.Lock()
        self.value: Any = None
        self.read_at = float("-inf")

    def get(self) -> tuple[Any, float]:
        """The value and when it was read."""
        with self.lock:
            if self.value is None or self.clock() - self.read_at >= self.ttl_s:
                self.value, self.read_at = self.read(), self.clock()
            return self.value, self.read_at
