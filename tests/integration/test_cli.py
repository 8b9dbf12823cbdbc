"""add_task.py and monitor.py run by the system python3 against a real dispatcher and worker.

The processes are started by the project's own scripts, each in its own session, and
killed with SIGKILL at teardown. The CLIs run with a clean environment that names only
DISPATCHER_URL, from a directory outside the project.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import fields
from pathlib import Path

import pytest

from common.client import ApiError, Client, DispatcherUnreachable
from common.config import PROJECT_ROOT, Config

pytestmark = pytest.mark.integration

CONFIG_KEYS = {f.name.upper() for f in fields(Config)}
START_TIMEOUT = 60.0  # the first start may create .venv
CLI_TIMEOUT = 120.0


# -- processes (self-contained until the shared harness covers the CLIs) ------------------


class _Proc:
    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path):
        self.name = name
        self.log_path = log_path
        self.log_file = open(log_path, "wb")  # closed in kill()
        self.popen = subprocess.Popen(
            args,
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed as a whole
        )

    def log(self, last: int = 40) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-last:])

    def kill(self) -> None:
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(timeout=10)
        self.log_file.close()


def _clean_env(**settings: str) -> dict[str, str]:
    """The environment without any of our settings (nor the bootstrap's mark), plus these."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in CONFIG_KEYS and k != "TASKQUEUE_VENV_REEXEC" and k != "VIRTUAL_ENV"
    }
    env.update(settings)
    return env


def _free_port() -> int:
    """A port nothing listens on. TEST_PORT_RANGE=5201-5210 keeps to a range (shared hosts)."""
    wanted = os.environ.get("TEST_PORT_RANGE")
    candidates = [0]
    if wanted:
        low, high = (int(p) for p in wanted.split("-"))
        candidates = list(range(low, high + 1))
    for port in candidates:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    pytest.fail(f"no free port in TEST_PORT_RANGE={wanted}")


def _start_dispatcher(tmp: Path, port: int) -> tuple[_Proc, str]:
    """Start it on `port` and wait for /health; (the process, its URL)."""
    env = _clean_env(
        DISPATCHER_HOST="127.0.0.1",
        DISPATCHER_PORT=str(port),
        DATABASE_URL=f"sqlite:///{tmp / 'tasks.db'}",  # an absolute path: sqlite:////...
        LOG_LEVEL="WARNING",
    )
    proc = _Proc("dispatcher", ["./start_dispatcher.sh"], env, tmp / "dispatcher.log")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    client = Client(url)
    last = "no answer yet"
    try:
        while True:
            if proc.popen.poll() is not None:
                pytest.fail(f"the dispatcher exited with {proc.popen.returncode}:\n{proc.log()}")
            try:
                if client.call("GET", "/health", read_timeout=2) == {"status": "ok"}:
                    return proc, url
            except (DispatcherUnreachable, ApiError) as exc:
                last = str(exc)
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(
                    f"the dispatcher at {url} was not healthy after {START_TIMEOUT} s "
                    f"(last: {last}); its log:\n{proc.log()}"
                )
            time.sleep(0.1)  # polling interval, not synchronisation
    finally:
        client.close()


def _start_worker(tmp: Path, url: str, worker_id: str = "w1") -> _Proc:
    env = _clean_env(
        DISPATCHER_URL=url,
        WORKER_CACHE_DIR=str(tmp / "cache"),
        LOG_LEVEL="WARNING",
    )
    return _Proc(worker_id, ["./start_worker.sh", worker_id], env, tmp / f"{worker_id}.log")


def _wait_for_worker(url: str, worker: _Proc, worker_id: str) -> None:
    """Until the dispatcher lists the worker alive (its first heartbeat registers it)."""
    client = Client(url)
    deadline = time.monotonic() + START_TIMEOUT
    seen: list[dict] = []
    try:
        while True:
            if worker.popen.poll() is not None:
                code = worker.popen.returncode
                pytest.fail(f"worker {worker_id} exited with {code}:\n{worker.log()}")
            seen = client.workers()
            if any(w["worker_id"] == worker_id and w["status"] == "alive" for w in seen):
                return
            if time.monotonic() > deadline:
                pytest.fail(
                    f"worker {worker_id} not alive after {START_TIMEOUT} s (workers: {seen}); "
                    f"its log:\n{worker.log()}"
                )
            time.sleep(0.1)  # polling interval, not synchronisation
    finally:
        client.close()


def _run(script: str, *args: str, url: str, stdin: str | None = None, cwd: Path):
    """Run a CLI with the system python3 (it re-runs itself inside .venv)."""
    return subprocess.run(
        ["python3", str(PROJECT_ROOT / script), *args],
        cwd=cwd,
        env=_clean_env(DISPATCHER_URL=url),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )


def _explain(done: subprocess.CompletedProcess) -> str:
    return f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"


@pytest.fixture(scope="module")
def queue_url(tmp_path_factory):
    """A dispatcher and one worker, w1, shared by the tests of this module."""
    tmp = tmp_path_factory.mktemp("cli")
    dispatcher, url = _start_dispatcher(tmp, _free_port())
    worker = _start_worker(tmp, url)
    try:
        _wait_for_worker(url, worker, "w1")
        yield url
    finally:
        worker.kill()
        dispatcher.kill()


@pytest.fixture
def workdir(tmp_path):
    return tmp_path  # the CLIs must work from any directory


# -- add_task.py --------------------------------------------------------------------------


def test_the_seed_form_prints_one_id_per_task(queue_url, workdir):
    done = _run("add_task.py", "5", "100000", url=queue_url, cwd=workdir)
    assert done.returncode == 0, _explain(done)
    ids = done.stdout.split()
    assert len(ids) == 5 and len(set(ids)) == 5, _explain(done)
    client = Client(queue_url)
    try:
        for task_id in ids:
            task = client.task(task_id)
            assert task["type"] == "primes"
            assert task["payload"]["limit"] == 100000
    finally:
        client.close()


def test_wait_json_gives_the_result(queue_url, workdir):
    done = _run(
        "add_task.py",
        "1",
        "100000",
        "trial_division",
        "--wait",
        "--json",
        url=queue_url,
        cwd=workdir,
    )
    assert done.returncode == 0, _explain(done)
    out = json.loads(done.stdout)
    assert out["failed"] == 0
    [task] = out["tasks"]
    assert task["status"] == "completed"
    assert task["result"]["count"] == 9592
    assert task["result"]["algorithm"] == "trial_division"


def test_wait_exits_1_when_a_task_fails_and_shows_its_error(queue_url, workdir):
    payload = '{"type":"fail","payload":{"error_message":"boom"},"max_retries":0}'
    done = _run("add_task.py", "--payload", payload, "--wait", url=queue_url, cwd=workdir)
    assert done.returncode == 1, _explain(done)
    assert "boom" in done.stdout and "failed" in done.stdout, _explain(done)


def test_payload_file_from_stdin_with_json_lines(queue_url, workdir):
    lines = (
        '{"type": "compute", "operation": "double", "value": 21}\n'
        "\n"
        '{"type": "sleep", "payload": {"duration": 0.1}}\n'
    )
    args = ("--payload-file", "-", "--wait", "--json", "--priority", "5")
    done = _run("add_task.py", *args, url=queue_url, cwd=workdir, stdin=lines)
    assert done.returncode == 0, _explain(done)
    tasks = json.loads(done.stdout)["tasks"]
    assert [t["status"] for t in tasks] == ["completed", "completed"]
    assert tasks[0]["result"]["result"] == 42
    assert [t["priority"] for t in tasks] == [5, 5]


def test_a_refused_submission_is_one_error_line(queue_url, workdir):
    done = _run("add_task.py", "--payload", '{"type": "nope"}', url=queue_url, cwd=workdir)
    assert done.returncode == 1, _explain(done)
    assert done.stderr.startswith("error: ") and "unknown task type 'nope'" in done.stderr
    assert done.stdout == ""


# -- monitor.py ---------------------------------------------------------------------------


def test_monitor_once_shows_counts_and_the_worker(queue_url, workdir):
    task = '{"type": "compute", "operation": "double", "value": 1}'
    finished = _run("add_task.py", "--payload", task, "--wait", url=queue_url, cwd=workdir)
    assert finished.returncode == 0, _explain(finished)
    done = _run("monitor.py", "--once", url=queue_url, cwd=workdir)
    assert done.returncode == 0, _explain(done)
    for word in ("completed", "pending", "throughput", "w1", "alive"):
        assert word in done.stdout, _explain(done)


def test_monitor_export_json(queue_url, workdir):
    done = _run("monitor.py", "--export", "json", url=queue_url, cwd=workdir)
    assert done.returncode == 0, _explain(done)
    out = json.loads(done.stdout)
    assert set(out["stats"]["tasks"]) >= {"pending", "in_progress", "completed", "failed"}
    assert "w1" in [w["worker_id"] for w in out["workers"]]


def test_monitor_export_csv(queue_url, workdir):
    done = _run("monitor.py", "--export", "csv", url=queue_url, cwd=workdir)
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
def test_no_dispatcher_is_exit_1_with_one_line(command, workdir):
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    done = _run(*command, url=url, cwd=workdir)
    assert done.returncode == 1, _explain(done)
    assert done.stderr.startswith(f"error: cannot reach the dispatcher at {url} ("), _explain(done)
    assert done.stderr.count("\n") == 1
    assert done.stdout == ""
