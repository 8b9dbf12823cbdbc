"""The system on PostgreSQL with real processes: the seed walk-through, two dispatchers on
one database (with and without a kill -9), a long poll woken across dispatchers, and a
database outage the dispatcher rides out without a restart.

The machine's server (TEST_DATABASE_URL) gives each test a fresh schema; the outage test
starts a server of its own (pg_server.py), since it stops it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest
from harness import cache_entries, fetch_tasks, free_port, wait_for
from pg_server import PgServer

from common.client import Client, DispatcherUnreachable
from common.config import PROJECT_ROOT
from tests.pg import fresh_schema_url

TASKS = 2_000
WORKERS = 6


@pytest.fixture
def pg_url():  # tests ask for it before make_cluster: the schema outlives the processes
    with fresh_schema_url() as url:
        yield url


def double(i: int) -> dict:
    return {"type": "compute", "payload": {"operation": "double", "value": i}}


def two_dispatchers(url: str, make_cluster):
    """A cluster on `url` with dispatchers A and B on two ports; returns it and the URLs."""
    cluster = make_cluster(DATABASE_URL=url)
    port_b = free_port()
    cluster.start_dispatcher("dispatcher-a")
    cluster.start_dispatcher("dispatcher-b", port=port_b)
    return cluster, cluster.url, f"http://127.0.0.1:{port_b}"


def start_workers(cluster, url_a: str, url_b: str) -> list:
    """WORKERS workers, half starting on A and half on B, each able to move to the other."""
    workers = []
    for i in range(WORKERS):
        urls = f"{url_a},{url_b}" if i % 2 == 0 else f"{url_b},{url_a}"
        workers.append(cluster.start_worker(f"pg-worker-{i}", DISPATCHER_URL=urls))
    return workers


def submit_half_each(url_a: str, url_b: str) -> list[str]:
    ids: list[str] = []
    for start in range(0, TASKS, 500):
        url = url_a if (start // 500) % 2 == 0 else url_b
        with Client(url) as client:
            ids += client.submit_tasks([double(i) for i in range(start, start + 500)])
    return ids


def wait_completed(cluster, url: str, count: int, timeout: float = 180) -> None:
    seen: dict = {}

    def done():
        nonlocal seen
        try:
            with Client(url) as client:
                seen = client.stats()["tasks"]
        except DispatcherUnreachable as exc:
            seen = {"unreachable": str(exc)}
            return False
        return seen.get("completed") == count

    wait_for(done, timeout, lambda: f"tasks: {seen}\n{cluster.logs()[-4000:]}", every=0.2)


def test_the_seed_walk_through_on_postgresql(pg_url, make_cluster):
    cluster = make_cluster(DATABASE_URL=pg_url)
    cluster.start_dispatcher()
    cluster.start_worker("worker-1")
    cluster.start_worker("worker-2")

    added = subprocess.run(
        ["python3", "add_task.py", "5", "100000"],
        cwd=PROJECT_ROOT,
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert added.returncode == 0, added.stderr
    ids = added.stdout.split()
    assert len(ids) == 5
    for task in cluster.wait_all_finished(ids):
        assert task["status"] == "completed", task
        assert task["result"]["count"] == 9592 and task["result"]["largest"] == 99991
    stats = cluster.client.stats()
    assert stats["tasks"]["completed"] == 5
    assert stats["workers"] == {"alive": 2, "dead": 0, "stopped": 0}
    monitor = subprocess.run(
        ["python3", "monitor.py", "--once"],
        cwd=PROJECT_ROOT,
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert monitor.returncode == 0, monitor.stderr
    assert "worker-1" in monitor.stdout and "worker-2" in monitor.stdout


def test_two_dispatchers_on_one_database_run_every_task_once(pg_url, make_cluster):
    cluster, url_a, url_b = two_dispatchers(pg_url, make_cluster)
    start_workers(cluster, url_a, url_b)
    ids = submit_half_each(url_a, url_b)
    assert len(set(ids)) == TASKS

    wait_completed(cluster, url_a, TASKS)
    tasks = fetch_tasks(url_b, ids)
    twice = [t for t in tasks.values() if t["attempts"] != 1 or len(t["history"]) != 1]
    assert not twice, f"{len(twice)} tasks ran more than once, e.g. {twice[:2]}"
    wrong = [t for t in tasks.values() if t["result"]["result"] != 2 * t["payload"]["value"]]
    assert not wrong, wrong[:3]
    by_worker = {t["worker_id"] for t in tasks.values()}
    assert len(by_worker) > 1, f"one worker ran everything: {by_worker}"
    assert "database is locked" not in cluster.logs()


def test_a_dispatcher_killed_halfway_loses_nothing(pg_url, make_cluster):
    cluster, url_a, url_b = two_dispatchers(pg_url, make_cluster)
    start_workers(cluster, url_a, url_b)
    ids = submit_half_each(url_a, url_b)
    seen: dict = {}

    def halfway():
        nonlocal seen
        with Client(url_b) as client:
            seen = client.stats()["tasks"]
        return seen["completed"] >= TASKS // 4

    wait_for(halfway, 120, lambda: f"tasks: {seen}\n{cluster.logs()[-4000:]}", every=0.05)
    [dispatcher_a] = [p for p in cluster.procs if p.name == "dispatcher-a"]
    dispatcher_a.kill9()

    wait_completed(cluster, url_b, TASKS)
    tasks = fetch_tasks(url_b, ids)
    assert len(tasks) == TASKS
    wrong = [
        t
        for t in tasks.values()
        if t["status"] != "completed" or t["result"]["result"] != 2 * t["payload"]["value"]
    ]
    assert not wrong, wrong[:3]


def test_a_long_poll_on_one_dispatcher_wakes_when_another_takes_a_task(pg_url, make_cluster):
    cluster, url_a, url_b = two_dispatchers(pg_url, make_cluster)
    got: dict = {}

    def hold_a_poll():
        with Client(url_a) as client:
            got["tasks"] = client.get_task("prober", "", ("wake",), wait=20, max_tasks=1)
            got["at"] = time.monotonic()

    poller = threading.Thread(target=hold_a_poll)
    poller.start()
    # its first claim registers the worker; from then on the poll is held
    wait_for(
        lambda: any(w["worker_id"] == "prober" for w in cluster.client.workers()),
        30,
        lambda: f"the poll never reached dispatcher A:\n{cluster.logs()}",
    )
    with Client(url_b) as client:
        task_id = client.submit_task({**double(7), "queue": "wake"})
        submitted = time.monotonic()
    poller.join(30)
    assert not poller.is_alive(), "the held poll did not return"
    assert [t["task_id"] for t in got["tasks"]] == [task_id], got
    assert got["at"] - submitted < 1.0, (
        f"woken {got['at'] - submitted:.2f} s after the submission to the other dispatcher"
    )


def test_the_dispatcher_rides_out_a_database_outage(make_cluster):
    server = PgServer()
    try:
        server.start()
        cluster = make_cluster(DATABASE_URL=server.url, LEASE_SECONDS="60", WORKER_DEAD_AFTER="30")
        dispatcher = cluster.start_dispatcher()
        cluster.start_worker("outage-1")
        cluster.start_worker("outage-2")
        before = [cluster.submit("sleep", {"duration": 0.5}) for _ in range(4)]
        wait_for(
            lambda: cluster.client.stats()["tasks"]["in_progress"] > 0,
            60,
            lambda: f"nothing started:\n{cluster.logs()}",
        )

        server.stop("immediate")
        health: list = []

        def unhealthy():
            try:
                health.append(cluster.client.call("GET", "/health"))
                return False
            except DispatcherUnreachable as exc:  # 5xx answers land here
                health.append(str(exc))
                return "503" in str(exc)

        wait_for(unhealthy, 30, lambda: f"/health during the outage: {health[-3:]}")
        # one server process dies during the outage: the one gunicorn starts in its place
        # waits for the database instead of failing its boot (which stops every process)
        os.kill(server_processes(dispatcher)[0], signal.SIGKILL)
        wait_for(
            lambda: "waits for the database" in dispatcher.log(),
            30,
            lambda: f"no server process waited:\n{dispatcher.log()}",
        )
        refusals: list[str] = []

        def submission_refused() -> bool:
            # a new connection each time: the kept-alive one may have been the killed
            # process's (a reset), and a new one may wait behind the restarted process
            # (a time-out); what must come is a 503, never a 2xx
            with Client(cluster.url, read_timeout=10) as client:
                try:
                    client.submit_task({"type": "sleep", "payload": {"duration": 0.1}})
                except DispatcherUnreachable as exc:
                    refusals.append(str(exc))
                    return "503" in str(exc)
            raise AssertionError("a submission was stored while the database was away")

        wait_for(submission_refused, 60, lambda: f"no 503 for a submission: {refusals[-3:]}")
        caches = cluster.tmp / "cache"
        wait_for(
            lambda: cache_entries(caches),
            60,
            lambda: f"no result was cached during the outage:\n{cluster.logs()[-3000:]}",
        )

        server.start()
        wait_for(
            lambda: _healthy(cluster.client),
            60,
            lambda: f"the dispatcher did not recover:\n{dispatcher.log()}",
        )
        after = [cluster.submit("sleep", {"duration": 0.1}) for _ in range(2)]
        for task in cluster.wait_all_finished(before + after, timeout=120):
            assert task["status"] == "completed", task
        assert dispatcher.alive(), "the dispatcher was restarted or died"
    finally:
        server.close()


def _healthy(client: Client) -> bool:
    try:
        return client.call("GET", "/health")["status"] == "ok"
    except DispatcherUnreachable:
        return False


def server_processes(dispatcher) -> list[int]:
    """The pids of a dispatcher's gunicorn server processes: the children of the process
    running `python -m dispatcher` (its master) that run it too."""

    def children(pid: int) -> list[int]:
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                return [int(p) for p in f.read().split()]
        except OSError:
            return []

    def runs_dispatcher(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return b"-m\x00dispatcher" in f.read()  # python -m dispatcher, not the script
        except OSError:
            return False

    found, todo = [], [dispatcher.popen.pid]
    while todo:
        pid = todo.pop()
        kids = children(pid)
        if runs_dispatcher(pid):
            found += [k for k in kids if runs_dispatcher(k)]
        todo += kids
    assert found, "no server process found"
    return sorted(set(found))
