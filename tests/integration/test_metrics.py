"""GET /metrics of a real dispatcher (two server processes: the counters summed over
both) and a real worker's own metrics, parsed with prometheus_client's parser."""

from __future__ import annotations

import requests
from harness import free_port, wait_for
from prometheus_client.parser import text_string_to_metric_families

N = 5


def scrape(url: str, **headers: str) -> dict:
    response = requests.get(url, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    found = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            found[s.name, tuple(sorted(s.labels.items()))] = s.value
    return found


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def series(found: dict, name: str) -> dict:
    """Every sample of one metric, as {labels: value}."""
    return {labels: v for (n, labels), v in found.items() if n == name}


def test_metrics_count_what_the_test_did(make_cluster):
    # no worker is declared dead here: the silent one's leases expire instead
    cluster = make_cluster(DISPATCHER_PROCESSES="2", WORKER_DEAD_AFTER="600")
    worker_port = free_port()
    cluster.start_dispatcher()

    # a worker that claims by hand and then says nothing: the reaper finds its leases
    # expired, two in queue q2, one in q3 (no retry left: they end failed, unclaimed)
    def double(i: int) -> dict:
        return {"operation": "double", "value": i}

    silent = [cluster.submit("compute", double(i), queue="q2", max_retries=0) for i in range(2)]
    silent.append(cluster.submit("sleep", {"duration": 0}, queue="q3", max_retries=0))
    claim = {"worker_id": "silent", "max_tasks": 3, "queues": ["q2", "q3"]}
    claimed = cluster.client.call("POST", "/get-task", claim)["tasks"]
    assert sorted(t["task_id"] for t in claimed) == sorted(silent)

    worker = cluster.start_worker(
        "worker-1", WORKER_METRICS_PORT=str(worker_port), WORKER_QUEUES="default,q4"
    )
    cluster.wait_worker_alive(worker)
    ok = [cluster.submit("compute", double(i)) for i in range(N)]
    ok_q4 = cluster.submit("sleep", {"duration": 0}, queue="q4")
    bad = cluster.submit("fail", {"error_message": "boom"}, max_retries=0)
    twice = cluster.submit("fail", {"error_message": "boom"}, max_retries=1)  # one retry
    later = cluster.submit("compute", double(1), delay=3600)
    cluster.client.call("POST", f"/task/{later}/cancel")
    later_q4 = cluster.submit("sleep", {"duration": 0}, queue="q4", delay=3600)
    cluster.client.call("POST", f"/task/{later_q4}/cancel")
    for task in cluster.wait_all_finished([*ok, ok_q4, bad, twice, *silent]):
        failed = task["task_id"] in (bad, twice, *silent)
        assert task["status"] == ("failed" if failed else "completed"), task

    metrics_url = f"{cluster.url}/metrics"
    seen: dict = {}
    stats: dict = {}

    def labelled(queue: str, type_: str, **more: str) -> tuple:
        return tuple(sorted({"queue": queue, "type": type_, **more}.items()))

    def counted() -> bool:  # each scrape may be answered by either server process
        nonlocal seen
        seen = scrape(metrics_url)
        return all(
            (
                series(seen, "taskqueue_tasks_submitted_total")
                == {
                    labelled("default", "compute"): N + 1,
                    labelled("default", "fail"): 2,
                    labelled("q2", "compute"): 2,
                    labelled("q3", "sleep"): 1,
                    labelled("q4", "sleep"): 2,
                },
                series(seen, "taskqueue_tasks_finished_total")
                == {
                    labelled("default", "compute", outcome="completed"): N,
                    labelled("q4", "sleep", outcome="completed"): 1,
                    labelled("default", "fail", outcome="failed"): 2,
                    labelled("default", "compute", outcome="cancelled"): 1,
                    labelled("q4", "sleep", outcome="cancelled"): 1,
                },
                series(seen, "taskqueue_task_retries_total") == {labelled("default", "fail"): 1},
                series(seen, "taskqueue_lease_expirations_total")
                == {(("queue", "q2"),): 2, (("queue", "q3"),): 1},
                value(seen, "taskqueue_fenced_results_total") == 0,
                value(seen, "taskqueue_database_errors_total") == 0,
            )
        )

    wait_for(
        counted, 10, lambda: f"counters: { {k: v for k, v in seen.items() if 'taskqueue' in k[0]} }"
    )

    def gauges_match_stats() -> bool:  # the gauges are at most a second old
        nonlocal seen, stats
        stats = cluster.client.stats()
        seen = scrape(metrics_url)
        return all(
            value(seen, "taskqueue_tasks", queue=queue, status=status) == n
            for queue, counts in stats["queues"].items()
            for status, n in counts.items()
        ) and all(
            value(seen, "taskqueue_workers", status=status) == stats["workers"][status]
            for status in ("alive", "dead")
        )

    wait_for(gauges_match_stats, 10, lambda: f"stats {stats}, metrics {seen}")
    assert value(seen, "taskqueue_tasks", queue="default", status="completed") == N
    requests_seen = value(
        seen,
        "taskqueue_http_request_duration_seconds_count",
        endpoint="/task/<task_id>/cancel",
        method="POST",
        status="200",
    )
    assert requests_seen == 2

    worker_url = f"http://127.0.0.1:{worker_port}/metrics"
    mine: dict = {}

    def worker_counted() -> bool:
        nonlocal mine
        mine = scrape(worker_url)
        return (
            value(mine, "taskqueue_worker_tasks_total", type="compute", outcome="completed") == N
            and value(mine, "taskqueue_worker_tasks_total", type="sleep", outcome="completed") == 1
            and value(mine, "taskqueue_worker_tasks_total", type="fail", outcome="failed") == 3
        )

    wait_for(worker_counted, 10, lambda: f"worker metrics: {mine}")
    assert value(mine, "taskqueue_worker_circuit_state", state="closed") == 1
    assert value(mine, "taskqueue_worker_circuit_state", state="open") == 0
    assert value(mine, "taskqueue_worker_task_duration_seconds_count", type="compute") == N
    assert value(mine, "taskqueue_worker_results_cached_total") == 0
    assert value(mine, "taskqueue_worker_dispatcher_errors_total") == 0


def test_metrics_want_the_token(make_cluster):
    cluster = make_cluster(API_TOKEN="s3cret")
    cluster.start_dispatcher()
    response = requests.get(f"{cluster.url}/metrics", timeout=10)
    assert response.status_code == 401, response.text
    assert "error" in response.json()
    found = scrape(f"{cluster.url}/metrics", Authorization="Bearer s3cret")
    assert ("taskqueue_workers", (("status", "alive"),)) in found
