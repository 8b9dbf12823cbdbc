"""Wake held long polls the moment something changes.

Inside one server process a commit calls `notify()`. Commits made by other processes
(gunicorn's other workers, another dispatcher on the same file) are seen by a thread
that reads the database's change counter (SQLite's `PRAGMA data_version`) every
POLL_S, but only while some request is waiting. Waiters re-check their condition after
every wake-up, so a spurious wake-up costs one cheap read, and a missed one costs at
most the waiter's own timeout, never a task.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("dispatcher")

POLL_S = 0.001  # a PRAGMA data_version read costs microseconds


class Wakeup:
    def __init__(self, change_counter: Callable[[], int], poll_s: float = POLL_S):
        self._change_counter = change_counter
        self._poll_s = poll_s
        self._cond = threading.Condition()
        self._generation = 0
        self._waiters = 0
        self._someone_waits = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def notify(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def generation(self) -> int:
        with self._cond:
            return self._generation

    def wait(self, seen: int, timeout: float) -> int:
        """Wait until the generation moves past `seen` or `timeout` passes."""
        self._start()
        with self._cond:
            self._waiters += 1
            self._someone_waits.set()
            try:
                self._cond.wait_for(lambda: self._generation != seen, timeout)
                return self._generation
            finally:
                self._waiters -= 1
                if not self._waiters:
                    self._someone_waits.clear()

    def stop(self) -> None:
        self._stopped.set()
        self._someone_waits.set()

    def _start(self) -> None:
        if self._thread is None:
            with self._cond:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._watch, name="wakeup", daemon=True)
                    self._thread.start()

    def _watch(self) -> None:
        last = None
        while not self._stopped.is_set():
            self._someone_waits.wait()
            try:
                counter = self._change_counter()
            except Exception as exc:  # the database is away: waiters time out on their own
                log.warning("change watch failed: %s", exc)
                self._stopped.wait(1.0)
                continue
            if counter != last:  # also the first read: a commit may precede it
                self.notify()
            last = counter
            self._stopped.wait(self._poll_s)
