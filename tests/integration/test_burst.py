"""`./start_worker.sh ID --burst` as a cron job or a CI step runs it: a real worker process
against a real dispatcher, judged by its exit status."""

from __future__ import annotations

from harness import all_tasks

QUICK = {"type": "compute", "payload": {"operation": "double", "value": 21}}


def test_a_burst_worker_runs_every_ready_task_then_exits_0(cluster):
    cluster.start_dispatcher()
    ids = cluster.client.submit_tasks(
        [QUICK] * 40
        + [{"type": "sleep", "payload": {"duration": 0.2}}] * 2
        + [{"type": "fail", "payload": {"error_message": "no"}, "max_retries": 0}]
    )
    later = cluster.submit("compute", QUICK["payload"], delay=600)
    worker = cluster.start_worker("w1", "--burst", "--concurrency", "2")

    assert worker.wait(timeout=60) == 0, worker.log()
    tasks = [cluster.task(t) for t in ids]
    assert [t["status"] for t in tasks] == ["completed"] * 42 + ["failed"], tasks
    assert cluster.task(later)["status"] == "pending"
    assert {t["status"] for t in all_tasks(cluster.client)} == {"completed", "failed", "pending"}
    [shown] = cluster.client.workers()
    assert shown["status"] == "stopped", shown


def test_a_burst_worker_exits_1_when_no_dispatcher_answers(make_cluster):
    cluster = make_cluster(WORKER_DEAD_AFTER="1")  # no dispatcher started
    worker = cluster.start_worker("w1", "--burst")
    assert worker.wait(timeout=60) == 1, worker.log()
    assert "did not answer for 1 s (WORKER_DEAD_AFTER)" in worker.log(), worker.log()
