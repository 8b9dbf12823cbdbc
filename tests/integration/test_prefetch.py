"""WORKER_PREFETCH=auto: many quick tasks per claim, but no worker sits on long ones."""

from __future__ import annotations

from collections import Counter


def test_auto_prefetch_gives_long_tasks_back_so_both_workers_run_them(make_cluster):
    cluster = make_cluster(WORKER_PREFETCH="auto")
    cluster.start_dispatcher()
    quick = [{"type": "compute", "payload": {"operation": "double", "value": i}} for i in range(40)]
    slow = [{"type": "sleep", "payload": {"duration": 1.5}} for _ in range(6)]
    ids = cluster.client.submit_tasks(quick + slow)
    cluster.start_worker("worker-1")
    cluster.start_worker("worker-2")

    tasks = cluster.wait_all_finished(ids, timeout=90)
    assert all(t["status"] == "completed" for t in tasks)
    long_ones = tasks[40:]
    by_worker = Counter(t["worker_id"] for t in long_ones)
    assert set(by_worker) == {"worker-1", "worker-2"}, f"one worker kept them all: {by_worker}"
    # a task given back unstarted does not count as an attempt
    assert all(t["attempts"] == 1 for t in tasks), [t["history"] for t in long_ones]
