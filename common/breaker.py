"""A circuit breaker for a process's calls to the dispatcher (one per worker process,
shared by all its threads' Clients).

closed: calls go through; WORKER_BREAKER_FAILURES failed calls in a row (no answer, or a
5xx: what the client raises as DispatcherUnreachable) open it. open: calls fail at once
with DispatcherUnreachable, without touching the network, for a back-off that starts at
`first` seconds and doubles at each re-opening up to WORKER_BREAKER_MAX_BACKOFF, with
jitter (each wait is drawn in [delay/2, delay]). Then the next call is let through as the
one probe (half-open; other calls still fail at once): an answer closes the breaker, a
failure re-opens it with the doubled back-off. An HTTP answer below 500 (a 4xx, a 429)
is the dispatcher answering: it counts as a success, never as a failure.

Every change of state is one log line. The check each call makes while closed is one
attribute read and no lock (`allow`); the lock is taken only on the way to and from
open, and on a success after failures.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

from common.tls import certificate_failure

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"
FIRST_BACKOFF_S = 1.0  # the first open period (at most the cap)

log = logging.getLogger("client")
log.addHandler(logging.NullHandler())


class BreakerOpen(Exception):
    """Raised by `allow()` when a call may not go out now; `retry_in` seconds until the
    next probe may (0 while a probe is in flight). The client turns it into
    DispatcherUnreachable."""

    def __init__(self, message: str, retry_in: float):
        super().__init__(message)
        self.retry_in = retry_in


class CircuitBreaker:
    def __init__(
        self,
        failures: int = 5,
        max_backoff: float = 30.0,
        first: float = FIRST_BACKOFF_S,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        name: str = "dispatcher",
        on_failure: Callable[[], None] | None = None,
    ):
        if failures < 1:
            raise ValueError("failures must be at least 1")
        self.threshold = failures
        self.max_backoff = max_backoff
        self.first = min(first, max_backoff)
        self.clock = clock
        self.rand = rand
        self.name = name
        self._state = CLOSED  # read without the lock on every call
        self._failures = 0  # failed calls in a row while closed
        self._opened = 0  # openings since it last closed: the back-off's exponent
        self._until = 0.0  # open: no call before this time (clock)
        self._probe = False  # half-open: the probe call is out
        self._lock = threading.Lock()
        self.on_failure = on_failure  # called for each failed call (the worker's metrics)

    @property
    def state(self) -> str:
        """closed, open or half-open (open becomes half-open at the first call after its
        back-off, the probe)."""
        return self._state

    @property
    def failures(self) -> int:
        return self._failures

    def retry_in(self) -> float:
        """Seconds until a call may go out again (0 when closed or due for a probe)."""
        if self._state is CLOSED:
            return 0.0
        return max(0.0, self._until - self.clock())

    # -- the three calls a client makes -----------------------------------------------

    def allow(self) -> None:
        """Before a call: returns when it may go out, else raises BreakerOpen."""
        if self._state is CLOSED:  # the hot path: no lock
            return
        with self._lock:
            if self._state is CLOSED:
                return
            if self._state is OPEN:
                left = self._until - self.clock()
                if left > 0:
                    raise BreakerOpen(
                        f"circuit breaker open: no call to the {self.name} for {left:.1f} s "
                        f"more after {self.threshold} failed calls in a row",
                        left,
                    )
                self._state, self._probe = HALF_OPEN, True
                log.warning("circuit breaker half-open: one probe call to the %s", self.name)
                return
            if self._probe:  # half-open, its probe is out: everybody else waits
                raise BreakerOpen(
                    f"circuit breaker half-open: waiting for the probe call to the {self.name}",
                    0.0,
                )
            self._probe = True  # the probe ended without an outcome: this call is the next
            return

    def success(self) -> None:
        """The dispatcher answered (any status below 500)."""
        if self._state is CLOSED and not self._failures:  # the hot path: no lock
            return
        with self._lock:
            if self._state is HALF_OPEN:
                log.warning("circuit breaker closed: the %s answered the probe call", self.name)
            self._state, self._failures, self._opened, self._probe = CLOSED, 0, 0, False

    def failure(self, why: object = "") -> None:
        """The call got no answer, or a 5xx."""
        if self.on_failure is not None:
            self.on_failure()
        with self._lock:
            if self._state is CLOSED:
                self._failures += 1
                if self._failures >= self.threshold:
                    self._open(f"{self._failures} failed calls in a row", why)
            elif self._state is HALF_OPEN:
                self._open("the probe call failed", why)
            # open: a call let through before it opened failed too; nothing changes

    def release(self) -> None:
        """A call that was allowed ended with neither outcome (it was aborted, or raised
        something unexpected): a half-open breaker lets the next call probe."""
        if self._state is HALF_OPEN:
            with self._lock:
                self._probe = False

    def _open(self, reason: str, why: object) -> None:
        """(lock held)"""
        delay = min(self.max_backoff, self.first * 2 ** min(self._opened, 30))
        wait = delay / 2 + self.rand() * delay / 2  # jitter within [delay/2, delay]
        self._opened += 1
        self._state, self._until, self._probe = OPEN, self.clock() + wait, False
        self._failures = 0
        if certificate_failure(why):  # said once by the worker's claim loop (docs/SECURITY.md)
            why = "its certificate is not trusted"
        log.warning(
            "circuit breaker open: %s to the %s (%s); no calls for %.1f s",
            reason,
            self.name,
            why,
            wait,
        )
