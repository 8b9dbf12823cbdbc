"""What only the PostgreSQL storage has: several connections and dispatchers racing,
a schema migrated under an advisory lock, LISTEN/NOTIFY wake-ups, and a database that
goes away and comes back. The shared contract is in test_contract.py.

No test here sleeps to synchronise or asserts a duration: it polls with a deadline and
says what it saw last.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from common.config import Config
from dispatcher.errors import DatabaseUnavailable, LeaseConflict, http_status
from dispatcher.storage import NewTask, Result, open_storage
from dispatcher.storage.postgres import SCHEMA_VERSION, PostgresStorage
from dispatcher.wakeup import Wakeup
from tests.pg import connect, fresh_schema_url

T0 = 1_700_000_000.0


@pytest.fixture
def url():
    with fresh_schema_url() as url:
        yield url


@pytest.fixture
def storage(url):
    store = open_storage(Config(database_url=url))
    yield store
    store.close()


def sleep_task() -> NewTask:
    return NewTask(type="sleep", payload={"duration": 1})


def wait_until(condition, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout} s waiting for {what}")
        time.sleep(0.01)  # polling a condition, not synchronising on time


def test_open_storage_picks_postgres_for_both_url_spellings(url):
    for spelling in (url, url.replace("postgresql://", "postgres://", 1)):
        store = open_storage(Config(database_url=spelling))
        try:
            assert isinstance(store, PostgresStorage)
            store.ping()
        finally:
            store.close()


def test_an_unreachable_server_is_database_unavailable():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DatabaseUnavailable) as raised:
        open_storage(Config(database_url=f"postgresql://postgres@127.0.0.1:{port}/test"))
    assert http_status(raised.value) == 503
    assert "database unavailable" in str(raised.value)


def test_concurrent_claims_on_many_connections_never_lease_a_task_twice(storage, url):
    submitted = {task_id for task_id, _ in storage.submit([sleep_task()] * 400, now=T0)}
    stores = [open_storage(Config(database_url=url, database_pool_size=3)) for _ in range(3)]
    start = threading.Barrier(9)

    def drain(store, worker: str) -> list[str]:
        start.wait()
        got = []
        while claimed := store.claim(worker, "", ("default",), 2, now=T0, lease_s=600):
            got += [c["task_id"] for c in claimed]
        return got

    try:
        with ThreadPoolExecutor(9) as pool:
            runs = [
                pool.submit(drain, stores[i % 3], f"w{i}")  # three threads per dispatcher
                for i in range(9)
            ]
            handed_out = [task_id for run in runs for task_id in run.result(timeout=300)]
    finally:
        for s in stores:
            s.close()
    assert len(handed_out) == len(set(handed_out)) == len(submitted)
    assert set(handed_out) == submitted
    for task_id in list(submitted)[:50]:
        task = storage.get(task_id)
        assert task["attempts"] == 1
        assert len(task["history"]) == 1, task["history"]


def test_two_dispatchers_finishing_the_same_tasks_at_once_neither_deadlock_nor_both_win(
    storage, url, caplog
):
    # Every task holds two leases: w1's expired one and w2's current one. Two
    # dispatchers finish all of them at the same moment, one batch per lease, in opposite
    # orders: w2's batch goes through the set-based path, w1's (stale) through the
    # per-result one. Both lock tasks in id order, so neither waits on the other in a
    # cycle (PostgreSQL would report a deadlock, and the transaction would run again),
    # and each task is completed exactly once.
    caplog.set_level(logging.INFO, logger="dispatcher")
    stores = [open_storage(Config(database_url=url, database_pool_size=1)) for _ in range(2)]
    try:
        for round_ in range(3):
            t = T0 + 100 * round_
            ids = [task_id for task_id, _ in storage.submit([sleep_task()] * 200, now=t)]
            old = {
                c["task_id"]: c["lease_token"]
                for c in storage.claim("w1", "", ("default",), 200, t, 30)
            }
            assert len(storage.reap(now=t + 31, dead_after=10**9, retention_s=0).expired) == 200
            new = {
                c["task_id"]: c["lease_token"]
                for c in storage.claim("w2", "", ("default",), 200, t + 32, 30)
            }
            assert set(old) == set(new) == set(ids)
            batches = [
                [
                    Result(i, old[i], "w1", "completed", result="w1")
                    for i in sorted(ids, reverse=True)
                ],
                [Result(i, new[i], "w2", "completed", result="w2") for i in sorted(ids)],
            ]
            start = threading.Barrier(2)

            def send(store, batch, now=t + 33, start=start):
                start.wait()
                return store.finish(batch, now=now)

            with ThreadPoolExecutor(2) as pool:
                runs = [pool.submit(send, s, b) for s, b in zip(stores, batches, strict=True)]
                outcomes = [run.result(timeout=120) for run in runs]
            won = Counter()
            for batch, answers in zip(batches, outcomes, strict=True):
                for item, answer in zip(batch, answers, strict=True):
                    assert answer == "completed" or isinstance(answer, LeaseConflict), answer
                    won[item.task_id] += answer == "completed"
            assert won == dict.fromkeys(ids, 1)
            for task_id in ids[:20]:
                task = storage.get(task_id)
                assert task["status"] == "completed"
                assert task["result"] == task["worker_id"]
    finally:
        for s in stores:
            s.close()
    counters = {w["worker_id"]: w["attempts_completed"] for w in storage.workers(T0, 10**9)}
    assert sum(counters.values()) == 600
    rolled_back = [r.getMessage() for r in caplog.records if "rolled back" in r.getMessage()]
    assert rolled_back == []


def test_the_schema_is_created_once_when_many_dispatchers_start_together(url):
    n = 6
    start = threading.Barrier(n)

    def opened() -> PostgresStorage:
        start.wait()
        return open_storage(Config(database_url=url, database_pool_size=1))

    with ThreadPoolExecutor(n) as pool:
        stores = [run.result(timeout=120) for run in [pool.submit(opened) for _ in range(n)]]
    try:
        assert sum(s.created_schema for s in stores) == 1
        [(task_id, _)] = stores[0].submit([sleep_task()], now=T0)
        assert all(s.get(task_id)["status"] == "pending" for s in stores)
    finally:
        for s in stores:
            s.close()
    with connect(url) as db:
        assert db.execute("SELECT schema_version FROM meta").fetchall() == [(SCHEMA_VERSION,)]


def test_a_schema_newer_than_the_code_is_refused(storage, url):
    with connect(url) as db:
        db.execute("UPDATE meta SET schema_version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(RuntimeError, match="newer than this code"):
        open_storage(Config(database_url=url))


def test_a_notification_wakes_a_waiter_on_another_dispatcher(url):
    a = open_storage(Config(database_url=url))
    b = open_storage(Config(database_url=url))
    # the polling fallback reads once at start, then not for an hour: only LISTEN wakes
    wakeup = Wakeup(a.change_counter, poll_s=3600, listen=a.listen)
    try:
        wakeup.start()

        def primed() -> bool:  # a waiter makes the poller read once; the listener says hello
            wakeup.wait(wakeup.generation(), 0.05)
            return wakeup.generation() >= 2

        wait_until(primed, "the poller's first read and the listener's hello")
        seen = wakeup.generation()
        b.submit([sleep_task()], now=T0)
        deadline = time.monotonic() + 10  # generous on a busy machine; it takes ms
        while wakeup.generation() == seen and time.monotonic() < deadline:
            wakeup.wait(seen, deadline - time.monotonic())
        assert wakeup.generation() != seen, "no wake-up from b's submission"
    finally:
        wakeup.stop()
        a.close()
        b.close()
        wakeup.join(5)


def test_a_notification_for_another_schema_is_ignored(url):
    with fresh_schema_url() as other_url:
        a = open_storage(Config(database_url=url))
        other = open_storage(Config(database_url=other_url))
        heard = []
        stop = threading.Event()
        listener = threading.Thread(target=a.listen, args=(lambda: heard.append(1), stop))
        try:
            listener.start()
            wait_until(lambda: heard, "the listener's hello")
            other.submit([sleep_task()], now=T0)  # notifies the other schema only
            a.submit([sleep_task()], now=T0)  # then ours: delivered after the other's
            wait_until(lambda: len(heard) >= 2, "our own schema's notification")
            assert len(heard) == 2
        finally:
            stop.set()
            listener.join(10)
            a.close()
            other.close()


def test_the_polling_fallback_sees_another_dispatchers_commit(url):
    a = open_storage(Config(database_url=url))
    b = open_storage(Config(database_url=url))
    wakeup = Wakeup(a.change_counter, poll_s=0.05)  # no listener: the counter alone
    try:
        before = a.change_counter()
        b.submit([sleep_task()], now=T0)
        assert a.change_counter() != before
        seen = wakeup.generation()
        deadline = time.monotonic() + 10
        while wakeup.generation() == seen and time.monotonic() < deadline:
            wakeup.wait(seen, deadline - time.monotonic())
        assert wakeup.generation() != seen
    finally:
        wakeup.stop()
        wakeup.join(5)
        a.close()
        b.close()


def test_cut_connections_cost_one_error_then_the_storage_recovers(url):
    name = f"tq_cut_{time.monotonic_ns()}"
    store = open_storage(Config(database_url=f"{url}&application_name={name}"))
    wakeup = Wakeup.for_storage(store)
    try:
        wakeup.start()
        [(task_id, _)] = store.submit([sleep_task()], now=T0)
        wait_until(lambda: _backends(name) >= 2, "a pooled and a listening connection")
        with connect() as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (name,),
            )
        errors = []

        def answers() -> bool:
            try:
                return store.get(task_id)["status"] == "pending"
            except DatabaseUnavailable as exc:  # the dead connection's one 503
                errors.append(str(exc))
                return False

        wait_until(answers, "the storage to answer again")
        assert len(errors) <= 3, errors
        # the listener is back too: a commit wakes the waiter
        wait_until(lambda: _backends(name) >= 2, "the listener to connect again")
        seen = wakeup.generation()
        store.submit([sleep_task()], now=T0)
        deadline = time.monotonic() + 10
        while wakeup.generation() == seen and time.monotonic() < deadline:
            wakeup.wait(seen, deadline - time.monotonic())
        assert wakeup.generation() != seen
    finally:
        wakeup.stop()
        store.close()
        wakeup.join(5)


def _backends(application_name: str) -> int:
    with connect() as admin:
        return admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            (application_name,),
        ).fetchone()[0]


def test_a_database_that_does_not_exist_is_named_in_the_error():
    """Not the pool's 'initialization incomplete after 6 sec': the server's own words."""
    with pytest.raises(DatabaseUnavailable) as raised:
        open_storage(Config(database_url="postgresql://postgres@127.0.0.1:5432/tq_no_such_db"))
    assert 'database "tq_no_such_db" does not exist' in str(raised.value)
    assert "pool" not in str(raised.value)


def test_a_claims_unflushed_commit_leaves_every_other_write_synchronous(url):
    """A claim commits with synchronous_commit off (docs/RELIABILITY.md); that is SET
    LOCAL, so the pooled connection it used (the only one here) is back to `on` for the
    submissions and results that follow: their 2xx still waits for the WAL flush."""
    store = open_storage(Config(database_url=url, database_pool_size=1))
    try:
        [(task_id, _)] = store.submit([sleep_task()], now=1000.0)
        [claimed] = store.claim("w1", "i1", ("default",), 1, now=1000.0, lease_s=30)
        assert claimed["task_id"] == task_id
        [row] = store._read("SHOW synchronous_commit")
        assert row["synchronous_commit"] == "on"
        outcome = store.finish(
            [Result(task_id, claimed["lease_token"], "w1", "completed", 1, None)], now=1001.0
        )
        assert outcome == ["completed"]
        assert store.get(task_id)["status"] == "completed"
    finally:
        store.close()
