"""Queue controls and expiry with real processes, on SQLite and on PostgreSQL: two
dispatchers on one database, real workers, the project's CLIs.

- max_in_flight 2 with 8 workers: the attempts history (GET /task's started_at and
  finished_at) never shows more than 2 tasks of the queue in progress at once;
- a rate limit: no window of per_seconds holds more than `count` claims;
- a paused queue's task waits while a worker serves the queue, and runs once
  `queues.py resume` is called;
- a task submitted by `add_task.py --expires-in` to a queue no worker serves ends
  cancelled with `expired: not started within N s`.
"""

from __future__ import annotations

import json
import subprocess
from datetime import datetime
from pathlib import Path

import pytest
from harness import Cluster, free_port, wait_for

from common.client import Client
from common.config import PROJECT_ROOT

pytestmark = pytest.mark.integration

CLI_TIMEOUT = 120.0  # the first run may create .venv
# History times are each request's clock reading, taken just before its transaction: a
# claim whose clock was read just before another task's result committed (and whose
# transaction ran just after) starts "before" that task finished by that gap. Tasks run
# SLEEP_S, so a real third task in flight would overlap by far more than this.
CLOCK_GAP_S = 0.1
SLEEP_S = 0.5


@pytest.fixture
def clients():
    """Clients made by a test (Client(url) each), closed after it."""
    made: list[Client] = []

    def make(url: str) -> Client:
        made.append(Client(url))
        return made[-1]

    yield make
    for client in made:
        client.close()


def two_dispatchers(make_cluster, database: dict) -> tuple[Cluster, list[str]]:
    cluster = make_cluster(**database, LEASE_SECONDS="30", WORKER_DEAD_AFTER="20")
    port_b = free_port()
    cluster.start_dispatcher("dispatcher-a")
    cluster.start_dispatcher("dispatcher-b", port=port_b)
    return cluster, [cluster.url, f"http://127.0.0.1:{port_b}"]


def start_workers(cluster: Cluster, urls: list[str], n: int, queues: str) -> list:
    workers = []
    for i in range(n):
        both = ",".join(urls[i % 2 :] + urls[: i % 2])  # half start on each dispatcher
        workers.append(cluster.start_worker(f"fw-{i}", "--queues", queues, DISPATCHER_URL=both))
    for worker in workers:
        cluster.wait_worker_alive(worker)
    return workers


def seconds(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def attempts(tasks: list[dict]) -> list[tuple[float, float]]:
    """(started, finished) of every attempt of these finished tasks."""
    return [
        (seconds(a["started_at"]), seconds(a["finished_at"])) for t in tasks for a in t["history"]
    ]


def most_at_once(spans: list[tuple[float, float]], gap: float = 0.0) -> int:
    """The most spans in progress at one moment; a span starting within `gap` of
    another's end does not overlap it."""
    events = sorted([(start + gap, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = most = 0
    for _, step in events:  # at one moment an end (-1) sorts before a start (+1)
        running += step
        most = max(most, running)
    return most


def run_cli(cluster: Cluster, script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """A CLI run with the system python3, as a user would (it re-runs inside .venv)."""
    done = subprocess.run(
        ["python3", str(PROJECT_ROOT / script), *args],
        cwd=cwd,
        env=cluster.user_env(),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )
    assert done.returncode == 0, f"{script} {args}: {done.returncode}\n{done.stdout}{done.stderr}"
    return done


def test_max_in_flight_2_holds_across_8_workers_and_two_dispatchers(
    make_cluster, database, clients
):
    cluster, urls = two_dispatchers(make_cluster, database)
    assert clients(urls[1]).set_queue("limited", {"max_in_flight": 2})["max_in_flight"] == 2
    start_workers(cluster, urls, 8, "limited")
    sleep = {"type": "sleep", "payload": {"duration": SLEEP_S}, "queue": "limited"}
    ids = clients(urls[0]).submit_tasks([sleep] * 16)
    tasks = cluster.wait_all_finished(ids, timeout=120)
    assert [t["status"] for t in tasks] == ["completed"] * 16, tasks
    spans = attempts(tasks)
    assert len(spans) == 16  # one attempt each: no lease expired, nothing ran twice
    assert most_at_once(spans, CLOCK_GAP_S) == 2, sorted(spans)
    # eight workers were there for the taking: the limit, not a lack of workers, held it
    assert len({a["worker_id"] for t in tasks for a in t["history"]}) >= 2


def test_a_rate_limit_holds_in_every_window_across_two_dispatchers(make_cluster, database, clients):
    count, per = 3, 1.0
    cluster, urls = two_dispatchers(make_cluster, database)
    clients(urls[0]).set_queue("metered", {"rate_limit": {"count": count, "per_seconds": per}})
    start_workers(cluster, urls, 4, "metered")
    double = {"type": "compute", "payload": {"operation": "double", "value": 2}}
    ids = clients(urls[1]).submit_tasks([{**double, "queue": "metered"}] * 10)
    tasks = cluster.wait_all_finished(ids, timeout=120)
    assert {t["status"] for t in tasks} == {"completed"}
    claims = sorted(start for start, _ in attempts(tasks))
    for i, start in enumerate(claims):
        in_window = [t for t in claims[i:] if t < start + per]
        assert len(in_window) <= count, (start, in_window, claims)
    assert claims[-1] - claims[0] >= per  # ten claims at 3 a second need several windows


def test_a_paused_queue_waits_and_runs_when_resumed(make_cluster, database, tmp_path, clients):
    cluster, urls = two_dispatchers(make_cluster, database)
    run_cli(cluster, "queues.py", "pause", "held", cwd=tmp_path)
    start_workers(cluster, urls, 1, "held,default")
    double = {"type": "compute", "payload": {"operation": "double", "value": 21}}
    held = clients(urls[1]).submit_task({**double, "queue": "held"})
    # the worker serves both queues: a task of the other one is run...
    marker = clients(urls[0]).submit_task(double)
    cluster.wait_status(marker, "completed")
    # ...while the paused queue's stays pending (and the worker holds its next poll)
    assert cluster.task(held)["status"] == "pending"
    listed = json.loads(run_cli(cluster, "queues.py", "--json", cwd=tmp_path).stdout)
    [queue] = [q for q in listed["queues"] if q["name"] == "held"]
    assert queue["paused"] and queue["counts"]["pending"] == 1
    done = run_cli(cluster, "queues.py", "resume", "held", cwd=tmp_path)
    assert "held: active" in done.stdout
    task = cluster.wait_status(held, "completed")
    assert task["result"]["result"] == 42


def test_a_task_not_started_in_time_is_cancelled_as_expired(
    make_cluster, database, tmp_path, clients
):
    cluster, urls = two_dispatchers(make_cluster, database)
    body = json.dumps({"type": "compute", "payload": {"operation": "double", "value": 1}})
    args = ("--payload", body, "--queue", "nobody", "--expires-in", "1.5")
    [task_id] = run_cli(cluster, "add_task.py", *args, cwd=tmp_path).stdout.split()
    assert cluster.task(task_id)["expires_at"] is not None
    task = cluster.wait_status(task_id, "cancelled", timeout=30)  # the reaper, no claim
    assert task["error"] == "expired: not started within 1.5 s"
    assert (task["attempts"], task["history"], task["started_at"]) == (0, [], None)
    stats = clients(urls[1]).stats()
    assert stats["queues"]["nobody"]["cancelled"] == 1


def test_queues_cli_sets_and_lists_limits(make_cluster, tmp_path):
    cluster = make_cluster()
    cluster.start_dispatcher()
    out = run_cli(
        cluster,
        "queues.py",
        "set",
        "emails",
        "--max-in-flight",
        "2",
        "--rate",
        "10/60",
        cwd=tmp_path,
    ).stdout
    assert out.strip() == "emails: active, max in flight 2, rate limit 10 per 60 s"
    table = run_cli(cluster, "queues.py", cwd=tmp_path).stdout
    assert "emails" in table and "10 per 60 s" in table, table
    out = run_cli(cluster, "queues.py", "set", "emails", "--rate", "none", cwd=tmp_path).stdout
    assert out.strip() == "emails: active, max in flight 2, rate limit —"
    wait_for(
        lambda: cluster.client.call("GET", "/queues")["queues"][0]["rate_limit"] is None,
        10,
        lambda: "rate limit still set",
    )
