"""The README's walk-through with the project's own scripts and CLIs."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

from harness import Proc, wait_for

from common.client import Client, DispatcherUnreachable
from common.config import PROJECT_ROOT


def add_task(cluster, *args: str) -> list[str]:
    """`python3 add_task.py ...` with the system Python, as a user types it."""
    done = subprocess.run(
        ["python3", "add_task.py", *args],
        cwd=PROJECT_ROOT,
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_the_seed_walk_through_with_two_workers(cluster):
    cluster.start_dispatcher()
    cluster.start_worker("worker-1")
    cluster.start_worker("worker-2")

    sieve_ids = add_task(cluster, "5", "100000")
    [trial_id] = add_task(cluster, "1", "100000", "trial_division")

    assert len(sieve_ids) == 5
    tasks = cluster.wait_all_finished([*sieve_ids, trial_id])
    for task in tasks:
        assert task["status"] == "completed", task
        assert task["result"]["count"] == 9592
        assert task["result"]["largest"] == 99991
    assert {t["result"]["algorithm"] for t in tasks} == {"sieve", "trial_division"}
    stats = cluster.client.stats()
    assert stats["tasks"]["completed"] == 6
    assert stats["workers"] == {"alive": 2, "dead": 0, "stopped": 0}
    workers = {w["worker_id"]: w for w in cluster.client.workers()}
    assert set(workers) == {"worker-1", "worker-2"}
    assert sum(w["attempts_completed"] for w in workers.values()) == 6


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


def test_start_cluster_runs_the_quick_start_and_ctrl_c_stops_everything(cluster):
    script = Proc(
        "start_cluster",
        ["./start_cluster.sh", "--workers", "3"],
        cluster.env(),
        cluster.tmp / "cluster.log",
    )
    cluster.procs.append(script)
    children: list[int] = []
    try:

        def up():
            try:
                stats = cluster.client.stats()
            except DispatcherUnreachable:
                return False
            return stats["workers"]["alive"] == 3

        wait_for(up, 60, lambda: f"cluster not up:\n{script.log()}")
        children = _children(script.pid)
        assert len(children) == 4, children  # the dispatcher and three workers

        ids = cluster.client.submit_tasks(
            [{"type": "primes", "payload": {"limit": 10_000}} for _ in range(6)]
        )
        tasks = cluster.wait_all_finished(ids)
        assert {t["result"]["count"] for t in tasks} == {1229}
        assert len({t["worker_id"] for t in tasks}) >= 1

        script.signal(signal.SIGINT)  # Ctrl-C
        assert script.wait(timeout=60) == 0, script.log()
        wait_for(
            lambda: all(_gone(pid) for pid in children),
            30,
            lambda: f"still running: {[p for p in children if not _gone(p)]}\n{script.log()}",
        )
        log = script.log(200)
        assert "worker worker-1 stopped" in log
    finally:
        for pid in children:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_eight_clients_claiming_at_once_never_get_the_same_task(cluster):
    cluster.start_dispatcher()
    submitted = cluster.client.submit_tasks(
        [{"type": "compute", "payload": {"operation": "double", "value": i}} for i in range(300)]
    )
    got: list[list[str]] = [[] for _ in range(8)]

    def claimer(n: int) -> None:
        with Client(cluster.url) as client:
            while True:
                tasks = client.get_task(f"claimer-{n}", "", ("default",), wait=0, max_tasks=3)
                if not tasks:
                    return
                got[n].extend(t["task_id"] for t in tasks)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    claimed = [task_id for ids in got for task_id in ids]
    assert len(claimed) == len(set(claimed)), "a task was handed out twice"
    assert sorted(claimed) == sorted(submitted)
    assert cluster.client.stats()["tasks"]["in_progress"] == 300


def test_start_cluster_refuses_a_port_another_dispatcher_holds(cluster):
    """Another dispatcher on DISPATCHER_PORT: one line, exit non-zero, no worker started
    (before, it printed `cluster up` and pointed its workers at the other one)."""
    cluster.start_dispatcher()
    other_db = cluster.tmp / "other.db"
    done = subprocess.run(
        ["./start_cluster.sh", "--workers", "1"],
        cwd=PROJECT_ROOT,
        env={**cluster.env(), "DATABASE_URL": f"sqlite:///{other_db}"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0, done.stderr
    assert "already in use" in done.stderr, done.stderr
    assert "cluster up" not in done.stderr
    assert cluster.client.workers() == []  # nobody came to the other dispatcher
