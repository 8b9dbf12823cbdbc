"""Held requests: a worker's claim that waits for work, a client's wait for a result.

Hundreds of workers may hold a poll on queues that stay empty. Every commit wakes them
all (wakeup.py), so each would read the database once per wake-up; here the waiters of
one process share that read instead: the earliest `run_at` of their queues is read once
per change generation and queue list (`ReadyCache`), and only when it says a task is
ready does a waiter go for the claim, one at a time, each one after a fresh read.

A process holds at most `limit` requests at once (half of DISPATCHER_CONNECTIONS), so
held polls can never take every connection a process serves; one more gets 429 with
Retry-After, which the worker's client honours.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .errors import TooManyHeld
from .wakeup import Wakeup

RETRY_AFTER_S = 1  # what a request over the limit is told to wait
CACHE_MAX = 1024  # queue lists remembered at once (a client chooses them)


class ReadyCache:
    """The earliest run_at of the pending tasks of a list of queues, as of a generation
    of Wakeup: read once by the first waiter to ask, answered from memory to the
    others until a commit moves the generation (or a waiter forgets it to claim)."""

    def __init__(self, storage, clock: Callable[[], float]):
        self._storage = storage
        self._clock = clock
        self._known: dict[tuple[str, ...], tuple[int, float | None]] = {}
        self._lock = threading.Lock()  # one read at a time: the others wait for its answer

    def due(self, queues: tuple[str, ...], generation: int) -> float | None:
        """`generation` was read before the caller's last look at the database."""
        with self._lock:
            known = self._known.get(queues)
            if known is not None and known[0] == generation:
                return known[1]
            now = self._clock()
            # has_ready is one index probe (and one of the queues' limiting settings);
            # next_run_at walks the queues' pending tasks
            storage = self._storage
            due = now if storage.has_ready(queues, now) else storage.next_run_at(queues, now)
            if len(self._known) >= CACHE_MAX:
                self._known.clear()
            self._known[queues] = (generation, due)
            return due

    def forget(self, queues: tuple[str, ...]) -> None:
        """A claim is about to change what is ready: the next waiter reads again."""
        with self._lock:
            self._known.pop(queues, None)


class Held:
    """How many requests this process holds, against its limit."""

    def __init__(self, limit: int):
        self.limit = max(1, limit)
        self.count = 0
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, waits: bool) -> Iterator[None]:
        if not waits:
            yield
            return
        with self._lock:
            if self.count >= self.limit:
                raise TooManyHeld(
                    f"this dispatcher process holds {self.limit} waiting requests already; "
                    f"retry after {RETRY_AFTER_S} s",
                    retry_after=RETRY_AFTER_S,
                )
            self.count += 1
        try:
            yield
        finally:
            with self._lock:
                self.count -= 1


def claim_waiting(
    claim: Callable[[], list[dict]],
    queues: tuple[str, ...],
    wait: float,
    wakeup: Wakeup,
    ready: ReadyCache,
    clock: Callable[[], float],
) -> list[dict]:
    """Claim now, or wait up to `wait` seconds for a task of `queues` and claim it."""
    deadline = time.monotonic() + wait
    seen = wakeup.generation(wait > 0)  # before the claim: no submission slips between
    tasks = claim()
    while not tasks:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        due = ready.due(queues, seen)
        now = clock()
        if due is not None and due <= now:
            ready.forget(queues)
            seen = wakeup.generation()
            tasks = claim()
            continue
        if due is not None:  # a delayed task becomes ready at `due`
            left = min(left, due - now + 0.001)
        seen = wakeup.wait(seen, left)
    return tasks
