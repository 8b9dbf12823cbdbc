"""How many tasks a worker claims ahead of those it runs.

A fixed WORKER_PREFETCH is used as is. `auto` sizes the prefetch from the recent run
time of this worker's tasks so that prefetched work lasts about TARGET_S: many quick
tasks per claim, none ahead of long ones. Until a task has been timed, nothing is
prefetched; while a running task has taken longer than TARGET_S, nothing is either,
and the worker gives its buffered tasks back (worker.py) so that an idle worker can
take them: one worker never sits on slow work while others idle.
"""

from __future__ import annotations

import threading

TARGET_S = 1.0
SMOOTHING = 0.2


class Prefetch:
    def __init__(self, fixed: int | None, concurrency: int, max_batch: int):
        self.fixed = fixed
        self.concurrency = concurrency
        self.max_batch = max_batch
        self.average: float | None = None
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        with self._lock:
            if self.average is None:
                self.average = seconds
            else:
                self.average += SMOOTHING * (seconds - self.average)

    @property
    def auto(self) -> bool:
        return self.fixed is None

    def size(self, longest_running: float = 0.0) -> int:
        """Tasks to hold ahead of the running ones; `longest_running` is how long the
        oldest running task has been at it (seconds)."""
        if self.fixed is not None:
            return self.fixed
        average = self.average
        if average is None or average >= TARGET_S or longest_running > TARGET_S:
            return 0
        per_slot = int(TARGET_S / max(average, 1e-4))
        return min(self.max_batch, per_slot * self.concurrency)
