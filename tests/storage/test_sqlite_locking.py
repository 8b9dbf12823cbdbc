"""SQLite's write lock between processes: a writer waits for another process's
transaction in short steps rather than SQLite's millisecond sleeps, gives up with a 503
after BUSY_TIMEOUT_S, and an idle long poll takes no write lock at all.

"Another process" is a second connection to the same file holding BEGIN IMMEDIATE,
which is what another dispatcher process holds while it writes."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import pytest

from common.config import Config
from dispatcher.errors import DatabaseUnavailable, WorkerTakenOver
from dispatcher.storage import NewTask, open_storage
from dispatcher.storage import sqlite as sqlite_storage

T0 = 1_700_000_000.0
LEASE = 30.0


@pytest.fixture
def storage(tmp_path):
    store = open_storage(Config(database_url=f"sqlite:///{tmp_path}/tasks.db"))
    yield store
    store.close()


@pytest.fixture
def other_process(storage):
    """A second connection to the file: `hold()` takes the write lock, `let_go()` ends it."""
    db = sqlite3.connect(storage.path, isolation_level=None)

    class Holder:
        def hold(self):
            db.execute("BEGIN IMMEDIATE")

        def let_go(self):
            if db.in_transaction:
                db.execute("COMMIT")

    holder = Holder()
    yield holder
    holder.let_go()
    db.close()


def a_task() -> NewTask:
    return NewTask(type="sleep", payload={"duration": 1})


def test_a_submission_waits_for_another_process_and_is_then_stored(storage, other_process):
    other_process.hold()
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(storage.submit, [a_task()], T0)
        with pytest.raises(FutureTimeout):
            future.result(timeout=0.3)  # still waiting for the lock, not failed
        other_process.let_go()
        [(task_id, created)] = future.result(timeout=10)
    assert created
    assert storage.get(task_id)["status"] == "pending"


def test_a_writer_held_off_past_the_busy_timeout_gets_database_unavailable(
    storage, other_process, monkeypatch
):
    monkeypatch.setattr(sqlite_storage, "BUSY_TIMEOUT_S", 0.2)
    other_process.hold()
    with pytest.raises(DatabaseUnavailable):
        storage.submit([a_task()], T0)
    other_process.let_go()
    assert storage.stats(now=T0, dead_after=60)["tasks"]["pending"] == 0  # nothing half-stored
    storage.submit([a_task()], T0)  # and the connection still works
    assert storage.stats(now=T0, dead_after=60)["tasks"]["pending"] == 1


def test_an_idle_poll_of_a_live_worker_takes_no_write_lock(storage, other_process, monkeypatch):
    storage.claim("w1", "i1", ("default",), 1, now=T0, lease_s=LEASE)  # registers w1
    monkeypatch.setattr(sqlite_storage, "BUSY_TIMEOUT_S", 0.2)
    other_process.hold()
    # a write would wait for the lock and fail; the idle poll answers from reads alone
    assert storage.claim("w1", "i1", ("default",), 1, now=T0 + 0.5, lease_s=LEASE) == []
    # a poll that must write (a new worker) does wait for the lock
    with pytest.raises(DatabaseUnavailable):
        storage.claim("w2", "i2", ("default",), 1, now=T0 + 0.5, lease_s=LEASE)


def test_polls_keep_a_worker_seen_within_a_second(storage):
    storage.claim("w1", "i1", ("default",), 1, now=T0, lease_s=LEASE)
    for step in range(1, 11):  # idle polls every 0.3 s for 3 s
        now = T0 + 0.3 * step
        storage.claim("w1", "i1", ("default",), 1, now=now, lease_s=LEASE)
        [worker] = storage.workers(now=now, dead_after=60)
        assert now - worker["last_heartbeat"] < sqlite_storage.TOUCH_EVERY_S, worker


def test_an_idle_poll_still_revives_a_worker_declared_dead(storage):
    storage.claim("w1", "i1", ("default",), 1, now=T0, lease_s=LEASE)
    report = storage.reap(now=T0 + 100, dead_after=60, retention_s=0)
    assert report.dead_workers == ["w1"]
    storage.claim("w1", "i1", ("default",), 1, now=T0 + 100.5, lease_s=LEASE)
    [worker] = storage.workers(now=T0 + 100.5, dead_after=60)
    assert worker["status"] == "alive"


def test_an_idle_poll_of_a_new_instance_still_takes_over(storage):
    [(task_id, _)] = storage.submit([a_task()], T0)
    storage.claim("w1", "old", ("default",), 1, now=T0, lease_s=LEASE)
    storage.claim("w1", "new", ("default",), 1, now=T0 + 0.1, lease_s=LEASE)
    assert storage.get(task_id)["history"][0]["outcome"] == "worker restarted"
    with pytest.raises(WorkerTakenOver):
        storage.claim("w1", "old", ("default",), 1, now=T0 + 0.2, lease_s=LEASE)
