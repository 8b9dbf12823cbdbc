"""A full disk and a read-only database, for real: a small tmpfs the test mounts (as
root; not root: skipped with the reason, failed when CI is set), filled to the last
byte; PostgreSQL with a tablespace on such a tmpfs, and in read-only mode.

While writes cannot be stored: every write answers 503 saying why, reads go on,
/health says so, nothing half-way is stored, nothing acknowledged is lost; space
freed is used at once; a start on the full disk serves or says why in one line."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
from harness import Cluster, wait_for

from common.client import Client, DispatcherUnreachable
from tests.pg import connect, fresh_schema_url

BIG = "x" * 10_000  # a payload that needs new pages


def task(value: int, big: bool = False) -> dict:
    if big:  # a `fail` task carries up to 10,000 characters
        return {"type": "fail", "payload": {"error_message": f"{value} {BIG}"[:10_000]}}
    return {"type": "compute", "payload": {"operation": "double", "value": value}}


def _need_root() -> None:
    if os.geteuid() == 0 and shutil.which("mount"):
        return
    why = "mounting a small tmpfs needs root and mount(8)"
    if os.environ.get("CI"):
        pytest.fail(f"{why}; CI is set, so this test must run", pytrace=False)
    pytest.skip(why)


@pytest.fixture
def small_disk():
    """A 4 MB tmpfs under /tmp (reachable by the postgres user too), unmounted after."""
    _need_root()
    where = Path(tempfile.mkdtemp(prefix="tq-small-disk-"))
    where.chmod(0o755)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()


def fill(directory: Path) -> Path:
    """Write a file until the filesystem has no byte left."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


def post(client: Client, path: str, body: dict) -> tuple[int, dict]:
    """(status, body) of a POST, a 5xx included (Client raises for those)."""
    try:
        return 200, client.call("POST", path, body)
    except DispatcherUnreachable as exc:
        status = int(str(exc).split("HTTP ", 1)[1].split()[0]) if "HTTP " in str(exc) else 0
        return status, {"error": str(exc)}


def submit_until_refused(client: Client, acked: list[str], limit: int = 400) -> dict:
    """Submit big tasks until one is refused (space left in the file is used first)."""
    for _ in range(limit):
        status, body = post(client, "/submit-task", task(1, big=True))
        if status != 200:
            return {"status": status, **body}
        acked.append(body["task_id"])
    pytest.fail(f"{limit} submissions on a full disk were all stored")


def writes_refused_reads_served(cluster: Cluster, acked: list[str], why: str) -> None:
    c = cluster.client
    refused = submit_until_refused(c, acked)
    assert refused["status"] == 503 and why in refused["error"], refused
    for path, body in [
        ("/submit-tasks", {"tasks": [task(2, big=True)] * 50}),
        ("/get-task", {"worker_id": "w-full", "queues": ["default"], "max_tasks": 100}),
    ]:
        status, answer = post(c, path, body)
        assert status == 503 and why in answer["error"], (path, status, answer)
    health = c.call("GET", "/health")
    assert health["status"] == "degraded" and why in health["error"], health
    assert c.task(acked[0])["status"] == "pending"  # reads go on
    assert c.stats()["tasks"]["pending"] == len(acked)  # nothing of the refused batch


def health_ok(cluster: Cluster) -> None:
    """/health reports a refused write for 10 s after the last one (Refusals.HOLD_S)."""
    seen = {}

    def ok():
        nonlocal seen
        seen = cluster.client.call("GET", "/health")
        return seen == {"status": "ok"}

    wait_for(ok, 15, lambda: f"/health still says {seen}")


@pytest.mark.parametrize("restart", [False, True], ids=["running", "killed-and-restarted"])
def test_a_full_disk_refuses_writes_with_503_and_loses_nothing(small_disk, make_cluster, restart):
    cluster = make_cluster(DATABASE_URL=f"sqlite:///{small_disk / 'tasks.db'}")
    dispatcher = cluster.start_dispatcher()
    acked = [cluster.submit("compute", {"operation": "double", "value": i}) for i in range(20)]
    filler = fill(small_disk)
    writes_refused_reads_served(cluster, acked, "disk is full")
    if restart:
        dispatcher.kill9()
        again = cluster.launch_dispatcher("dispatcher-full")

        def served_or_exited():
            if not again.alive():
                return "exited"
            try:
                return cluster.client.call("GET", "/health")["status"]
            except DispatcherUnreachable:
                return None

        outcome = wait_for(served_or_exited, 60, lambda: again.log())
        if outcome == "exited":  # then with one line, no traceback
            assert again.popen.returncode != 0
            assert "Traceback" not in again.log() and "cannot start" in again.log(), again.log()
        else:
            assert cluster.client.task(acked[0])["status"] == "pending"
        filler.unlink()
        if outcome == "exited":
            again = cluster.start_dispatcher("dispatcher-freed")
    else:
        filler.unlink()
    # space freed: used at once, by the same dispatcher
    task_id = cluster.submit("compute", {"operation": "double", "value": 99})
    health_ok(cluster)
    found = {t: cluster.task(t)["status"] for t in [*acked, task_id]}
    assert set(found.values()) == {"pending"}, found
    assert "Traceback" not in cluster.logs()
    with sqlite3.connect(small_disk / "tasks.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_postgresql_with_a_full_tablespace_refuses_writes_with_503(small_disk, make_cluster):
    """The tables live in a tablespace on the small tmpfs (WAL stays on the server's
    own disk): PostgreSQL answers 'could not extend file' (SQLSTATE 53100)."""
    shutil.chown(small_disk, "postgres", "postgres")
    space = f"tq_small_{uuid.uuid4().hex[:8]}"
    admin = connect()
    admin.execute(f"CREATE TABLESPACE {space} LOCATION '{small_disk}'")
    try:
        with fresh_schema_url() as url:
            url = url.replace("options=", f"options=-cdefault_tablespace%3D{space}%20")
            cluster = make_cluster(DATABASE_URL=url)
            cluster.start_dispatcher()
            acked = [
                cluster.submit("compute", {"operation": "double", "value": i}) for i in range(20)
            ]
            filler = fill(small_disk)
            writes_refused_reads_served(cluster, acked, "disk is full")
            filler.unlink()
            task_id = cluster.submit("compute", {"operation": "double", "value": 99})
            health_ok(cluster)
            assert {cluster.task(t)["status"] for t in [*acked, task_id]} == {"pending"}
            cluster.close()
    finally:
        admin.execute(f"DROP TABLESPACE IF EXISTS {space}")
        admin.close()


def test_a_read_only_postgresql_refuses_writes_with_503(make_cluster):
    with fresh_schema_url() as url:
        first = make_cluster(DATABASE_URL=url)
        first.start_dispatcher()
        acked = [first.submit("compute", {"operation": "double", "value": i}) for i in range(5)]
        first.close()
        read_only = url.replace("options=", "options=-cdefault_transaction_read_only%3Don%20")
        cluster = make_cluster(DATABASE_URL=read_only)
        cluster.start_dispatcher()  # starts: the schema is current, so it writes nothing
        status, answer = post(
            cluster.client,
            "/submit-task",
            {"type": "compute", "payload": {"operation": "double", "value": 1}},
        )
        assert status == 503 and "read-only" in answer["error"], answer
        health = cluster.client.call("GET", "/health")
        assert health["status"] == "degraded" and "read-only" in health["error"], health
        assert [cluster.task(t)["status"] for t in acked] == ["pending"] * 5
        cluster.close()
