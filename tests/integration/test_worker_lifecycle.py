"""A worker's life as the dispatcher sees it: it does not churn claims behind a long
task, claims nothing once told to stop, shows `stopped` after a clean stop (not `dead`),
is forgotten after WORKER_FORGET_AFTER, and says when the dispatcher is back."""

from __future__ import annotations

import signal
import sqlite3
from collections import defaultdict
from contextlib import closing

from harness import wait_for


def released_attempts(db_path) -> dict[str, list[float]]:
    with closing(sqlite3.connect(db_path)) as db:
        rows = db.execute(
            "SELECT task_id, started_at FROM attempts WHERE outcome = 'released'"
        ).fetchall()
    out: dict[str, list[float]] = defaultdict(list)
    for task_id, started in rows:
        out[task_id].append(started)
    return out


def test_a_worker_behind_a_long_task_gives_prefetch_back_once_and_does_not_retake_it(
    make_cluster,
):
    cluster = make_cluster(WORKER_POLL_INTERVAL="5")
    cluster.start_dispatcher()
    worker = cluster.start_worker("w1", "--concurrency", "1")
    cluster.wait_worker_alive(worker)
    quick = {"type": "compute", "payload": {"operation": "double", "value": 1}}
    batch = [quick] * 30 + [{"type": "sleep", "payload": {"duration": 2.5}}] + [quick] * 30
    ids = cluster.client.submit_tasks(batch)
    cluster.wait_all_finished(ids, timeout=60)
    again = {t: s for t, s in released_attempts(cluster.db_path).items() if len(s) > 1}
    churned = {t: s for t, s in again.items() if max(s) - min(s) < 1.0}
    assert not churned, f"claimed and given back again within a second: {churned}"


def test_a_stopping_worker_ends_its_held_claim_and_claims_nothing(make_cluster):
    """SIGTERM while its claim is held (nothing to do): the claim ends empty at once, no
    task submitted afterwards is claimed by it, and it shows `stopped`, never `dead`."""
    cluster = make_cluster(WORKER_POLL_INTERVAL="20", MAX_WAIT_SECONDS="30")
    cluster.start_dispatcher()
    worker = cluster.start_worker("w1")
    cluster.wait_worker_alive(worker)
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0, worker.log()  # not after its 20 s hold
    task_id = cluster.submit("compute", {"operation": "double", "value": 3})
    assert cluster.task(task_id)["status"] == "pending"
    assert cluster.task(task_id)["history"] == []  # never claimed, never given back
    [shown] = [w for w in cluster.client.workers() if w["worker_id"] == "w1"]
    assert shown["status"] == "stopped", shown
    assert cluster.client.stats()["workers"] == {"alive": 0, "dead": 0, "stopped": 1}
    assert "gave back" not in worker.log()


def test_stopped_and_dead_workers_are_forgotten_after_worker_forget_after(make_cluster):
    cluster = make_cluster(WORKER_FORGET_AFTER="3", WORKER_DEAD_AFTER="1")
    cluster.start_dispatcher()
    stopped = cluster.start_worker("w-stopped")
    killed = cluster.start_worker("w-killed")
    for w in (stopped, killed):
        cluster.wait_worker_alive(w)
    stopped.signal(signal.SIGTERM)
    assert stopped.wait(timeout=15) == 0
    killed.kill9()
    statuses = {}

    def listed():
        nonlocal statuses
        statuses = {w["worker_id"]: w["status"] for w in cluster.client.workers()}
        return statuses

    wait_for(lambda: listed() == {"w-stopped": "stopped", "w-killed": "dead"}, 10, lambda: statuses)
    wait_for(lambda: listed() == {}, 15, lambda: f"still listed: {statuses}")


def test_the_per_worker_counts_are_attempts(make_cluster):
    """One failed attempt and one completed one: the worker shows attempts_failed 1
    and attempts_completed 1 (the old names `failed` and `completed` are gone)."""
    cluster = make_cluster()
    cluster.start_dispatcher()
    worker = cluster.start_worker("w1")
    failed = cluster.submit("fail", {"error_message": "no"}, max_retries=0)
    done = cluster.submit("compute", {"operation": "double", "value": 2})
    cluster.wait_all_finished([failed, done])
    [shown] = [w for w in cluster.client.workers() if w["worker_id"] == "w1"]
    assert (shown["attempts_completed"], shown["attempts_failed"]) == (1, 1), shown
    assert "completed" not in shown and "failed" not in shown
    assert worker.alive()


def test_a_worker_says_when_the_dispatcher_is_back(make_cluster):
    cluster = make_cluster()
    dispatcher = cluster.start_dispatcher()
    worker = cluster.start_worker("w1")
    cluster.wait_worker_alive(worker)
    dispatcher.kill9()
    wait_for(lambda: "dispatcher unreachable" in worker.log(), 30, worker.log)
    cluster.start_dispatcher("dispatcher-again")
    wait_for(lambda: "reachable again after" in worker.log(), 30, worker.log)
    assert worker.log().count("reachable again after") == 1
