"""Task progress: from a pool process to the worker, and on with a heartbeat.

A task's `TaskContext.progress(fraction, message)` reaches the worker through one
datagram socket pair made once per worker (`Channel`). The pool processes share its
sending end, handed to each through the pool's initializer (a renewed pool gets the
same), and a reader thread in the worker keeps the latest report of each task
(`Board`). Datagrams, not a pipe under a lock: a report arrives whole or not at all,
and a process killed at its timeout in the middle of a send can neither garble another
process's reports nor leave a lock held that stops them. A task that never reports
sends nothing.

In a pool process (`Outbox`) the reports go out at most every SEND_EVERY_S: one made
sooner is held (the newest of each task wins) and a helper thread, started at the first
held report, sends it when the interval is over. The task never waits for the worker.

The heartbeat thread sends the dispatcher, with its next heartbeat, the reports that
changed since the last one, for the tasks it still holds; with reports waiting it does
not wait the whole heartbeat interval but SOONER_S after the last heartbeat (so at most
about one more heartbeat a second). Reports of tasks no longer held are dropped.
"""

from __future__ import annotations

import logging
import math
import pickle
import socket
import threading
import time
from collections.abc import Callable, Collection

from tasks.context import MAX_MESSAGE

log = logging.getLogger("worker")

SEND_EVERY_S = 0.1  # a pool process sends a report at most this often
SOONER_S = 1.0  # with reports waiting, a heartbeat this long after the last one
MAX_DATAGRAM = 65_536  # far above a report (a task id and 200 characters)

# -- the channel: made in the worker ---------------------------------------------------


class Channel:
    """One datagram socket pair: `sender` for the pool processes, read by a thread."""

    def __init__(self, on_report: Callable[[str, float, str, float], None]):
        self.receiver, self.sender = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._on_report = on_report
        self._reader = threading.Thread(target=self._read, name="progress", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.receiver.recv(MAX_DATAGRAM)
            except OSError:  # closed
                return
            if not data:  # close(): the end
                return
            try:
                task_id, fraction, message, at = pickle.loads(data)
                self._on_report(task_id, fraction, message, at)
            except Exception:  # one bad report costs a log line, not the thread
                log.exception("a progress report could not be read")

    def close(self) -> None:
        """Stop the reader and close both ends (again: nothing more)."""
        if self.sender.fileno() == -1:
            return
        self.sender.settimeout(5)  # the pool processes send with MSG_DONTWAIT anyway
        try:
            self.sender.send(b"")  # the reader's last datagram
        except OSError as exc:
            log.warning("progress channel: could not stop its reader: %s", exc)
        self._reader.join(timeout=5)
        self.sender.close()
        self.receiver.close()


# -- in a pool process --------------------------------------------------------------------


class Outbox:
    """A pool process's reports to the worker: sent at once, or held and sent by a
    helper thread when SEND_EVERY_S has passed since the last send."""

    def __init__(self, sender: socket.socket, clock: Callable[[], float] = time.monotonic):
        self._sender = sender
        self._clock = clock
        self._lock = threading.Lock()
        self._held_changed = threading.Condition(self._lock)
        self._held: dict[str, tuple] = {}  # task id -> its newest report not sent yet
        self._next_send = 0.0
        self._helper: threading.Thread | None = None

    def report(self, task_id: str, fraction: float, message: str) -> None:
        """TaskContext's `report`: never waits for the worker."""
        item = (task_id, fraction, message, time.time())
        with self._lock:
            now = self._clock()
            if self._held or now < self._next_send:  # after what waits, not before it
                self._hold(item)
                return
            self._next_send = now + SEND_EVERY_S
        if not self._send(item):
            with self._lock:
                self._hold(item)

    def _hold(self, item: tuple) -> None:
        """(called with the lock held)"""
        self._held[item[0]] = item
        if self._helper is None:
            self._helper = threading.Thread(target=self._send_held, name="progress", daemon=True)
            self._helper.start()
        self._held_changed.notify()

    def _send_held(self) -> None:
        while True:
            with self._lock:
                self._held_changed.wait_for(lambda: self._held)
                while (left := self._next_send - self._clock()) > 0:
                    self._held_changed.wait(left)
                items = list(self._held.values())
                self._held.clear()
                self._next_send = self._clock() + SEND_EVERY_S
            for item in items:
                if not self._send(item):
                    with self._lock:
                        self._held.setdefault(item[0], item)  # unless a newer one came

    def _send(self, item: tuple) -> bool:
        """False when the worker's socket is full (it reads slower than tasks report:
        the report is sent again later); a worker that is gone drops it."""
        try:
            self._sender.send(pickle.dumps(item), socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError as exc:  # the worker is gone, and this process with it shortly
            log.debug("progress report dropped: %s", exc)
        return True


# -- in the worker -------------------------------------------------------------------------


class Board:
    """The newest report of each task the worker holds, and which of them changed since
    they were last handed to a heartbeat. `on_change` is called at each new report."""

    def __init__(self, on_change: Callable[[], None] = lambda: None):
        self._on_change = on_change
        self._lock = threading.Lock()
        self._latest: dict[str, tuple[float, str, float]] = {}  # id -> (fraction, message, seen)
        self._changed: set[str] = set()

    def put(self, task_id: str, fraction: float, message: str, at: float = 0.0) -> None:
        """A report from a pool process (the reader thread); one the dispatcher would
        refuse (not a fraction from 0 to 1) is dropped, a long message cut."""
        if not isinstance(task_id, str) or not _is_fraction(fraction):
            log.warning("progress report of task %r dropped: fraction %r", task_id, fraction)
            return
        with self._lock:
            self._latest[task_id] = (float(fraction), str(message)[:MAX_MESSAGE], time.monotonic())
            self._changed.add(task_id)
        self._on_change()

    @property
    def waiting(self) -> bool:
        """Are there reports no heartbeat has taken yet?"""
        return bool(self._changed)

    def take(self, held: Collection[str], since: float) -> dict[str, dict] | None:
        """The changed reports of the `held` tasks, as a heartbeat's `progress` (None
        when there is none). Reports of tasks not held are forgotten, unless they came
        after `since` (monotonic time at which `held` was read: a task just started)."""
        if not self._latest:
            return None
        held = set(held)
        with self._lock:
            gone = [t for t, (_, _, seen) in self._latest.items() if t not in held and seen < since]
            for task_id in gone:
                del self._latest[task_id]
                self._changed.discard(task_id)
            out = {}
            for task_id in self._changed & held:
                fraction, message, _ = self._latest[task_id]
                out[task_id] = {"fraction": fraction, "message": message}
            self._changed.difference_update(out)
        return out or None

    def not_sent(self, progress: dict[str, dict] | None) -> None:
        """A heartbeat that took `progress` did not reach the dispatcher: the next one
        sends those reports again (unless their task is gone meanwhile)."""
        if progress:
            with self._lock:
                self._changed.update(t for t in progress if t in self._latest)


def _is_fraction(value: object) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value <= 1
    )
