"""Operations with real processes: retries and back-off, poison pills, priority and delay,
idempotency, cancel and retry, concurrency, graceful stop, named queues, pool hygiene and
a task type from TASK_MODULES.

Timings are short (make_cluster settings) and every wait is a poll with a deadline whose
message shows the state seen. Times are compared as the dispatcher recorded them, never
measured by the test. The timeout of a `sleep` task, `add_task.py --wait` exit statuses
and `monitor.py --once/--export` are covered in test_faults.py and test_cli.py.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import urllib.request
from collections import Counter
from contextlib import closing
from datetime import datetime
from pathlib import Path

import pytest
from harness import wait_for

from common.client import ApiError
from common.config import PROJECT_ROOT

MODULES = "examples.testing_tasks,examples.wordcount"
EXIT_CHILD_ERROR = "task process died (exit code 3)"  # examples/testing_tasks.EXIT_CODE
MS = 0.001  # the API's times are ISO 8601 with milliseconds


def when(iso: str) -> float:
    """Epoch seconds of a time as the API writes it."""
    return datetime.fromisoformat(iso).timestamp()


def read_only(db_path: Path) -> sqlite3.Connection:
    """A read-only connection to a cluster's database, for what the API does not show."""
    return sqlite3.connect(f"{db_path.as_uri()}?mode=ro", uri=True)


def post(cluster, path: str) -> dict:
    return cluster.client.call("POST", path)


def submit_with_status(cluster, body: dict) -> tuple[int, dict]:
    """POST /submit-task, keeping the HTTP status the client does not show."""
    request = urllib.request.Request(
        f"{cluster.url}/submit-task",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.loads(response.read())


def pool_processes(pid: int) -> set[int]:
    """Live (not zombie) children of a process: a worker's pool processes."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue
        if int(ppid) == pid and state != "Z":
            found.add(int(entry.name))
    return found


def in_log(proc, text: str) -> bool:
    return text in proc.log(tail=1000)


# -- retries ----------------------------------------------------------------------------


def test_a_failing_task_is_retried_with_growing_back_off_then_fails_keeping_each_error(
    make_cluster,
):
    # retry_at: after attempt k the delay is base * 2**(k-1), jittered within
    # [delay/2, delay] by random() in [0, 1). So the first back-off is in [base/2, base)
    # and the second in [base, 2 base]: the second is longer, whatever the jitter.
    base = 1.0
    cluster = make_cluster(RETRY_BACKOFF_BASE=str(base), RETRY_BACKOFF_CAP="60")
    cluster.start_dispatcher()
    cluster.start_worker("worker-1")
    task_id = cluster.submit("fail", {"error_message": "boom"}, max_retries=2)

    # GET /task does not show run_at: read it from the database each time it changes.
    # A retry's run_at stays in the row until the next failure (>= base/2 later).
    seen: list[tuple[str, float]] = []
    with closing(read_only(cluster.db_path)) as db:

        def failed():
            status, run_at = db.execute(
                "SELECT status, run_at FROM tasks WHERE id = ?", (task_id,)
            ).fetchone()
            if not seen or seen[-1][1] != run_at:
                seen.append((status, run_at))
            return status == "failed"

        wait_for(failed, 30, lambda: f"(status, run_at) seen: {seen}\n{cluster.logs()}", every=0.01)
        [created_at] = db.execute(
            "SELECT created_at FROM tasks WHERE id = ?", (task_id,)
        ).fetchone()
        attempts = db.execute(
            "SELECT attempt, started_at, finished_at FROM attempts WHERE task_id = ? ORDER BY id",
            (task_id,),
        ).fetchall()

    retry_times = [run_at for _, run_at in seen if run_at != created_at]
    assert len(retry_times) == 2, f"expected two scheduled retries, saw {seen}"
    assert [a[0] for a in attempts] == [1, 2, 3]
    delays = [retry_times[k] - attempts[k][2] for k in range(2)]  # run_at - failure time
    eps = 1e-6  # float rounding of now + delay
    assert base / 2 - eps <= delays[0] < base + eps, delays
    assert base - eps <= delays[1] <= 2 * base + eps, delays
    assert delays[1] > delays[0]
    for k in range(2):  # each retry waited for its scheduled time
        assert attempts[k + 1][1] >= retry_times[k], (attempts, retry_times)

    task = cluster.task(task_id)
    assert task["status"] == "failed"
    assert task["attempts"] == 3
    assert task["error"] == "boom"
    assert [(h["attempt"], h["outcome"], h["error"]) for h in task["history"]] == [
        (1, "failed", "boom"),
        (2, "failed", "boom"),
        (3, "failed", "boom"),
    ]


# -- poison pills -----------------------------------------------------------------------


def test_a_task_that_kills_its_pool_process_fails_after_its_attempts_and_the_worker_goes_on(
    make_cluster,
):
    cluster = make_cluster(TASK_MODULES=MODULES)
    cluster.start_dispatcher()
    worker = cluster.start_worker("worker-1")
    pill = cluster.submit("testing_exit_child", {}, max_retries=1)

    failed = cluster.wait_status(pill, "failed")
    assert failed["attempts"] == 2
    assert failed["error"] == EXIT_CHILD_ERROR
    assert [(h["outcome"], h["error"]) for h in failed["history"]] == [
        ("failed", EXIT_CHILD_ERROR),
        ("failed", EXIT_CHILD_ERROR),
    ]

    after = cluster.submit("compute", {"operation": "double", "value": 21})
    done = cluster.wait_status(after, "completed")
    assert done["result"]["result"] == 42
    assert done["worker_id"] == "worker-1"
    assert worker.alive(), worker.log()


def test_a_task_that_kills_its_worker_every_time_ends_failed_with_lease_expired(make_cluster):
    cluster = make_cluster(TASK_MODULES=MODULES)
    cluster.start_dispatcher()
    worker = cluster.start_worker("worker-1")
    pill = cluster.submit("testing_kill_worker", {}, max_retries=1)
    deaths = 0

    def restart_if_dead():
        nonlocal worker, deaths
        if not worker.alive():
            deaths += 1
            if deaths > 2:
                pytest.fail(f"a task of 2 attempts killed {deaths} workers:\n{worker.log()}")
            worker.close()  # its orphaned pool process too
            worker = cluster.start_worker("worker-1")  # as a supervisor would

    def settled():
        task = cluster.task(pill)
        if task["status"] == "failed":
            return task
        restart_if_dead()
        return None

    failed = wait_for(settled, 60, lambda: f"{cluster.task(pill)}\n{cluster.logs()}", every=0.1)
    restart_if_dead()  # the second death may not have been seen yet
    assert deaths == 2  # one per attempt: max_retries + 1
    assert failed["attempts"] == 2
    assert failed["error"] == "lease expired"
    for h in failed["history"]:  # rescued by the restart, the reaper or lease expiry
        assert h["outcome"] in ("worker restarted", "worker dead", "expired"), failed
        assert h["error"] == "lease expired"

    after = cluster.submit("compute", {"operation": "double", "value": 4})
    done = cluster.wait_status(after, "completed")
    assert done["worker_id"] == "worker-1"
    assert cluster.task(pill)["status"] == "failed"  # a new instance did not revive it


# -- priority, delay, idempotency -------------------------------------------------------


def test_higher_priority_runs_first_and_a_delayed_task_waits_for_its_delay(cluster):
    cluster.start_dispatcher()
    quick = {"duration": 0.2}
    ids = {
        "low": cluster.submit("sleep", quick, priority=0),
        "high": cluster.submit("sleep", quick, priority=10),
        "mid": cluster.submit("sleep", quick, priority=5),
        "delayed": cluster.submit("sleep", quick, priority=100, delay=3),
    }
    cluster.start_worker("worker-1", "--concurrency", "1", "--prefetch", "0")

    tasks = dict(zip(ids, cluster.wait_all_finished(list(ids.values())), strict=True))
    assert {t["status"] for t in tasks.values()} == {"completed"}, tasks
    by_start = sorted(("low", "high", "mid"), key=lambda name: when(tasks[name]["started_at"]))
    assert by_start == ["high", "mid", "low"], {n: t["started_at"] for n, t in tasks.items()}
    delayed = tasks["delayed"]
    assert when(delayed["started_at"]) >= when(delayed["created_at"]) + 3 - MS, delayed


def test_a_repeated_idempotency_key_returns_the_first_task_and_creates_nothing(cluster):
    cluster.start_dispatcher()
    body = {
        "type": "compute",
        "payload": {"operation": "double", "value": 5},
        "idempotency_key": "order-42",
    }
    first = submit_with_status(cluster, body)
    again = submit_with_status(cluster, body)

    assert first[0] == 201, first
    task_id = first[1]["task_id"]
    assert again == (200, {"task_id": task_id, "status": "pending"})
    listed = cluster.client.call("GET", "/tasks")["tasks"]
    assert [t["task_id"] for t in listed] == [task_id]

    cluster.start_worker("worker-1")
    done = cluster.wait_status(task_id, "completed")
    assert done["result"]["result"] == 10
    assert submit_with_status(cluster, body) == (200, {"task_id": task_id, "status": "completed"})
    assert sum(cluster.client.stats()["tasks"].values()) == 1


# -- cancel and retry -------------------------------------------------------------------


def test_cancelling_a_running_task_kills_its_process_and_frees_the_worker(cluster):
    cluster.start_dispatcher()
    worker = cluster.start_worker("worker-1", "--concurrency", "1", "--prefetch", "0")
    slow = cluster.submit("sleep", {"duration": 30}, max_retries=0)
    running = cluster.wait_status(slow, "in_progress")
    wait_for(lambda: in_log(worker, f"task {slow} started"), 30, lambda: worker.log())
    pool_before = pool_processes(worker.pid)
    assert pool_before, f"no pool process under worker pid {worker.pid}"

    assert post(cluster, f"/task/{slow}/cancel") == {"task_id": slow, "status": "cancelled"}
    wait_for(lambda: in_log(worker, f"task {slow} abandoned"), 30, lambda: worker.log())
    wait_for(
        lambda: pool_before - pool_processes(worker.pid),  # the process running it is gone
        30,
        lambda: f"pool before {pool_before}, now {pool_processes(worker.pid)}\n{worker.log()}",
    )

    after = cluster.submit("compute", {"operation": "double", "value": 1})
    done = cluster.wait_status(after, "completed", timeout=25)
    # the only slot was free again while the 30 s sleep would still have been running
    assert when(done["finished_at"]) < when(running["started_at"]) + 30
    assert done["worker_id"] == "worker-1"
    cancelled = cluster.task(slow)
    assert cancelled["status"] == "cancelled"
    assert [h["outcome"] for h in cancelled["history"]] == ["cancelled"]
    assert worker.alive(), worker.log()


def test_retry_runs_a_failed_or_cancelled_task_again_with_attempts_reset(make_cluster):
    cluster = make_cluster(TASK_MODULES=MODULES)
    cluster.start_dispatcher()
    cluster.start_worker("worker-1")

    # a failure someone fixes (the file appears), then a retry completes the task
    marker = cluster.tmp / "fixed"
    flaky = cluster.submit("testing_fail_until_file", {"path": str(marker)}, max_retries=0)
    failed = cluster.wait_status(flaky, "failed")
    assert (failed["attempts"], failed["error"]) == (1, f"waiting for {marker}")
    marker.touch()
    assert post(cluster, f"/task/{flaky}/retry") == {"task_id": flaky, "status": "pending"}
    done = cluster.wait_status(flaky, "completed")
    assert done["result"] == {"found": str(marker)}
    assert done["attempts"] == 1
    assert done["error"] is None
    assert [(h["attempt"], h["outcome"]) for h in done["history"]] == [
        (1, "failed"),
        (1, "completed"),
    ]

    # `fail` fails again after its retry: attempts start over, the history keeps both
    doomed = cluster.submit("fail", {"error_message": "still broken"}, max_retries=0)
    cluster.wait_status(doomed, "failed")
    assert post(cluster, f"/task/{doomed}/retry")["status"] == "pending"
    again = cluster.wait_status(doomed, "failed")
    assert again["attempts"] == 1
    assert [(h["outcome"], h["error"]) for h in again["history"]] == [
        ("failed", "still broken"),
        ("failed", "still broken"),
    ]

    # a cancelled task (parked far in the future) runs at once when retried
    parked = cluster.submit("sleep", {"duration": 0.1}, delay=3600)
    assert post(cluster, f"/task/{parked}/cancel")["status"] == "cancelled"
    assert post(cluster, f"/task/{parked}/retry")["status"] == "pending"
    revived = cluster.wait_status(parked, "completed")
    assert revived["attempts"] == 1
    assert revived["result"] == {"slept": 0.1}

    with pytest.raises(ApiError) as refused:  # only failed or cancelled tasks
        post(cluster, f"/task/{parked}/retry")
    assert refused.value.status == 409


# -- concurrency and graceful stop ------------------------------------------------------


def test_one_worker_with_concurrency_4_runs_four_sleeps_at_once(cluster):
    cluster.start_dispatcher()
    ids = cluster.client.submit_tasks([{"type": "sleep", "payload": {"duration": 2}}] * 4)
    cluster.start_worker("worker-1", "--concurrency", "4")

    tasks = cluster.wait_all_finished(ids)
    assert [t["status"] for t in tasks] == ["completed"] * 4, tasks
    assert {t["worker_id"] for t in tasks} == {"worker-1"}
    started = [when(t["started_at"]) for t in tasks]
    finished = [when(t["finished_at"]) for t in tasks]
    assert max(started) - min(started) < 1, started
    # had any two of them shared a process, one after the other, this would be >= 4 s
    assert max(finished) - min(started) < 4, (started, finished)


def test_sigterm_on_a_busy_worker_gives_its_tasks_back_and_it_exits_0(make_cluster):
    cluster = make_cluster(WORKER_SHUTDOWN_GRACE="1")
    cluster.start_dispatcher()
    long = cluster.submit("sleep", {"duration": 5}, priority=1)  # far longer than the grace
    prefetched = cluster.client.submit_tasks([{"type": "sleep", "payload": {"duration": 0.1}}] * 2)
    ids = [long, *prefetched]
    worker = cluster.start_worker("worker-1", "--concurrency", "1", "--prefetch", "2")

    def all_held():
        tasks = [cluster.task(t) for t in ids]
        held = all(t["status"] == "in_progress" and t["worker_id"] == "worker-1" for t in tasks)
        return held and in_log(worker, f"task {long} started")

    wait_for(all_held, 30, lambda: f"{[cluster.task(t) for t in ids]}\n{worker.log()}")
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, worker.log()

    for task_id in ids:  # claimable at once, the attempt not counted
        task = cluster.task(task_id)
        assert (task["status"], task["attempts"]) == ("pending", 0), task
        assert [h["outcome"] for h in task["history"]] == ["released"], task
    assert in_log(worker, "gave back")

    cluster.start_worker("worker-2")
    tasks = cluster.wait_all_finished(ids)
    for task in tasks:
        assert task["status"] == "completed", task
        assert task["worker_id"] == "worker-2"
        assert task["attempts"] == 1
        assert [h["outcome"] for h in task["history"]] == ["released", "completed"]


# -- named queues -----------------------------------------------------------------------


def test_a_worker_takes_its_queues_in_order_and_never_another_queue(cluster):
    cluster.start_dispatcher()
    quick = {"duration": 0.2}
    defaults = [cluster.submit("sleep", quick) for _ in range(2)]  # older, same priority
    highs = [cluster.submit("sleep", quick, queue="high") for _ in range(2)]
    first = cluster.start_worker("worker-1", "--queues", "high,default", "--prefetch", "0")

    tasks = cluster.wait_all_finished([*defaults, *highs])
    assert {t["status"] for t in tasks} == {"completed"}, tasks
    order = sorted(tasks, key=lambda t: when(t["started_at"]))
    assert [t["queue"] for t in order] == ["high", "high", "default", "default"], order
    first.signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0, first.log()

    stranger = cluster.start_worker("worker-other", "--queues", "other")
    left = cluster.submit("sleep", quick)  # queue default: nobody serves it now
    own = cluster.submit("sleep", quick, queue="other")
    done = cluster.wait_status(own, "completed")  # worker-other was polling all along
    assert done["worker_id"] == "worker-other"
    untouched = cluster.task(left)
    assert (untouched["status"], untouched["attempts"], untouched["history"]) == (
        "pending",
        0,
        [],
    )
    assert stranger.alive()

    queues = cluster.client.stats()["queues"]
    assert queues["high"]["completed"] == 2
    assert (queues["default"]["completed"], queues["default"]["pending"]) == (2, 1)
    assert queues["other"]["completed"] == 1


# -- pool hygiene -----------------------------------------------------------------------


def test_max_tasks_per_child_replaces_pool_processes(make_cluster):
    cluster = make_cluster(TASK_MODULES=MODULES, WORKER_MAX_TASKS_PER_CHILD="2")
    cluster.start_dispatcher()
    ids = cluster.client.submit_tasks([{"type": "testing_pid", "payload": {}}] * 6)
    cluster.start_worker("worker-1", "--concurrency", "1")

    tasks = cluster.wait_all_finished(ids)
    assert {t["status"] for t in tasks} == {"completed"}, tasks
    pids = Counter(t["result"]["pid"] for t in tasks)
    assert len(pids) >= 3, pids
    assert max(pids.values()) <= 2, pids


# -- a task type from TASK_MODULES ------------------------------------------------------


def test_a_task_type_from_task_modules_runs_end_to_end(make_cluster):
    cluster = make_cluster(TASK_MODULES="examples.wordcount")
    cluster.start_dispatcher()
    cluster.start_worker("worker-1", WORKER_QUEUES="text")  # @task(queue="text")
    text = "To be, or not to be:\nthat is the question.\n"
    task = {"type": "wordcount", "payload": {"text": text, "top": 3}}

    done = subprocess.run(
        ["python3", "add_task.py", "--payload", json.dumps(task), "--wait", "--json"],
        cwd=PROJECT_ROOT,
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    [finished] = json.loads(done.stdout)["tasks"]
    assert finished["status"] == "completed", finished
    assert finished["payload"] == {"text": text, "top": 3}
    assert (finished["queue"], finished["max_retries"]) == ("text", 2)  # the type's defaults
    assert finished["result"] == {
        "words": 10,
        "lines": 2,
        "top": [["be", 2], ["to", 2], ["is", 1]],
    }

    with pytest.raises(ApiError) as refused:  # validated by the dispatcher, nothing stored
        cluster.submit("wordcount", {"text": "x" * 100_001})
    assert refused.value.status == 400
    assert "at most 100000 characters" in refused.value.message
    defaulted = cluster.submit("wordcount", {"text": "a b a"})
    result = cluster.wait_status(defaulted, "completed")
    assert result["payload"]["top"] == 10
    assert result["result"]["top"] == [["a", 2], ["b", 1]]
