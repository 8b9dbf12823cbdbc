"""Wake-ups between the dispatcher processes of one machine: SQLite's NOTIFY.

Every process that serves one SQLite file (gunicorn's workers, other dispatchers on the
same file; SQLite's WAL only works between processes of one machine) binds a Unix
datagram socket in a directory named after the file. While a process holds long polls
it also keeps a marker file beside its socket (`set_waiting`). After a commit that may
wake a held long poll, `announce()` sends one byte to every other socket there that has
its marker; `listen()` calls back on every byte received. A process with nothing
waiting is left alone: waking it for nothing cost ~5 % of a single submission's time
on two cores. A datagram costs a few microseconds and wakes the
other process at once, where reading `PRAGMA data_version` every millisecond cost up to
a millisecond of latency and a core's idle work while anyone waited.

Nothing depends on a datagram arriving: a full socket buffer already holds a wake-up,
a socket (and marker) left by a killed process is removed by the first sender that
finds it dead, and Wakeup still reads the change counter as a slower fallback. The
marker goes up before the waiter's last look at the database
(`Wakeup.generation(will_wait=True)`), so a commit it did not see is announced to it.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("dispatcher")

RECV_TIMEOUT_S = 0.5  # how often a listener looks at its stop event
SOCK, MARK = ".sock", ".wait"  # a listener's socket, and its marker while it has waiters


class LocalWake:
    def __init__(self, database: Path):
        key = hashlib.sha256(str(Path(database).resolve()).encode()).hexdigest()[:16]
        # under the temporary directory, not beside the file: a socket path has at most
        # 107 bytes, and a database may live deep in a tree
        self.directory = Path(tempfile.gettempdir()) / f"taskqueue-wake-{key}"
        self._own: set[str] = set()
        self._waiting = False  # the markers' state, kept across a fresh listen
        self._lock = threading.Lock()
        self._sender: socket.socket | None = None

    def set_waiting(self, waiting: bool) -> None:
        """Put up (or take down) this process's markers: announcers wake only the
        processes that have one. A listener that binds later puts its marker up then."""
        with self._lock:
            self._waiting = waiting
            for name in self._own:
                self._set_marker(name, waiting)

    def _set_marker(self, name: str, up: bool) -> None:
        marker = self.directory / (name.removesuffix(SOCK) + MARK)
        try:
            if up:
                marker.touch()
            else:
                marker.unlink(missing_ok=True)
        except OSError as exc:  # e.g. the directory was removed: the fallback poll covers it
            log.warning("wake-up marker %s: %s", marker, exc)

    def listen(self, callback: Callable[[], None], stop: threading.Event) -> None:
        """Call `callback()` once now and for every announcement until `stop` is set."""
        self.directory.mkdir(mode=0o700, exist_ok=True)
        self._sweep_dead()
        name = f"{os.getpid()}-{threading.get_ident()}{SOCK}"
        path = self.directory / name
        path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(str(path))
            sock.settimeout(RECV_TIMEOUT_S)
            with self._lock:
                self._own.add(name)
                if self._waiting:
                    self._set_marker(name, True)
            callback()  # for whatever was committed before we listened
            while not stop.is_set():
                try:
                    sock.recv(64)
                except TimeoutError:
                    continue
                callback()
        finally:
            with self._lock:
                self._own.discard(name)
                self._set_marker(name, False)
            sock.close()
            path.unlink(missing_ok=True)
            try:
                self.directory.rmdir()  # the last one out; fails while others listen
            except OSError:
                pass

    def _sweep_dead(self) -> None:
        """Remove the sockets and markers of processes that are gone (killed, or ended
        without stopping their listener): announce() no longer finds unmarked ones."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return
        for name in names:
            pid = name.split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                _remove(os.path.join(self.directory, name))

    def announce(self) -> None:
        """Wake every other listener of this database that has waiters (never raises)."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return  # nobody listens yet
        marked = [n.removesuffix(MARK) for n in names if n.endswith(MARK)]
        if not marked:
            return
        with self._lock:
            if self._sender is None:
                self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sender.setblocking(False)
            sender, own = self._sender, self._own
            for stem in marked:
                if stem + SOCK in own:
                    continue
                path = os.path.join(self.directory, stem + SOCK)
                try:
                    sender.sendto(b"!", path)
                except OSError as exc:
                    if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):  # its process died
                        _remove(path)
                        _remove(os.path.join(self.directory, stem + MARK))
                    # EAGAIN: its buffer is full, so a wake-up is already waiting there

    def close(self) -> None:
        with self._lock:
            if self._sender is not None:
                self._sender.close()
                self._sender = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, as another user's process
        return True
    return True


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
