"""add_task.py and monitor.py run by the system python3 against a real dispatcher and worker.

The processes are started by the project's own scripts, each in its own session, and
killed with SIGKILL at teardown. The CLIs run with a clean environment that names only
DISPATCHER_URL, from a directory outside the project.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
from pathlib import Path

import pytest
from harness import Cluster, wait_for

from common.config import PROJECT_ROOT

pytestmark = pytest.mark.integration

CLI_TIMEOUT = 120.0  # the first run may create .venv


def _run(cluster: Cluster, script: str, *args: str, stdin: str | None = None, cwd: Path):
    """Run a CLI with the system python3 (it re-runs itself inside .venv)."""
    return subprocess.run(
        ["python3", str(PROJECT_ROOT / script), *args],
        cwd=cwd,
        env=cluster.user_env(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )


def _explain(done: subprocess.CompletedProcess) -> str:
    return f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"


@pytest.fixture(scope="module")
def queue(tmp_path_factory):
    """A dispatcher and one worker, w1, shared by the tests of this module."""
    c = Cluster(tmp_path_factory.mktemp("cli"), LOG_LEVEL="WARNING")
    try:
        c.start_dispatcher()
        c.wait_worker_alive(c.start_worker("w1"))
        yield c
    finally:
        c.close()


@pytest.fixture
def workdir(tmp_path):
    return tmp_path  # the CLIs must work from any directory


# -- add_task.py --------------------------------------------------------------------------


def test_the_seed_form_prints_one_id_per_task(queue, workdir):
    done = _run(queue, "add_task.py", "5", "100000", cwd=workdir)
    assert done.returncode == 0, _explain(done)
    ids = done.stdout.split()
    assert len(ids) == 5 and len(set(ids)) == 5, _explain(done)
    for task_id in ids:
        task = queue.task(task_id)
        assert task["type"] == "primes"
        assert task["payload"]["limit"] == 100000


def test_wait_json_gives_the_result(queue, workdir):
    done = _run(
        queue,
        "add_task.py",
        "1",
        "100000",
        "trial_division",
        "--wait",
        "--json",
        cwd=workdir,
    )
    assert done.returncode == 0, _explain(done)
    out = json.loads(done.stdout)
    assert out["failed"] == 0
    [task] = out["tasks"]
    assert task["status"] == "completed"
    assert task["result"]["count"] == 9592
    assert task["result"]["algorithm"] == "trial_division"


def test_wait_exits_1_when_a_task_fails_and_shows_its_error(queue, workdir):
    payload = '{"type":"fail","payload":{"error_message":"boom"},"max_retries":0}'
    done = _run(queue, "add_task.py", "--payload", payload, "--wait", cwd=workdir)
    assert done.returncode == 1, _explain(done)
    assert "boom" in done.stdout and "failed" in done.stdout, _explain(done)


def test_payload_file_from_stdin_with_json_lines(queue, workdir):
    lines = (
        '{"type": "compute", "operation": "double", "value": 21}\n'
        "\n"
        '{"type": "sleep", "payload": {"duration": 0.1}}\n'
    )
    args = ("--payload-file", "-", "--wait", "--json", "--priority", "5")
    done = _run(queue, "add_task.py", *args, cwd=workdir, stdin=lines)
    assert done.returncode == 0, _explain(done)
    tasks = json.loads(done.stdout)["tasks"]
    assert [t["status"] for t in tasks] == ["completed", "completed"]
    assert tasks[0]["result"]["result"] == 42
    assert [t["priority"] for t in tasks] == [5, 5]


def test_depends_on_waits_for_the_named_task(queue, workdir):
    first = _run(
        queue, "add_task.py", "--payload", '{"type": "fail"}', "--max-retries", "0", cwd=workdir
    )
    assert first.returncode == 0, _explain(first)
    [failed] = first.stdout.split()
    args = ("1", "1000", "--depends-on", f"{failed}", "--wait", "--json")
    done = _run(queue, "add_task.py", *args, cwd=workdir)
    assert done.returncode == 1, _explain(done)  # cancelled: its dependency failed
    [task] = json.loads(done.stdout)["tasks"]
    assert (task["status"], task["error"]) == ("cancelled", f"dependency {failed} failed")
    assert task["depends_on"] == [failed]
    unknown = _run(queue, "add_task.py", "1", "10", "--depends-on", "f" * 32, cwd=workdir)
    assert unknown.returncode == 1, _explain(unknown)
    assert f"'depends_on': task {'f' * 32} not found" in unknown.stderr, _explain(unknown)


def test_a_refused_submission_is_one_error_line(queue, workdir):
    done = _run(queue, "add_task.py", "--payload", '{"type": "nope"}', cwd=workdir)
    assert done.returncode == 1, _explain(done)
    assert done.stderr.startswith("error: ") and "unknown task type 'nope'" in done.stderr
    assert done.stdout == ""


# -- monitor.py ---------------------------------------------------------------------------


def test_monitor_once_shows_counts_and_the_worker(queue, workdir):
    task = '{"type": "compute", "operation": "double", "value": 1}'
    finished = _run(queue, "add_task.py", "--payload", task, "--wait", cwd=workdir)
    assert finished.returncode == 0, _explain(finished)
    done = _run(queue, "monitor.py", "--once", cwd=workdir)
    assert done.returncode == 0, _explain(done)
    for word in ("completed", "pending", "throughput", "w1", "alive"):
        assert word in done.stdout, _explain(done)


def test_monitor_export_json(queue, workdir):
    done = _run(queue, "monitor.py", "--export", "json", cwd=workdir)
    assert done.returncode == 0, _explain(done)
    out = json.loads(done.stdout)
    assert set(out["stats"]["tasks"]) >= {"pending", "in_progress", "completed", "failed"}
    assert "w1" in [w["worker_id"] for w in out["workers"]]


def test_monitor_export_csv(queue, workdir):
    done = _run(queue, "monitor.py", "--export", "csv", cwd=workdir)
    assert done.returncode == 0, _explain(done)
    assert done.stdout.splitlines()[0] == "section,name,status,count"
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert {r["section"] for r in rows} >= {"tasks", "queue", "worker"}
    assert any(r["section"] == "worker" and r["name"] == "w1" for r in rows)


# -- no dispatcher ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [("monitor.py", "--once"), ("monitor.py", "--export", "csv"), ("add_task.py", "1", "10")],
)
def test_no_dispatcher_is_exit_1_with_one_line(command, cluster, workdir):
    url = cluster.url  # a free port; nothing was started, so nothing listens there
    done = _run(cluster, *command, cwd=workdir)
    assert done.returncode == 1, _explain(done)
    assert done.stderr.startswith(f"error: cannot reach the dispatcher at {url} ("), _explain(done)
    assert done.stderr.count("\n") == 1
    assert done.stdout == ""


def test_a_queue_no_alive_worker_serves_gets_a_warning(queue, workdir):
    wait_for(
        lambda: [w["queues"] for w in queue.client.workers()] == [["default"]],
        30,
        lambda: f"w1's queues never known: {queue.client.workers()}",
    )
    sleep = '{"type": "sleep", "payload": {"duration": 0}}'
    served = _run(queue, "add_task.py", "--payload", sleep, cwd=workdir)
    assert served.returncode == 0 and "warning" not in served.stderr, _explain(served)
    payload = '{"type": "sleep", "payload": {"duration": 0}, "queue": "nobody"}'
    lonely = _run(queue, "add_task.py", "--payload", payload, cwd=workdir)
    assert lonely.returncode == 0, _explain(lonely)
    assert "no alive worker takes tasks from queue 'nobody'" in lonely.stderr, _explain(lonely)
    [task_id] = lonely.stdout.split()
    assert queue.task(task_id)["status"] == "pending"  # stored all the same


# -- add_task.py --list-types -------------------------------------------------------------


def test_list_types_prints_every_registered_type(queue, workdir):
    done = _run(queue, "add_task.py", "--list-types", cwd=workdir)
    assert done.returncode == 0, _explain(done)
    for name in ("primes", "compute", "sleep", "http_request", "fail"):
        assert name in done.stdout, _explain(done)
    assert "limit: integer" in done.stdout, _explain(done)  # primes' required field
    as_json = _run(queue, "add_task.py", "--list-types", "--json", cwd=workdir)
    assert as_json.returncode == 0, _explain(as_json)
    types = {t["name"]: t for t in json.loads(as_json.stdout)["task_types"]}
    assert isinstance(types["primes"]["defaults"], dict)
    assert "limit" in types["primes"]["schema"]["required"]
