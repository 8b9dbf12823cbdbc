"""Wake-ups between processes sharing one SQLite file (dispatcher/localwake.py): a commit
announced by one storage wakes the waiters of another at once, with the change counter's
polling switched off so that only the datagram can do it."""

from __future__ import annotations

import socket
import threading

import pytest

from dispatcher.localwake import LocalWake
from dispatcher.storage.sqlite import SqliteStorage
from dispatcher.wakeup import Wakeup

NO_POLL = 3600.0  # the fallback reads the counter once, then not for an hour


@pytest.fixture
def two_storages(tmp_path):
    a, b = SqliteStorage(tmp_path / "tasks.db"), SqliteStorage(tmp_path / "tasks.db")
    yield a, b
    a.close()
    b.close()


def wakeup_of(storage: SqliteStorage) -> Wakeup:
    wakeup = Wakeup(
        storage.change_counter, NO_POLL, listen=storage.listen, announce=storage.announce
    )
    wakeup.start()
    return wakeup


def settled(wakeup: Wakeup) -> int:
    """The generation once the start-up wake-ups (first read, first listen) are over."""
    seen = wakeup.generation()
    while True:
        now = wakeup.wait(seen, 0.3)
        if now == seen:
            return seen
        seen = now


def test_a_commit_announced_by_one_storage_wakes_the_other(two_storages):
    a, b = two_storages
    waiting, announcing = wakeup_of(a), wakeup_of(b)
    try:
        seen = settled(waiting)
        settled(announcing)  # b is listening too, so its own socket is known to it
        announcing.notify()
        assert waiting.wait(seen, 10) != seen, "the other storage's waiter was not woken"
    finally:
        for w in (waiting, announcing):
            w.stop()
            w.join(5)


def test_a_storage_does_not_wake_itself_through_the_socket(two_storages):
    a, _ = two_storages
    wakeup = wakeup_of(a)
    try:
        seen = settled(wakeup)
        a.announce()  # no other listener: nothing may arrive
        assert wakeup.wait(seen, 0.5) == seen
    finally:
        wakeup.stop()
        wakeup.join(5)


def test_a_socket_left_by_a_dead_process_is_removed(tmp_path):
    wake = LocalWake(tmp_path / "tasks.db")
    wake.directory.mkdir(mode=0o700, exist_ok=True)
    stale = wake.directory / "999999-1.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(stale))
    dead.close()  # bound, then gone without unlinking: what kill -9 leaves
    try:
        wake.announce()
        assert not stale.exists()
    finally:
        stale.unlink(missing_ok=True)
        wake.close()


def test_a_listener_removes_its_socket_when_it_stops(tmp_path):
    wake = LocalWake(tmp_path / "tasks.db")
    stop, heard = threading.Event(), threading.Event()
    listener = threading.Thread(target=wake.listen, args=(heard.set, stop))
    listener.start()
    assert heard.wait(10), "the listener never started"
    assert any(wake.directory.glob("*.sock"))
    stop.set()
    listener.join(10)
    assert not listener.is_alive()
    assert not any(wake.directory.glob("*.sock"))
