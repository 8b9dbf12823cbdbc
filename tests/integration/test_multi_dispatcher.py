"""Several dispatcher processes on one SQLite file (issue 6): gunicorn with 4 processes,
and two separate dispatchers on two ports. Claims are atomic across processes
(BEGIN IMMEDIATE), so 2,000 tasks run once each, and lock waits never reach a client."""

from __future__ import annotations

import threading

import pytest
from harness import fetch_tasks, free_port, wait_for

from common.client import Client

TASKS = 2000
WORKERS = 6


def _submit(url: str, items: list[dict], batch: int, errors: list[str], ids: list[str]):
    """Submit `items` to one dispatcher: in batches of `batch`, or one by one (batch=1)."""
    try:
        with Client(url) as client:
            for i in range(0, len(items), batch):
                part = items[i : i + batch]
                if batch == 1:
                    ids.append(client.submit_task(part[0]))
                else:
                    ids.extend(client.submit_tasks(part))
    except Exception as exc:  # any refusal or 5xx is what the test looks for
        errors.append(f"{url}: {exc.__class__.__name__}: {exc}")


@pytest.mark.parametrize("topology", ["one dispatcher, 4 processes", "two dispatchers"])
def test_2000_tasks_through_several_dispatcher_processes_each_run_once(make_cluster, topology):
    two = topology == "two dispatchers"
    # long leases: a slow machine must not turn into a second attempt; this test is about
    # claims racing between processes, not about expiry
    cluster = make_cluster(
        DISPATCHER_PROCESSES="2" if two else "4",
        LEASE_SECONDS="120",
        WORKER_DEAD_AFTER="60",
    )
    dispatchers = [cluster.start_dispatcher("dispatcher-a")]
    urls = [cluster.url]
    if two:
        port = free_port()
        dispatchers.append(cluster.start_dispatcher("dispatcher-b", port=port))
        urls.append(f"http://127.0.0.1:{port}")
    workers = [
        cluster.start_worker(f"worker-{i}", DISPATCHER_URL=urls[i % len(urls)])
        for i in range(WORKERS)
    ]
    for worker in workers:  # all six race for the tasks from the first one on
        cluster.wait_worker_alive(worker)

    # four clients at once (batches and single tasks, over every dispatcher) while the
    # workers claim
    items = [
        {"type": "compute", "payload": {"operation": "double", "value": i}} for i in range(TASKS)
    ]
    errors: list[str] = []
    id_lists: list[list[str]] = [[] for _ in range(4)]
    plan = [(0, items[:800], 100), (1, items[800:1600], 50), (0, items[1600:1800], 1)]
    plan.append((1, items[1800:], 1))
    threads = [
        threading.Thread(
            target=_submit, args=(urls[n % len(urls)], part, batch, errors, id_lists[i])
        )
        for i, (n, part, batch) in enumerate(plan)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    ids = [task_id for part in id_lists for task_id in part]
    assert len(set(ids)) == TASKS

    wait_for(
        lambda: cluster.client.stats()["tasks"]["completed"] == TASKS,
        120,
        lambda: f"{cluster.client.stats()['tasks']}\n{cluster.logs()}",
    )
    tasks = fetch_tasks(urls[-1], ids)
    expected = {i: {"operation": "double", "value": i, "result": 2 * i} for i in range(TASKS)}
    problems = []
    for task in tasks.values():
        history = [(a["worker_id"], a["outcome"]) for a in task["history"]]
        if task["attempts"] != 1 or len(history) != 1 or history[0][1] != "completed":
            problems.append(f"{task['task_id']}: attempts {task['attempts']}, history {history}")
        if task["result"] != expected[task["payload"]["value"]]:
            problems.append(f"{task['task_id']}: result {task['result']}")
    assert not problems, f"{len(problems)} tasks ran more than once:\n" + "\n".join(problems[:20])

    by_worker = {w.name: 0 for w in workers}
    for task in tasks.values():
        by_worker[task["worker_id"]] += 1
    print(f"{topology}: tasks per worker {by_worker}")
    for proc in workers + dispatchers:
        assert proc.alive(), f"{proc.name} died:\n{proc.log()}"
    for worker in workers:  # nothing a dispatcher answered was a lock error or a 5xx
        text = worker.log_path.read_text()
        for bad in ("database is locked", "HTTP 5", "unreachable", "cached"):
            assert bad not in text, f"{worker.name} logged {bad!r}:\n{worker.log(80)}"
    for dispatcher in dispatchers:
        text = dispatcher.log_path.read_text()
        assert "unexpected error" not in text, dispatcher.log(80)
