"""MAX_PENDING_TASKS end to end: add_task.py, run as a user runs it, meets a full queue
(429); it waits, saying so on stderr, and succeeds once a worker drains the queue, or
gives up after --retry-for with a clear message and exit status 1."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from harness import Cluster, wait_for

from common.config import PROJECT_ROOT

pytestmark = pytest.mark.integration

CLI_TIMEOUT = 120.0  # the first run may create .venv
LIMIT = 2


@pytest.fixture
def full(make_cluster) -> Cluster:
    """A dispatcher whose queue holds LIMIT pending tasks, its limit, and no worker."""
    c = make_cluster(MAX_PENDING_TASKS=str(LIMIT))
    c.start_dispatcher()
    for _ in range(LIMIT):
        c.submit("sleep", {"duration": 0.1})
    return c


def add_task(cluster: Cluster, *args: str, stderr) -> subprocess.Popen:
    return subprocess.Popen(
        ["python3", str(PROJECT_ROOT / "add_task.py"), *args],
        cwd=cluster.tmp,
        env=cluster.user_env(),
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )


def test_add_task_gives_up_after_retry_for_with_a_clear_message(full, tmp_path):
    done = subprocess.run(
        ["python3", str(PROJECT_ROOT / "add_task.py"), "--retry-for", "1", "1", "100"],
        cwd=tmp_path,
        env=full.user_env(),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )
    explain = f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.returncode == 1, explain
    assert "waiting: the queue holds 2 pending tasks" in done.stderr, explain
    assert "MAX_PENDING_TASKS" in done.stderr and "--retry-for 1 s" in done.stderr, explain
    assert done.stdout == "", explain
    assert full.client.stats()["tasks"]["pending"] == LIMIT


def test_add_task_waits_for_room_and_succeeds_once_a_worker_drains(full, tmp_path):
    err_path = Path(tmp_path) / "add_task.err"
    with open(err_path, "w") as err:
        proc = add_task(full, "--retry-for", "90", "1", "100", stderr=err)
    try:
        wait_for(
            lambda: "waiting: " in err_path.read_text() or proc.poll() is not None,
            CLI_TIMEOUT,
            lambda: f"add_task.py never said it waits; stderr:\n{err_path.read_text()}",
        )
        assert proc.poll() is None, f"add_task.py ended early:\n{err_path.read_text()}"
        full.start_worker("w1")  # drains the queue: room for the waiting submission
        out, _ = proc.communicate(timeout=CLI_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = err_path.read_text()
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{out}\nstderr:\n{stderr}"
    [task_id] = out.split()
    assert full.wait_status(task_id, "completed", timeout=60)["type"] == "primes"
