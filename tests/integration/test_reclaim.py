"""A task the dispatcher gave up on (its lease expired) while this worker still runs it
can come back to the same worker under a new lease: it must go on running once, and its
result must count, not start a second copy."""

from __future__ import annotations

from harness import wait_for

RUNS_MODULE = """
import time
from pathlib import Path

from tasks import registry


@registry.task("count_runs")
def count_runs(payload):
    with open(payload["file"], "a") as f:
        f.write("run\\n")
    time.sleep(payload["seconds"])
    return {"ok": True}
"""


def test_a_task_reclaimed_by_the_worker_running_it_runs_once(make_cluster):
    # leases expire after 1 s and heartbeats come every 30 s: the running task goes back
    # to the queue, and the worker's free slot claims it again
    cluster = make_cluster(
        LEASE_SECONDS="1",
        WORKER_HEARTBEAT_INTERVAL="30",
        WORKER_DEAD_AFTER="60",
        WORKER_CONCURRENCY="2",
        WORKER_PREFETCH="0",
    )
    modules = cluster.tmp / "modules"
    modules.mkdir()
    (modules / "runs.py").write_text(RUNS_MODULE)
    cluster.settings.update(TASK_MODULES="runs", PYTHONPATH=str(modules))
    runs = cluster.tmp / "runs.txt"
    cluster.start_dispatcher()
    worker = cluster.start_worker("worker-1")
    task_id = cluster.submit("count_runs", {"file": str(runs), "seconds": 3}, max_retries=3)

    done = cluster.wait_status(task_id, "completed", timeout=30)
    assert done["attempts"] >= 2, done["history"]  # it was given up and claimed again
    assert runs.read_text().count("run") == 1, "the task ran twice in one worker"
    # the worker kept both of its slots: two more tasks run side by side to the end
    more = [
        cluster.submit("count_runs", {"file": str(cluster.tmp / f"more-{i}.txt"), "seconds": 0})
        for i in range(4)
    ]
    cluster.wait_all_finished(more, timeout=30)
    wait_for(lambda: worker.alive(), 1, lambda: worker.log())
    assert "Traceback" not in worker.log(1000), worker.log(200)
