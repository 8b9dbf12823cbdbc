"""Quick tasks go to a pool process several at a time (chunks). A task that hangs or
kills its process inside a chunk must not take the others down with it: the chunk's
tasks run again one by one, each with its own timeout."""

from __future__ import annotations

from collections import Counter

import pytest

QUICK = {"type": "compute", "payload": {"operation": "double", "value": 21}}


def _batch(middle: dict) -> list[dict]:
    # priorities fix the order: 30 quick tasks, the bad one, 30 more quick ones
    return [dict(QUICK, priority=2)] * 30 + [dict(middle, priority=1)] + [QUICK] * 30


@pytest.mark.parametrize(
    ("timeout", "chunk_timeout"),
    [(4, 2), (1, 1)],  # a chunk gets 2 s at least, but never more than its tightest task
)
def test_a_task_that_hangs_inside_a_chunk_fails_alone_at_its_timeout(
    make_cluster, timeout, chunk_timeout
):
    cluster = make_cluster(WORKER_PREFETCH="100")
    cluster.start_dispatcher()
    hang = {"type": "sleep", "payload": {"duration": 60}, "timeout": timeout, "max_retries": 0}
    ids = cluster.client.submit_tasks(_batch(hang))
    worker = cluster.start_worker("worker-1")

    tasks = cluster.wait_all_finished(ids, timeout=60)
    bad = tasks[30]
    assert bad["status"] == "failed" and f"timed out after {timeout} s" in bad["error"], bad
    quick = tasks[:30] + tasks[31:]
    assert Counter(t["status"] for t in quick) == {"completed": 60}
    assert {t["result"]["result"] for t in quick} == {42}
    chunk_ended = f"tasks ended (timed out after {chunk_timeout} s"
    assert chunk_ended in worker.log(400), "the hang was never in a chunk, or it had more time"


def test_a_task_that_kills_its_process_inside_a_chunk_spares_the_others(make_cluster):
    cluster = make_cluster(WORKER_PREFETCH="100", TASK_MODULES="examples.testing_tasks")
    cluster.start_dispatcher()
    poison = {"type": "testing_exit_child", "payload": {}, "max_retries": 0}
    ids = cluster.client.submit_tasks(_batch(poison))
    worker = cluster.start_worker("worker-1")

    tasks = cluster.wait_all_finished(ids, timeout=60)
    bad = tasks[30]
    assert bad["status"] == "failed" and "task process died" in bad["error"], bad
    assert bad["attempts"] == 1
    quick = tasks[:30] + tasks[31:]
    assert Counter(t["status"] for t in quick) == {"completed": 60}
    assert all(t["attempts"] == 1 for t in quick)
    assert "running them one by one" in worker.log(400), "the poison was never in a chunk"
