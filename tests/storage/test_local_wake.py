"""Wake-ups between processes sharing one SQLite file (dispatcher/localwake.py): a commit
announced by one storage wakes the waiters of another at once, with the change counter's
polling switched off so that only the datagram can do it; a process with nobody waiting
is not woken at all."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from dispatcher import wakeup as wakeup_module
from dispatcher.localwake import LocalWake
from dispatcher.storage import NewTask
from dispatcher.storage.sqlite import SqliteStorage
from dispatcher.wakeup import Wakeup

NO_POLL = 3600.0  # the fallback reads the counter once, then not for an hour


@pytest.fixture
def two_storages(tmp_path):
    a, b = SqliteStorage(tmp_path / "tasks.db"), SqliteStorage(tmp_path / "tasks.db")
    yield a, b
    a.close()
    b.close()


def wakeup_of(storage: SqliteStorage, poll_s: float = NO_POLL) -> Wakeup:
    wakeup = Wakeup(
        storage.change_counter,
        poll_s,
        listen=storage.listen,
        set_waiting=storage.set_waiting,
    )
    wakeup.start()
    return wakeup


def settled(wakeup: Wakeup) -> int:
    """The generation once the start-up wake-ups (first read, first listen) are over."""
    seen = wakeup.generation(will_wait=True)
    while True:
        now = wakeup.wait(seen, 0.3)
        if now == seen:
            return seen
        seen = wakeup.generation(will_wait=True)


def test_a_commit_announced_by_one_storage_wakes_the_other(two_storages):
    a, b = two_storages
    waiting, announcing = wakeup_of(a), wakeup_of(b)
    try:
        seen = settled(waiting)
        settled(announcing)  # b is listening too, so its own socket is known to it
        b.submit([NewTask("sleep", {"duration": 0})], now=0.0)  # a commit b announces
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


def test_a_process_with_nobody_waiting_is_not_woken(two_storages):
    a, b = two_storages
    heard, stop = threading.Event(), threading.Event()
    listener = threading.Thread(target=a.listen, args=(heard.set, stop), daemon=True)
    listener.start()
    try:
        wait_for(heard.is_set, "a's listener never started")  # its first call-back
        heard.clear()
        b.announce()  # a listens but has no waiter: no datagram for it
        assert not heard.wait(0.5), "a process with nobody waiting was woken"
        a.set_waiting(True)
        b.announce()
        assert heard.wait(10), "a waiting process was not woken"
    finally:
        stop.set()
        listener.join(5)


def test_the_waiting_mark_comes_down_after_the_hold(two_storages, monkeypatch):
    monkeypatch.setattr(wakeup_module, "MARK_HOLD_S", 0.2)
    a, _ = two_storages
    wakeup = wakeup_of(a, poll_s=0.05)  # its watch thread takes the mark down
    directory = a._wake.directory
    try:
        settled(wakeup)
        assert any(directory.glob("*.wait")), "a process that waited is not marked"
        wait_for(lambda: not any(directory.glob("*.wait")), "the mark stayed up")
        wakeup.generation(will_wait=True)  # a caller about to look, then wait
        assert any(directory.glob("*.wait")), "a process about to wait is not marked"
    finally:
        wakeup.stop()
        wakeup.join(5)


def test_a_wait_that_finds_the_mark_down_returns_for_another_look(two_storages, monkeypatch):
    """The mark came down between a caller's generation(will_wait=True) and its wait():
    a commit in that gap went unannounced, so the wait puts the mark up and returns at
    once instead of sleeping through it."""
    monkeypatch.setattr(wakeup_module, "MARK_HOLD_S", 0.2)
    a, _ = two_storages
    wakeup = wakeup_of(a, poll_s=0.05)
    directory = a._wake.directory
    try:
        settled(wakeup)
        seen = wakeup.generation(will_wait=True)
        wait_for(lambda: not any(directory.glob("*.wait")), "the mark stayed up")
        returned = threading.Event()
        waiter = threading.Thread(target=lambda: (wakeup.wait(seen, 60), returned.set()))
        waiter.start()
        wait_for(returned.is_set, "wait() slept with the mark down")
        assert any(directory.glob("*.wait")), "wait() did not put the mark up"
        waiter.join(5)
    finally:
        wakeup.stop()
        wakeup.join(5)


def test_a_new_listener_sweeps_away_what_dead_processes_left(tmp_path):
    wake = LocalWake(tmp_path / "tasks.db")
    wake.directory.mkdir(mode=0o700, exist_ok=True)
    dead = [wake.directory / "999999-1.sock", wake.directory / "999999-1.wait"]
    live = wake.directory / f"{os.getpid()}-1.wait"  # a process that is still here
    for path in [*dead, live]:
        path.touch()
    stop, heard = threading.Event(), threading.Event()
    listener = threading.Thread(target=wake.listen, args=(heard.set, stop))
    listener.start()
    try:
        assert heard.wait(10), "the listener never started"
        assert not any(path.exists() for path in dead), "a dead process's files stayed"
        assert live.exists(), "a live process's marker was removed"
    finally:
        stop.set()
        listener.join(10)
        live.unlink(missing_ok=True)
        wake.close()
        if wake.directory.exists():
            wake.directory.rmdir()


def wait_for(condition, message: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.01)


def test_a_socket_left_by_a_dead_process_is_removed(tmp_path):
    wake = LocalWake(tmp_path / "tasks.db")
    wake.directory.mkdir(mode=0o700, exist_ok=True)
    stale = wake.directory / "999999-1.sock"
    marker = wake.directory / "999999-1.wait"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(stale))
    dead.close()  # bound, then gone without unlinking: what kill -9 leaves
    marker.touch()  # it had a long poll held when it died
    try:
        wake.announce()
        assert not stale.exists()
        assert not marker.exists()
    finally:
        stale.unlink(missing_ok=True)
        marker.unlink(missing_ok=True)
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
