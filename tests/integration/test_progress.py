"""A task's progress, end to end with real processes: a task reports 0.5 "halfway" through
its TaskContext in a worker's pool process, then runs until the test creates a file;
GET /task/<id> and GET /workers show the report while it runs (it travels pool process
-> worker -> heartbeat -> database), `monitor.py --once` lists it, and once the task
is finished its last progress stays. On SQLite and on PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime

import pytest
from harness import wait_for

from common.client import DispatcherUnreachable
from common.config import PROJECT_ROOT

pytestmark = pytest.mark.integration

MODULES = "tests.integration.echo_tasks"  # testing_progress


def test_progress_shows_while_the_task_runs_and_stays_after(database, make_cluster, tmp_path):
    cluster = make_cluster(TASK_MODULES=MODULES, **database)
    cluster.start_dispatcher()
    worker = cluster.start_worker("progress-worker")
    cluster.wait_worker_alive(worker)
    gate = tmp_path / "gate"
    payload = {"fraction": 0.5, "message": "halfway", "path": str(gate)}
    task_id = cluster.submit("testing_progress", payload, queue="default", timeout=120)
    seen: dict = {}

    def reported():
        nonlocal seen
        try:
            seen = cluster.task(task_id)
        except DispatcherUnreachable as exc:
            seen = {"unreachable": str(exc)}
            return None
        return seen.get("progress")

    progress = wait_for(
        reported, 60, lambda: f"no progress on task {task_id}: {seen}\n{cluster.logs()}"
    )
    assert seen["status"] == "in_progress", seen
    assert (progress["fraction"], progress["message"]) == (0.5, "halfway")
    stored_at = datetime.fromisoformat(progress["updated_at"])
    assert stored_at.utcoffset().total_seconds() == 0  # UTC, as every time the API shows
    assert datetime.fromisoformat(seen["started_at"]) <= stored_at
    [listed] = [w for w in cluster.client.workers() if w["worker_id"] == "progress-worker"]
    assert listed["progress"] == {task_id: progress}

    monitor = subprocess.run(
        [sys.executable, "monitor.py", "--once"],
        cwd=PROJECT_ROOT,
        env={**cluster.user_env(), "COLUMNS": "200"},  # one line per row
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert monitor.returncode == 0, monitor.stderr
    assert f"…{task_id[-8:]} 50% halfway" in monitor.stdout, monitor.stdout

    gate.touch()
    done = cluster.wait_status(task_id, "completed", timeout=60)
    assert done["result"] == {"task_id": task_id, "attempt": 1, "queue": "default"}
    assert done["progress"] == progress  # the last report stays with the finished task
