"""A worker running quick tasks asks for its next task with its result (ACK+FETCH):
one request per task instead of a result and a claim."""

from __future__ import annotations

import signal

import requests
from prometheus_client.parser import text_string_to_metric_families

N = 30


def requests_to(url: str, endpoint: str) -> float:
    """How many requests the dispatcher answered on `endpoint` (any status)."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "taskqueue_http_request_duration_seconds_count"
        and s.labels.get("endpoint") == endpoint
    )


def test_a_worker_claims_its_next_task_with_the_result_of_the_last(make_cluster):
    cluster = make_cluster()
    cluster.start_dispatcher()
    cluster.wait_worker_alive(cluster.start_worker("worker-1"))
    claims_before = requests_to(cluster.url, "/get-task")

    for i in range(N):  # one at a time, as a web request waiting for its task would
        task_id = cluster.submit("compute", {"operation": "double", "value": i})
        task = cluster.client.task(task_id, wait=30)
        assert task["status"] == "completed", (task, cluster.logs())
        assert task["result"]["result"] == 2 * i, task

    claims = requests_to(cluster.url, "/get-task") - claims_before
    results = requests_to(cluster.url, "/submit-results")
    assert results >= N - 1  # the last one is held: the worker's claim, waiting for work
    # the first task's claim and the one sent while it ran, before its run time was
    # known; then every claim travels with a result
    assert claims <= 3, f"{claims:g} claims of their own for {N} tasks run one at a time"


def test_a_worker_holding_its_claim_in_a_result_request_stops_at_once(make_cluster):
    """After quick tasks, the idle worker's claim is held inside its last result's
    request; SIGTERM ends it at once (not after its 20 s hold), the results stand, none
    is cached, and a task submitted afterwards is not claimed by it."""
    cluster = make_cluster(WORKER_POLL_INTERVAL="20", MAX_WAIT_SECONDS="30")
    cluster.start_dispatcher()
    worker = cluster.start_worker("w1")
    cluster.wait_worker_alive(worker)
    for i in range(4):
        task_id = cluster.submit("compute", {"operation": "double", "value": i})
        assert cluster.client.task(task_id, wait=30)["status"] == "completed"
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0, worker.log()
    log = worker.log(tail=200)
    assert "cached" not in log, log
    task_id = cluster.submit("compute", {"operation": "double", "value": 9})
    assert cluster.task(task_id)["history"] == []  # never claimed, never given back
