"""Wake held long polls the moment something changes.

Inside one server process, storage calls `notify()` (its `on_change`) after a commit
that may wake a held poll. Commits made elsewhere (gunicorn's other workers, other
dispatchers on the same database) reach us in the ways every storage offers
(`Wakeup.for_storage`):

- a push: `storage.listen(callback, stop)` (PostgreSQL LISTEN/NOTIFY; on SQLite a Unix
  datagram the storage sends after its commits, see localwake.py)
  calls back at once in every dispatcher process. A thread keeps it running from the
  first wait on, and listens again a second after it fails; each fresh listen calls
  back once, for what it may have missed.
- a change counter: `storage.change_counter()` (SQLite's `PRAGMA data_version`; on
  PostgreSQL a sequence every notifying commit bumps) read every `change_poll_s` by a
  thread, but only while some request is waiting. With a push as well it is only the
  fallback for a lost notification, so it is read slowly; and since that counter moves
  just before its commit becomes visible, the waiters are woken once more a poll later.

With a push that can tell who waits (SQLite's `storage.set_waiting`), only processes
marked as waiting are woken. A caller that may wait marks its process before its last
look at the database (`generation(will_wait=True)`), so no commit it did not see goes
unannounced; the mark comes down once nobody has waited, or said they would, for
MARK_HOLD_S. A wait() that finds the mark down puts it up and returns at once, so a
caller that slipped past the mark looks again before it sleeps.

Waiters re-check their condition after every wake-up, so a spurious wake-up costs one
cheap read, and a missed one costs latency (at most a poll period, or the waiter's own
timeout), never a task.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("dispatcher")

POLL_S = 0.001  # a PRAGMA data_version read costs microseconds
LISTEN_RETRY_S = 1.0  # a lost listener connects again after this long
MARK_HOLD_S = 5.0  # a process stays marked as waiting this long after its last waiter

Listen = Callable[[Callable[[], None], threading.Event], None]


class Wakeup:
    def __init__(
        self,
        change_counter: Callable[[], int],
        poll_s: float = POLL_S,
        listen: Listen | None = None,
        set_waiting: Callable[[bool], None] | None = None,
    ):
        self._change_counter = change_counter
        self._poll_s = poll_s
        self._listen = listen
        self._set_waiting = set_waiting
        self._marked = False  # set_waiting(True) is in force
        self._idle_since = 0.0  # when the last waiter left
        self._cond = threading.Condition()
        self._generation = 0
        self._waiters = 0
        self._someone_waits = threading.Event()
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []

    @classmethod
    def for_storage(cls, storage) -> Wakeup:
        """Wake-ups from `storage` (its commits call notify(); its push and its change
        counter bring the others'), marking this process while it waits when the
        storage wakes only marked processes."""
        wakeup = cls(
            storage.change_counter,
            poll_s=storage.change_poll_s,
            listen=storage.listen,
            set_waiting=storage.set_waiting if storage.marks_waiters else None,
        )
        storage.on_change = wakeup.notify
        return wakeup

    def notify(self) -> None:
        """Something changed in this process: wake its waiters (the storage tells the
        other processes itself)."""
        self._wake()

    def _wake(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def generation(self, will_wait: bool = False) -> int:
        """The generation to pass to wait(), read before the caller checks its condition.
        `will_wait`: the caller may wait next, so mark this process as waiting first."""
        with self._cond:
            if will_wait:
                self._mark()
                self._idle_since = time.monotonic()  # the hold counts from here too
            return self._generation

    def _mark(self) -> bool:
        """Put the mark up if it is down; True when it was down (called with _cond held)."""
        if self._set_waiting is None or self._marked:
            return False
        self._set_waiting(True)
        self._marked = True
        self._idle_since = time.monotonic()
        return True

    def wait(self, seen: int, timeout: float) -> int:
        """Wait until the generation moves past `seen` or `timeout` passes. If the mark
        was down (the caller did not say `will_wait`, or it came down since), it goes up
        and the call returns at once: the caller looks again, now announced to."""
        self._start()
        with self._cond:
            if self._mark():
                return self._generation
            self._waiters += 1
            self._someone_waits.set()
            try:
                self._cond.wait_for(lambda: self._generation != seen, timeout)
                return self._generation
            finally:
                self._waiters -= 1
                if not self._waiters:
                    self._someone_waits.clear()
                    self._idle_since = time.monotonic()

    def start(self) -> None:
        """Start watching now rather than at the first wait (a listener then has its
        connection ready before the first long poll arrives)."""
        self._start()

    def stop(self) -> None:
        self._stopped.set()
        self._someone_waits.set()

    def join(self, timeout: float | None = None) -> None:
        """After stop(): wait for the watching threads to end (tests)."""
        for thread in self._threads:
            thread.join(timeout)

    def _start(self) -> None:
        if not self._threads:
            with self._cond:
                if not self._threads:
                    targets = [("wakeup-poll", self._watch)]
                    if self._listen is not None:
                        targets.append(("wakeup-listen", self._listen_forever))
                    for name, target in targets:
                        thread = threading.Thread(target=target, name=name, daemon=True)
                        thread.start()
                        self._threads.append(thread)

    def _watch(self) -> None:
        last = None
        moved = False  # the counter moved at the last read
        again = self._listen is not None  # see the module docstring
        while not self._stopped.is_set():
            hold = MARK_HOLD_S if self._set_waiting is not None else None
            if not self._someone_waits.wait(hold):
                self._unmark_if_idle()
                continue
            try:
                counter = self._change_counter()
            except Exception as exc:  # the database is away: waiters time out on their own
                log.warning("change watch failed: %s", exc)
                self._stopped.wait(1.0)
                continue
            changed = counter != last  # also the first read: a commit may precede it
            if changed or (again and moved):
                self._wake()
            moved = changed
            last = counter
            self._stopped.wait(self._poll_s)

    def _unmark_if_idle(self) -> None:
        with self._cond:
            idle = time.monotonic() - self._idle_since >= MARK_HOLD_S
            if self._marked and not self._waiters and idle:
                assert self._set_waiting is not None
                self._set_waiting(False)
                self._marked = False

    def _listen_forever(self) -> None:
        assert self._listen is not None
        lost = False

        def heard() -> None:
            nonlocal lost
            if lost:
                log.info("change listener is listening again")
                lost = False
            self._wake()

        while not self._stopped.is_set():
            try:
                self._listen(heard, self._stopped)
            except Exception as exc:
                if not lost:
                    log.warning("change listener lost the database, listening again: %s", exc)
                lost = True
                self._wake()  # waiters re-check; the polling fallback covers the gap
                self._stopped.wait(LISTEN_RETRY_S)
