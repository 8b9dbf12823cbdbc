"""GET /queues, PUT /queues/<name> and a submission's expires_in through Flask's test
client (SQLite, a clock the test moves, no reaper thread): the answers, every refusal
naming its field, and the metrics of queue settings and expired tasks."""

from __future__ import annotations

import threading
import time

import pytest

from dispatcher.app import reap_once
from tests.api import test_api as api
from tests.api.test_api import T0, primes_task, submit
from tests.api.test_metrics_endpoint import samples, value

make_client, clock = api.make_client, api.clock  # the fixtures


@pytest.fixture
def client(make_client, monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    return make_client(lease_seconds=30.0)


def claim(client, queues=("default",), max_tasks=5) -> list[dict]:
    response = client.post(
        "/get-task", json={"worker_id": "w1", "queues": list(queues), "max_tasks": max_tasks}
    )
    assert response.status_code == 200, response.get_json()
    return response.get_json()["tasks"]


def put(client, name: str, body) -> tuple[int, dict]:
    response = client.put(f"/queues/{name}", json=body)
    return response.status_code, response.get_json()


def test_a_queue_is_configured_before_it_has_tasks_and_listed(client):
    code, body = put(client, "emails", {"paused": True, "max_in_flight": 2})
    assert code == 200
    assert body == {
        "name": "emails",
        "paused": True,
        "max_in_flight": 2,
        "rate_limit": None,
        "updated_at": "2023-11-14T22:13:20.000+00:00",
    }
    submit(client, primes_task())
    queues = client.get("/queues").get_json()["queues"]
    assert [q["name"] for q in queues] == ["default", "emails"]
    default, emails = queues
    assert default["counts"]["pending"] == 1 and not default["paused"]
    assert default["updated_at"] is None and default["rate_limit"] is None
    assert emails["counts"] == dict.fromkeys(emails["counts"], 0)
    assert set(emails) == {"name", "paused", "max_in_flight", "rate_limit", "updated_at", "counts"}


def test_pause_and_resume_through_the_api(client):
    task_id = submit(client, primes_task())
    assert put(client, "default", {"paused": True})[0] == 200
    assert claim(client) == []
    code, body = put(client, "default", {"paused": False})
    assert (code, body["paused"]) == (200, False)
    assert [t["task_id"] for t in claim(client)] == [task_id]


def test_limits_through_the_api(client):
    for _ in range(5):
        submit(client, primes_task())
    put(client, "default", {"rate_limit": {"count": 3, "per_seconds": 60}})
    assert len(claim(client, max_tasks=2)) == 2
    assert len(claim(client, max_tasks=5)) == 1
    code, body = put(client, "default", {"rate_limit": None, "max_in_flight": 4})
    assert (code, body["rate_limit"], body["max_in_flight"]) == (200, None, 4)
    assert len(claim(client)) == 1  # 3 in progress already


def test_a_queue_name_with_a_slash_is_one_queue(client):
    assert put(client, "team/a", {"paused": True})[1]["name"] == "team/a"
    assert client.get("/queues").get_json()["queues"][0]["name"] == "team/a"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({}, "give at least one of 'paused', 'max_in_flight', 'rate_limit'"),
        ({"paused": "yes"}, "'paused' must be true or false"),
        ({"paused": None}, "'paused' must be true or false"),
        ({"max_in_flight": 0}, "'max_in_flight' must be between 1 and 1000000"),
        ({"max_in_flight": 1.5}, "'max_in_flight' must be a whole number"),
        ({"rate_limit": {"count": 1}}, "rate_limit: 'per_seconds' is required"),
        ({"rate_limit": {"count": 0, "per_seconds": 1}}, "rate_limit: 'count' must be between"),
        ({"rate_limit": {"count": 1, "per_seconds": 0}}, "'per_seconds' must be more than 0"),
        ({"rate_limit": "10/s"}, "'rate_limit' must be a JSON object"),
        ({"rate_limit": {"count": 1, "per_seconds": 1, "x": 1}}, "unknown field 'x'"),
        ({"pause": True}, "unknown field 'pause' in queue changes"),
        ([], "request body must be a JSON object"),
    ],
)
def test_a_bad_change_is_a_400_naming_the_field_and_changes_nothing(client, body, words):
    put(client, "q", {"max_in_flight": 7})
    code, answer = put(client, "q", body)
    assert code == 400 and words in answer["error"], answer
    [q] = client.get("/queues").get_json()["queues"]
    assert (q["max_in_flight"], q["paused"], q["rate_limit"]) == (7, False, None)


@pytest.mark.parametrize(
    ("name", "words"),
    [(" ", "'queue' must be a non-empty string"), ("x" * 201, "at most 200 characters")],
)
def test_a_bad_queue_name_is_a_400(client, name, words):
    code, answer = put(client, name, {"paused": True})
    assert code == 400 and words in answer["error"], answer
    assert client.get("/queues").get_json()["queues"] == []


def test_expires_in_is_stored_and_shown(client, clock):
    task_id = submit(client, primes_task(expires_in=90))
    task = client.get(f"/task/{task_id}").get_json()
    assert task["expires_at"] == "2023-11-14T22:14:50.000+00:00"
    assert client.get(f"/task/{submit(client, primes_task())}").get_json()["expires_at"] is None


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (0, "'expires_in' must be more than 0"),
        (-1, "'expires_in' must be more than 0"),
        (10**9, "'expires_in' must be more than 0 and at most"),
        ("soon", "'expires_in' must be a number"),
    ],
)
def test_a_bad_expires_in_is_a_400(client, value, words):
    response = client.post("/submit-task", json=primes_task(expires_in=value))
    assert response.status_code == 400 and words in response.get_json()["error"]
    response = client.post("/submit-tasks", json={"tasks": [primes_task(expires_in=value)]})
    assert response.status_code == 400 and "tasks[0]" in response.get_json()["error"]
    assert client.get("/stats").get_json()["tasks"]["pending"] == 0


def test_an_expiry_no_later_than_the_delay_is_a_400(client):
    """Such a task would expire before it is ready: refused, nothing stored."""
    response = client.post("/submit-task", json=primes_task(delay=100, expires_in=10))
    error = response.get_json()["error"]
    assert response.status_code == 400, error
    assert (
        error == "'expires_in' (10 s) must be more than 'delay' (100 s): the task would "
        "expire before it is ready"
    )
    assert client.get("/stats").get_json()["tasks"]["pending"] == 0


def test_an_expired_task_is_cancelled_with_its_error_and_counted(client, clock):
    before = samples(client)
    late = submit(client, primes_task(expires_in=5))
    clock.now = T0 + 6
    assert claim(client) == []  # the claim expires what it would have handed out
    task = client.get(f"/task/{late}").get_json()
    assert (task["status"], task["error"], task["attempts"], task["history"]) == (
        "cancelled",
        "expired: not started within 5 s",
        0,
        [],
    )
    reaped = submit(client, primes_task(queue="nobody", expires_in=2.5))
    clock.now = T0 + 9
    reap_once(client.application.extensions["taskqueue"])  # the reaper's, with no claim
    assert client.get(f"/task/{reaped}").get_json()["error"] == (
        "expired: not started within 2.5 s"
    )
    after = samples(client)
    for queue in ("default", "nobody"):
        got = value(after, "taskqueue_tasks_expired_total", queue=queue)
        assert got - value(before, "taskqueue_tasks_expired_total", queue=queue) == 1
        labels = {"queue": queue, "type": "primes", "outcome": "cancelled"}
        got = value(after, "taskqueue_tasks_finished_total", **labels)
        assert got - value(before, "taskqueue_tasks_finished_total", **labels) == 1


def test_queue_settings_are_gauges(client):
    put(client, "a", {"paused": True, "max_in_flight": 3})
    put(client, "b", {"rate_limit": {"count": 10, "per_seconds": 2}})
    found = samples(client)
    assert value(found, "taskqueue_queue_paused", queue="a") == 1
    assert value(found, "taskqueue_queue_paused", queue="b") == 0
    assert value(found, "taskqueue_queue_max_in_flight", queue="a") == 3
    assert ("taskqueue_queue_max_in_flight", (("queue", "b"),)) not in found
    assert value(found, "taskqueue_queue_rate_limit_count", queue="b") == 10
    assert value(found, "taskqueue_queue_rate_limit_seconds", queue="b") == 2


# -- held polls: ready means claimable now ------------------------------------------------


def held_poll(client, out: list, wait: float = 30.0) -> threading.Thread:
    """POST /get-task with `wait`, in a thread; its tasks land in `out`."""

    def poll():
        body = {"worker_id": "w-held", "queues": ["default"], "wait": wait}
        out.append(client.post("/get-task", json=body).get_json()["tasks"])

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    return thread


def until(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def test_a_held_poll_gets_a_paused_queues_task_when_it_is_resumed(client):
    task_id = submit(client, primes_task())
    put(client, "default", {"paused": True})
    context = client.application.extensions["taskqueue"]
    out: list = []
    thread = held_poll(client, out)
    until(lambda: context.held.count == 1, "the poll is not held")
    assert put(client, "default", {"paused": False})[0] == 200
    thread.join(15)
    # the poll ends only by a claim after a wake-up (its wait is 30 s): the resume woke it
    assert out and [t["task_id"] for t in out[0]] == [task_id], out


def test_a_held_poll_of_a_full_queue_gets_a_task_when_one_finishes(client):
    first = submit(client, primes_task())
    second = submit(client, primes_task())
    put(client, "default", {"max_in_flight": 1})
    [running] = claim(client)
    context = client.application.extensions["taskqueue"]
    out: list = []
    thread = held_poll(client, out)
    until(lambda: context.held.count == 1, "the poll is not held")
    result = {"worker_id": "w1", "status": "completed", "result": 1}
    result |= {"task_id": running["task_id"], "lease_token": running["lease_token"]}
    assert client.post("/submit-result", json=result).status_code == 200
    thread.join(15)
    assert running["task_id"] == first
    assert out and [t["task_id"] for t in out[0]] == [second], out


def test_a_held_poll_of_a_paused_queue_does_not_claim_in_a_loop(client):
    """A paused queue's pending task is not ready: the poll claims once, then sleeps
    until its wait is over (no wake-up comes), instead of claiming again and again."""
    submit(client, primes_task())
    put(client, "default", {"paused": True})
    storage = client.application.extensions["taskqueue"].storage
    claims = []
    real_claim = storage.claim

    def counted(*args, **kwargs):
        claims.append(1)
        return real_claim(*args, **kwargs)

    storage.claim = counted  # counts, and lets the real claim do the work
    try:
        out: list = []
        held_poll(client, out, wait=0.3).join(15)
    finally:
        del storage.claim
    assert out == [[]] and len(claims) == 1, claims
