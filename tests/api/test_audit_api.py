"""The audit trail through Flask's test client, on both backends: each change a person or
a script makes through the API (cancel, retry, queue settings, schedules) writes one
record naming who, what, to what, the request's id and the client's address; a refused
change, a submission and a worker's calls write none; GET /audit pages them newest
first; a record that cannot be written leaves the change standing; SCHEDULES_FILE's
changes are the system's; the reaper deletes records past AUDIT_RETENTION_SECONDS."""

from __future__ import annotations

import logging

import pytest

from common.config import Config
from dispatcher import identity
from dispatcher.app import create_app, reap_once
from dispatcher.identity import Identity
from dispatcher.scheduler import apply_file
from tests.api.test_api import Clock
from tests.api.test_metrics_endpoint import samples, value
from tests.pg import connect, fresh_schema_url

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z
FIELDS = ["id", "at", "name", "role", "action", "target", "request_id", "client", "detail"]
PRIMES = {"type": "primes", "payload": {"limit": 100}}
EVERY = {"name": "tick", "every": 60, "task": PRIMES}


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/tasks.db"
    else:
        with fresh_schema_url() as url:  # dropped once the app's storage is closed
            yield url


@pytest.fixture
def make_app(database_url, monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    made = []

    def build(**settings):
        config = Config(database_url=database_url, **settings)
        made.append(create_app(config, clock=Clock(T0), background=False))
        return made[-1]

    yield build
    for app in made:
        app.extensions["taskqueue"].wakeup.stop()
        app.extensions["taskqueue"].storage.close()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def api(app):
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = "10.1.2.3"  # the address requests come from
    return client


def records(api, query: str = "") -> list[dict]:
    answer = api.get(f"/audit{query}")
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()["records"]


def submit(api, body=None) -> str:
    answer = api.post("/submit-task", json=body or PRIMES)
    assert answer.status_code == 201, answer.get_json()
    return answer.get_json()["task_id"]


def test_each_change_made_through_the_api_writes_one_record(app, api):
    acting = Identity("alice", "admin")  # as the token check (dispatcher/tokens.py) sets it
    app.before_request(lambda: identity.set_current(acting))
    task_id = submit(api)
    rid = {"X-Request-ID": "req-cancel-1"}
    assert api.post(f"/task/{task_id}/cancel", headers=rid).status_code == 200
    assert api.post(f"/task/{task_id}/retry").status_code == 200
    settings = {"paused": True, "rate_limit": {"count": 5, "per_seconds": 2}}
    assert api.put("/queues/emails", json=settings).status_code == 200
    assert api.post("/schedules", json=EVERY).status_code == 201
    assert api.put("/schedules/tick", json={"enabled": False}).status_code == 200
    assert api.delete("/schedules/tick").status_code == 200

    found = records(api)
    assert [(r["action"], r["target"]) for r in found] == [
        ("schedule.delete", "schedule tick"),
        ("schedule.update", "schedule tick"),
        ("schedule.create", "schedule tick"),
        ("queue.update", "queue emails"),
        ("task.retry", f"task {task_id}"),
        ("task.cancel", f"task {task_id}"),
    ]
    cancel = found[-1]
    assert list(cancel) == FIELDS
    assert cancel["at"] == "2027-01-15T08:00:00.000+00:00"
    assert (cancel["name"], cancel["role"], cancel["client"]) == ("alice", "admin", "10.1.2.3")
    assert cancel["request_id"] == "req-cancel-1" and cancel["detail"] is None
    assert found[-2]["request_id"] not in (None, "req-cancel-1")  # a fresh one, its own
    assert found[3]["detail"] == settings
    assert found[2]["detail"] == {
        "cron": None,
        "every": 60,
        "timezone": "UTC",
        "catch_up": "one",
        "task": PRIMES,
        "enabled": True,
    }
    assert found[1]["detail"] == {"enabled": False}
    ids = [r["id"] for r in found]
    assert ids == sorted(ids, reverse=True)


def test_without_tokens_the_records_name_anonymous(api):
    task_id = submit(api)
    api.post(f"/task/{task_id}/cancel")
    [r] = records(api)
    assert (r["name"], r["role"]) == ("anonymous", "admin")


def test_refused_changes_write_no_record(app, api):
    task_id = submit(api)
    [claimed] = api.post("/get-task", json={"worker_id": "w1"}).get_json()["tasks"]
    done = {"task_id": task_id, "worker_id": "w1", "lease_token": claimed["lease_token"]}
    api.post("/submit-result", json={**done, "status": "completed", "result": 1})
    assert api.post(f"/task/{task_id}/cancel").status_code == 409  # completed
    assert api.post(f"/task/{task_id}/retry").status_code == 409
    assert api.post("/task/nope/cancel").status_code == 404
    assert api.post("/task/nope/retry").status_code == 404
    assert api.put("/queues/q", json={"max_in_flight": 0}).status_code == 400
    assert api.put("/queues/q", json={}).status_code == 400
    assert api.post("/schedules", json={**EVERY, "every": 0}).status_code == 400
    assert api.post("/schedules", json=EVERY).status_code == 201
    assert api.post("/schedules", json=EVERY).status_code == 409  # the name is taken
    assert api.put("/schedules/nope", json={"enabled": False}).status_code == 404
    assert api.put("/schedules/tick", json={"every": -1}).status_code == 400
    assert api.delete("/schedules/nope").status_code == 404
    assert [r["action"] for r in records(api)] == ["schedule.create"]


def test_submissions_and_workers_calls_write_no_record(api):
    first = submit(api)
    api.post("/submit-tasks", json={"tasks": [PRIMES, PRIMES]})
    worker = {"worker_id": "w1", "instance_id": "i1"}
    claimed = api.post("/get-task", json={**worker, "max_tasks": 3}).get_json()["tasks"]
    api.post("/heartbeat", json={**worker, "task_ids": [first]})
    lease = {t["task_id"]: t["lease_token"] for t in claimed}
    result = {"worker_id": "w1", "status": "completed", "result": 1}
    api.post("/submit-result", json={**result, "task_id": first, "lease_token": lease[first]})
    second, third = [t for t in lease if t != first]
    items = [{**result, "task_id": second, "lease_token": lease[second]}]
    api.post("/submit-results", json={"results": items})
    api.post(
        "/release",
        json={"worker_id": "w1", "tasks": [{"task_id": third, "lease_token": lease[third]}]},
    )
    api.post("/wait-tasks", json={"task_ids": [first]})
    api.get(f"/task/{first}")
    assert records(api) == []


def test_a_cancel_that_cascades_to_dependents_is_one_record(api):
    first = submit(api)
    submit(api, {**PRIMES, "depends_on": [first]})
    assert api.post(f"/task/{first}/cancel").status_code == 200
    assert [r["target"] for r in records(api)] == [f"task {first}"]


def test_records_are_paged_newest_first_and_bad_paging_is_a_400(api):
    ids = [submit(api) for _ in range(5)]
    for task_id in ids:
        api.post(f"/task/{task_id}/cancel")
    answer = api.get("/audit?limit=2&offset=1").get_json()
    assert (answer["limit"], answer["offset"]) == (2, 1)
    assert [r["target"] for r in answer["records"]] == [f"task {ids[3]}", f"task {ids[2]}"]
    assert api.get("/audit").get_json()["limit"] == 100
    assert api.get("/audit?limit=&offset=").get_json()["offset"] == 0  # empty: the default
    assert records(api, "?offset=5") == []
    for query in ("limit=0", "limit=1001", "limit=x", "offset=-1", "offset=1.5", "offset=nan"):
        answer = api.get(f"/audit?{query}")
        assert answer.status_code == 400, query
        assert answer.is_json and set(answer.get_json()) == {"error"}, query


def test_the_metrics_count_records_written(api):
    before = samples(api)
    task_id = submit(api)
    api.post(f"/task/{task_id}/cancel")
    api.post(f"/task/{task_id}/retry")
    api.post(f"/task/{task_id}/cancel")
    after = samples(api)
    written = "taskqueue_audit_records_total"
    assert (
        value(after, written, action="task.cancel") - value(before, written, action="task.cancel")
        == 2
    )
    assert (
        value(after, written, action="task.retry") - value(before, written, action="task.retry")
        == 1
    )
    errors = "taskqueue_audit_write_errors_total"
    assert value(after, errors) == value(before, errors)


def test_a_record_that_cannot_be_written_leaves_the_change_standing(app, api, caplog):
    task_id = submit(api)
    drop_audit_table(app)  # the database refuses the record, not the change
    before = samples(api)
    with caplog.at_level(logging.ERROR, logger="dispatcher"):
        answer = api.post(f"/task/{task_id}/cancel")
    assert answer.status_code == 200 and answer.get_json()["status"] == "cancelled"
    assert api.get(f"/task/{task_id}").get_json()["status"] == "cancelled"
    errors = "taskqueue_audit_write_errors_total"
    assert value(samples(api), errors) - value(before, errors) == 1
    [line] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert line.getMessage().startswith(f"audit record not written: task.cancel task {task_id}")


def drop_audit_table(app) -> None:
    storage = app.extensions["taskqueue"].storage
    url = app.extensions["taskqueue"].config.database_url
    if url.startswith("sqlite"):
        import sqlite3

        db = sqlite3.connect(storage.path)
        db.execute("DROP TABLE audit")
        db.commit()
        db.close()
    else:
        with connect(url) as db:
            db.execute("DROP TABLE audit")


def test_schedules_file_changes_are_recorded_as_the_system(app, api):
    c = app.extensions["taskqueue"]
    items = [EVERY, {**EVERY, "name": "other"}]
    apply_file(c.storage, items, c.config, c.registry, now=T0)
    apply_file(c.storage, items, c.config, c.registry, now=T0 + 5)  # as stored: no write
    apply_file(c.storage, [{**EVERY, "every": 30}], c.config, c.registry, now=T0 + 9)
    found = records(api)
    assert [(r["action"], r["target"]) for r in found] == [
        ("schedule.update", "schedule tick"),
        ("schedule.create", "schedule other"),
        ("schedule.create", "schedule tick"),
    ]
    assert {(r["name"], r["role"], r["request_id"], r["client"]) for r in found} == {
        ("system", "admin", None, None)
    }
    assert found[0]["detail"]["every"] == 30 and found[0]["detail"]["file"] is None
    assert found[0]["at"] == "2027-01-15T08:00:09.000+00:00"


def test_the_reaper_deletes_records_past_audit_retention(make_app, caplog):
    app = make_app(audit_retention_seconds=3600)
    api = app.test_client()
    task_id = submit(api)
    api.post(f"/task/{task_id}/cancel")
    context = app.extensions["taskqueue"]
    context.clock.now = T0 + 3600
    reap_once(context)
    assert len(records(api)) == 1
    context.clock.now = T0 + 3601
    with caplog.at_level(logging.INFO, logger="dispatcher"):
        reap_once(context)
    assert records(api) == []
    assert "deleted 1 audit records past retention" in caplog.text
