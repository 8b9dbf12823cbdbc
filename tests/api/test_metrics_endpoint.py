"""GET /metrics through Flask's test client, without PROMETHEUS_MULTIPROC_DIR (the
counters in prometheus_client's default registry, shared by every app of this process:
the tests compare before and after)."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.config import Config
from dispatcher.app import create_app, reap_once

T0 = 1_700_000_000.0


@pytest.fixture
def make_client(tmp_path, monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    apps = []

    def make(clock=lambda: T0, **settings):
        url = f"sqlite:///{tmp_path}/tasks-{len(apps)}.db"
        app = create_app(Config(database_url=url, **settings), clock=clock, background=False)
        apps.append(app)
        return app.test_client()

    yield make
    for app in apps:
        context = app.extensions["taskqueue"]
        context.wakeup.stop()
        context.storage.close()


def samples(client, **headers) -> dict:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            found[s.name, tuple(sorted(s.labels.items()))] = s.value
    return found


def value(found: dict, name: str, **labels) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


LABELLED = (  # the counters fed by results, cancellations and the reaper
    "taskqueue_tasks_finished_total",
    "taskqueue_task_retries_total",
    "taskqueue_lease_expirations_total",
    "taskqueue_fenced_results_total",
)


def test_metrics_count_what_the_api_did(make_client):
    now = [T0]
    client = make_client(clock=lambda: now[0], lease_seconds=30.0)
    before = samples(client)

    def submit(type_, queue="default", **options):
        payload = {"sleep": {"duration": 0}, "compute": {"operation": "double", "value": 1}}
        task = {"type": type_, "payload": payload.get(type_, {}), "queue": queue, **options}
        r = client.post("/submit-task", json=task)
        assert r.status_code == 201, r.text
        return r.json["task_id"]

    done, cancelled = submit("sleep"), submit("sleep")
    fails = [{"type": "fail", "payload": {}, "max_retries": n} for n in (0, 1)]
    r = client.post("/submit-tasks", json={"tasks": fails})
    final, retried = r.json["task_ids"]
    done_q2, expired_q2 = submit("compute", "q2"), submit("compute", "q2")
    assert client.post(f"/task/{cancelled}/cancel").status_code == 200
    claim = {"worker_id": "w1", "max_tasks": 10, "queues": ["default", "q2"]}
    lease = {
        t["task_id"]: t["lease_token"] for t in client.post("/get-task", json=claim).json["tasks"]
    }
    assert set(lease) == {done, final, retried, done_q2, expired_q2}

    def result(task_id, status="completed", token=None):
        token = token or lease[task_id]
        body = {"task_id": task_id, "worker_id": "w1", "lease_token": token, "status": status}
        return body if status == "completed" else {**body, "error": "boom"}

    assert client.post("/submit-result", json=result(done)).status_code == 200
    assert client.post("/submit-result", json=result(done)).status_code == 200  # a repeat
    forged = result(done_q2, token=lease[final])
    assert client.post("/submit-result", json=forged).status_code == 409
    batch = [result(done_q2), result(final, "failed"), result(retried, "failed")]
    answers = client.post("/submit-results", json={"results": batch}).json["results"]
    assert [a["status"] for a in answers] == ["completed", "failed", "pending"]
    now[0] = T0 + 31  # expired_q2's lease (30 s) is over; the reaper finds it
    reap_once(client.application.extensions["taskqueue"])
    assert client.get(f"/task/{expired_q2}").json["status"] == "pending"
    client.application.extensions["taskqueue"].metrics.collector.cache.read_at = float("-inf")
    after = samples(client)  # the gauges' 1 s cache expired by hand just above

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("taskqueue_tasks_submitted_total", queue="default", type="sleep") == 2
    assert delta("taskqueue_tasks_submitted_total", queue="default", type="fail") == 2
    assert delta("taskqueue_tasks_submitted_total", queue="q2", type="compute") == 2
    moved = {
        (name, labels): after[name, labels] - before.get((name, labels), 0.0)
        for name, labels in after
        if name in LABELLED and after[name, labels] != before.get((name, labels), 0.0)
    }
    finished = "taskqueue_tasks_finished_total"
    assert moved == {  # exactly these series moved, by exactly this much
        (finished, (("outcome", "completed"), ("queue", "default"), ("type", "sleep"))): 1,
        (finished, (("outcome", "cancelled"), ("queue", "default"), ("type", "sleep"))): 1,
        (finished, (("outcome", "failed"), ("queue", "default"), ("type", "fail"))): 1,
        (finished, (("outcome", "completed"), ("queue", "q2"), ("type", "compute"))): 1,
        ("taskqueue_task_retries_total", (("queue", "default"), ("type", "fail"))): 1,
        ("taskqueue_lease_expirations_total", (("queue", "q2"),)): 1,
        ("taskqueue_fenced_results_total", ()): 1,
    }
    stats = client.get("/stats").json
    for queue in ("default", "q2"):
        for status, n in stats["queues"][queue].items():
            assert value(after, "taskqueue_tasks", queue=queue, status=status) == n
    assert value(after, "taskqueue_workers", status="alive") == stats["workers"]["alive"]
    endpoint = {"endpoint": "/task/<task_id>/cancel", "method": "POST", "status": "200"}
    assert delta("taskqueue_http_request_duration_seconds_count", **endpoint) == 1


def test_metrics_want_the_token(make_client):
    client = make_client(api_token="s3cret")
    assert client.get("/metrics").status_code == 401
    samples(client, Authorization="Bearer s3cret")


def test_storage_gauges_are_read_at_most_once_a_second():
    from dispatcher.metrics import StorageCollector

    now = [100.0]
    reads = []

    def stats():
        reads.append(now[0])
        return {
            "queues": {"q": {"pending": len(reads)}},
            "queue_oldest_pending_age_seconds": {},
            "workers": {"alive": 1, "dead": 0, "stopped": 0},
        }

    collector = StorageCollector(stats, clock=lambda: now[0])
    for _ in range(5):
        list(collector.collect())
    now[0] += 0.5
    list(collector.collect())
    assert reads == [100.0]
    now[0] += 0.6
    [tasks, age, workers, *settings] = list(collector.collect())  # settings: none here
    assert all(not family.samples for family in settings)
    assert reads == [100.0, 101.1]
    assert tasks.samples[0].value == 2
    assert age.samples[0].value == 0.0


def test_a_lost_database_leaves_out_the_gauges_only():
    from dispatcher.metrics import StorageCollector
    from dispatcher.storage.errors import DatabaseUnavailable

    def stats():
        raise DatabaseUnavailable("database unavailable: gone")

    assert list(StorageCollector(stats).collect()) == []


def test_tasks_cancelled_by_a_dependency_count_as_cancelled(make_client):
    client = make_client()
    before = samples(client)
    task = {"type": "compute", "payload": {"operation": "double", "value": 1}, "queue": "dq"}
    ids = client.post(
        "/submit-tasks",
        json={"tasks": [task, {**task, "depends_on": ["#0"]}, {**task, "depends_on": ["#1"]}]},
    ).json["task_ids"]
    assert client.post(f"/task/{ids[0]}/cancel").status_code == 200
    client.application.extensions["taskqueue"].metrics.collector.cache.read_at = float("-inf")
    after = samples(client)
    labels = {"queue": "dq", "type": "compute"}
    finished = "taskqueue_tasks_finished_total"
    cancelled = value(after, finished, outcome="cancelled", **labels)
    assert cancelled - value(before, finished, outcome="cancelled", **labels) == 3
    assert value(after, "taskqueue_tasks", queue="dq", status="cancelled") == 3
    assert value(after, "taskqueue_tasks", queue="dq", status="waiting") == 0
    # a task submitted after its dependency was cancelled is stored cancelled: counted too
    late = client.post("/submit-task", json={**task, "depends_on": [ids[0]]}).json["task_id"]
    assert client.get(f"/task/{late}").json["status"] == "cancelled"
    again = samples(client)
    assert value(again, finished, outcome="cancelled", **labels) - cancelled == 1
