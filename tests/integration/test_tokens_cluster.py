"""Tokens per role with real processes: a worker with a `worker` token runs tasks that
`add_task.py` submitted with a `submit` token, and `monitor.py` reads with a `read`
token; the tokens file changed under a running dispatcher of two processes (a new
token works, a removed one gets 401, within 2 s); a bad file at start is one line and
exit status 2, a bad file later keeps the tokens in force and logs its error."""

from __future__ import annotations

import subprocess
import sys

import pytest
from harness import wait_for

import taskqueue
from common.client import ApiError, Client
from common.config import PROJECT_ROOT

pytestmark = pytest.mark.integration

ADMIN, SUBMIT, WORKER, READ = (
    "adm-7f3e9c1d5b-x1",
    "sub-2a8d4f6e0c-x2",
    "wrk-9b1c3e5a7d-x3",
    "rd-4e6a8c0b2f-x4",
)
RECHECK_DEADLINE_S = 3.0  # the file is looked at within 1 s of a request; the issue says 2 s


def tokens_text(*lines: str) -> str:
    return "# role name token\n" + "".join(f"{line}\n" for line in lines)


def whoami(url: str, token: str) -> dict | int:
    """GET /whoami on a new connection (so either server process may answer): the
    answer, or the refusal's status."""
    client = Client(url, token)
    try:
        return client.call("GET", "/whoami")
    except ApiError as exc:
        return exc.status
    finally:
        client.close()


def run_cli(cluster, token: str, script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, script, *args],
        cwd=PROJECT_ROOT,
        env={**cluster.user_env(), "API_TOKEN": token, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_each_program_works_with_its_least_role(make_cluster, tmp_path):
    path = tmp_path / "tokens"
    path.write_text(
        tokens_text(
            f"admin ops {ADMIN}",
            f"submit webapp {SUBMIT}",
            f"worker fleet {WORKER}",
            f"read grafana {READ}",
        )
    )
    cluster = make_cluster(API_TOKENS_FILE=str(path))
    cluster.start_dispatcher()
    worker = cluster.start_worker("w-least", API_TOKEN=WORKER)

    added = run_cli(cluster, SUBMIT, "add_task.py", "3", "1000", "--wait")
    assert added.returncode == 0, added.stdout + added.stderr
    assert "3 completed" in added.stdout, added.stdout
    monitor = run_cli(cluster, READ, "monitor.py", "--once")
    assert monitor.returncode == 0, monitor.stdout + monitor.stderr
    assert "w-least" in monitor.stdout and "alive" in monitor.stdout, monitor.stdout

    # what the least roles may not do, they are told so
    refused = run_cli(cluster, SUBMIT, "queues.py", "pause", "default")
    assert refused.returncode != 0
    assert "role submit may not PUT /queues/<name>" in refused.stdout + refused.stderr
    log = worker.log()
    # never refused (403: "role worker may not ...", 401: "missing or wrong API token")
    assert "may not" not in log and "missing or wrong API token" not in log, log
    reader = taskqueue.Client(cluster.url, READ)  # the client library with a read token
    [task] = reader.tasks(status="completed", limit=1)
    handle = reader.handle(task["task_id"])
    assert handle.status() == "completed" and reader.stats()["tasks"]["completed"] == 3
    with pytest.raises(taskqueue.Forbidden, match="role read may not POST /task/<id>/cancel"):
        handle.cancel()
    reader.close()
    admin = Client(cluster.url, ADMIN)
    assert admin.call("GET", "/whoami") == {"name": "ops", "role": "admin"}
    [listed] = [w for w in admin.call("GET", "/workers")["workers"] if w["worker_id"] == "w-least"]
    assert listed["attempts_completed"] == 3
    admin.close()


def test_the_tokens_file_changes_under_a_running_dispatcher(make_cluster, tmp_path):
    path = tmp_path / "tokens"
    path.write_text(tokens_text(f"admin ops {ADMIN}", f"read old-reader {READ}"))
    cluster = make_cluster(API_TOKENS_FILE=str(path), DISPATCHER_PROCESSES="2")
    dispatcher = cluster.start_dispatcher()
    assert whoami(cluster.url, READ) == {"name": "old-reader", "role": "read"}
    new = "rd-rotated-5c7e9a1b3d"

    path.write_text(tokens_text(f"admin ops {ADMIN}", f"read new-reader {new}"))
    seen: list = []

    def rotated():
        # several calls on new connections: each server process must have the change
        # (by a reload, or by reading the file at its boot)
        seen[:] = [(whoami(cluster.url, READ), whoami(cluster.url, new)) for _ in range(6)]
        return all(
            old == 401 and fresh == {"name": "new-reader", "role": "read"} for old, fresh in seen
        )

    wait_for(rotated, RECHECK_DEADLINE_S, lambda: f"after the change: {seen}\n{dispatcher.log()}")


def test_a_reload_is_logged_and_audited_once(make_cluster, tmp_path):
    """One server process, so that the process that reads the old file is the one that
    reloads it (with two, one may boot after the change and read the new file first)."""
    path = tmp_path / "tokens"
    path.write_text(tokens_text(f"admin ops {ADMIN}"))
    cluster = make_cluster(API_TOKENS_FILE=str(path), DISPATCHER_PROCESSES="1")
    dispatcher = cluster.start_dispatcher()
    assert whoami(cluster.url, ADMIN) == {"name": "ops", "role": "admin"}
    path.write_text(tokens_text(f"admin ops {ADMIN}", f"read grafana {READ}"))
    wait_for(
        lambda: whoami(cluster.url, READ) == {"name": "grafana", "role": "read"},
        RECHECK_DEADLINE_S,
        lambda: dispatcher.log(),
    )
    assert "reloaded: 2 tokens (1 admin, 1 read)" in dispatcher.log()
    admin = Client(cluster.url, ADMIN)
    records = admin.call("GET", "/audit")["records"]
    admin.close()
    reloads = [r for r in records if r["action"] == "tokens.reload"]
    assert len(reloads) == 1, records
    assert (reloads[0]["name"], reloads[0]["role"]) == ("system", "admin")
    assert reloads[0]["detail"] == {
        "file": str(path),
        "tokens": 2,
        "roles": {"admin": 1, "read": 1},
    }


def test_a_bad_file_later_keeps_the_tokens_in_force_and_logs_one_error(make_cluster, tmp_path):
    path = tmp_path / "tokens"
    path.write_text(tokens_text(f"admin ops {ADMIN}"))
    cluster = make_cluster(API_TOKENS_FILE=str(path), DISPATCHER_PROCESSES="1")
    dispatcher = cluster.start_dispatcher()
    path.write_text(tokens_text(f"admin ops {ADMIN}", "read half-written"))

    def logged():
        assert whoami(cluster.url, ADMIN) == {"name": "ops", "role": "admin"}
        return "API_TOKENS_FILE not reloaded" in dispatcher.log()

    wait_for(logged, RECHECK_DEADLINE_S, lambda: dispatcher.log())
    # (that later looks at the same bad file log nothing more: tests/unit/test_tokens.py)
    errors = [line for line in dispatcher.log().splitlines() if "not reloaded" in line]
    assert len(errors) == 1, errors
    assert f"{path} line 3: expected ROLE NAME TOKEN (3 fields), got 2" in errors[0]


def test_a_bad_file_at_start_is_one_line_and_exit_2(make_cluster, tmp_path):
    path = tmp_path / "tokens"
    path.write_text(tokens_text(f"admin ops {ADMIN}", f"owner boss {READ}"))
    cluster = make_cluster(API_TOKENS_FILE=str(path))
    proc = cluster.launch_dispatcher()
    assert proc.wait(timeout=60) == 2, proc.log()
    lines = [line for line in proc.log().splitlines() if line.strip()]
    assert lines == [
        f"configuration error: API_TOKENS_FILE {path} line 3: "
        "role 'owner' is not one of admin, submit, worker, read"
    ], lines
