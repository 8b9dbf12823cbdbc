"""GET /metrics through Flask's test client, without PROMETHEUS_MULTIPROC_DIR (the
counters in prometheus_client's default registry, shared by every app of this process:
the tests compare before and after)."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.config import Config
from dispatcher.app import create_app

T0 = 1_700_000_000.0


@pytest.fixture
def make_client(tmp_path, monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    apps = []

    def make(**settings):
        url = f"sqlite:///{tmp_path}/tasks-{len(apps)}.db"
        app = create_app(Config(database_url=url, **settings), clock=lambda: T0, background=False)
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


def test_metrics_count_what_the_api_did(make_client):
    client = make_client()
    before = samples(client)
    ids = []
    for _ in range(3):
        r = client.post("/submit-task", json={"type": "sleep", "payload": {"duration": 0}})
        ids.append(r.json["task_id"])
    client.post("/submit-tasks", json={"tasks": [{"type": "fail", "payload": {}}] * 2})
    claimed = client.post("/get-task", json={"worker_id": "w1", "max_tasks": 5}).json["tasks"]
    by_id = {t["task_id"]: t for t in claimed}
    first = by_id.pop(ids[0])
    result = {"task_id": ids[0], "worker_id": "w1", "lease_token": first["lease_token"]}
    assert client.post("/submit-result", json={**result, "status": "completed"}).status_code == 200
    forged = {**result, "status": "failed", "lease_token": claimed[-1]["lease_token"]}
    assert client.post("/submit-result", json=forged).status_code == 409
    assert client.post(f"/task/{ids[1]}/cancel").status_code == 200
    client.application.extensions["taskqueue"].metrics.collector.read_at = float("-inf")
    after = samples(client)  # the gauges' 1 s cache expired by hand just above

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("taskqueue_tasks_submitted_total", queue="default", type="sleep") == 3
    assert delta("taskqueue_tasks_submitted_total", queue="default", type="fail") == 2
    assert delta("taskqueue_tasks_finished_total", outcome="completed") == 1
    assert delta("taskqueue_tasks_finished_total", outcome="cancelled") == 1
    assert delta("taskqueue_fenced_results_total") == 1
    stats = client.get("/stats").json
    for status, n in stats["queues"]["default"].items():
        assert value(after, "taskqueue_tasks", queue="default", status=status) == n
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
    [tasks, age, workers] = list(collector.collect())
    assert reads == [100.0, 101.1]
    assert tasks.samples[0].value == 2
    assert age.samples[0].value == 0.0


def test_a_lost_database_leaves_out_the_gauges_only():
    from dispatcher.metrics import StorageCollector
    from dispatcher.storage.errors import DatabaseUnavailable

    def stats():
        raise DatabaseUnavailable("database unavailable: gone")

    assert list(StorageCollector(stats).collect()) == []
