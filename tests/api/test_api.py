"""The HTTP API through Flask's test client: field names, status codes, bad input.

The app runs on a fresh SQLite file with a clock the test moves by hand, and without
the reaper thread.
"""

from __future__ import annotations

import json
import math
import threading
from datetime import datetime, timezone

import pytest

from common.config import Config
from dispatcher.app import create_app

T0 = 1_700_000_000.0
STATUSES = ("waiting", "pending", "in_progress", "completed", "failed", "cancelled")
TASK_FIELDS = {
    "task_id",
    "type",
    "queue",
    "payload",
    "status",
    "result",
    "error",
    "attempts",
    "max_retries",
    "priority",
    "worker_id",
    "created_at",
    "started_at",
    "finished_at",
    "progress",
    "depends_on",
    "dependents",
    "history",
}
CLAIM_FIELDS = {
    "task_id",
    "type",
    "queue",
    "payload",
    "attempt",
    "timeout",
    "lease_token",
    "lease_expires_at",
}
HISTORY_FIELDS = {"attempt", "worker_id", "started_at", "finished_at", "outcome", "error"}


class Clock:
    """A clock that stands still until the test moves `now`."""

    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_client(tmp_path, clock):
    """Build a dispatcher with the given settings; each gets its own database file."""
    apps = []

    def make(**settings):
        url = f"sqlite:///{tmp_path}/tasks-{len(apps)}.db"
        app = create_app(Config(database_url=url, **settings), clock=clock, background=False)
        apps.append(app)
        return app.test_client()

    yield make
    for app in apps:
        context = app.extensions["taskqueue"]
        context.wakeup.stop()
        context.storage.close()


@pytest.fixture
def client(make_client):
    return make_client()


@pytest.fixture
def small_client(make_client):
    return make_client(max_batch=5)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")


def parse_time(text: str) -> datetime:
    """An ISO 8601 UTC time, or a failed test."""
    value = datetime.fromisoformat(text)
    assert value.utcoffset() is not None and value.utcoffset().total_seconds() == 0, text
    return value


def primes_task(limit: int = 100, **fields) -> dict:
    return {"type": "primes", "payload": {"limit": limit}, **fields}


def submit(client, body: dict | None = None) -> str:
    response = client.post("/submit-task", json=body or primes_task())
    assert response.status_code == 201, response.get_json()
    return response.get_json()["task_id"]


def claim(client, worker: str = "w1", **fields) -> list[dict]:
    response = client.post("/get-task", json={"worker_id": worker, **fields})
    assert response.status_code == 200, response.get_json()
    return response.get_json()["tasks"]


def claim_one(client, task_id: str, worker: str = "w1", **fields) -> str:
    [task] = claim(client, worker, **fields)
    assert task["task_id"] == task_id
    return task["lease_token"]


def send_result(client, task_id, lease_token, status="completed", worker="w1", **fields):
    body = {
        "task_id": task_id,
        "worker_id": worker,
        "lease_token": lease_token,
        "status": status,
        **fields,
    }
    return client.post("/submit-result", json=body)


def get_task(client, task_id: str) -> dict:
    response = client.get(f"/task/{task_id}")
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def stored(client) -> int:
    """How many tasks the database holds, whatever their status."""
    response = client.get("/stats")
    assert response.status_code == 200
    return sum(response.get_json()["tasks"].values())


def assert_error(response, status: int) -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json
    body = response.get_json()
    assert set(body) == {"error"}
    assert isinstance(body["error"], str) and body["error"]
    return body["error"]


# -- submission -----------------------------------------------------------------------


def test_submit_task_answers_201_with_the_id_and_pending(client):
    response = client.post("/submit-task", json=primes_task())
    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == {"task_id", "status"}
    assert body["status"] == "pending"
    assert isinstance(body["task_id"], str) and body["task_id"]
    assert stored(client) == 1


def test_a_repeated_idempotency_key_answers_200_with_the_first_id(client):
    first = client.post("/submit-task", json=primes_task(idempotency_key="order-7"))
    again = client.post("/submit-task", json=primes_task(500, idempotency_key="order-7"))
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.get_json()["task_id"] == first.get_json()["task_id"]
    assert stored(client) == 1
    assert get_task(client, first.get_json()["task_id"])["payload"]["limit"] == 100


def test_submit_tasks_answers_201_with_every_id_in_order(client):
    tasks = [primes_task(10), {"type": "sleep", "payload": {"duration": 1}}, primes_task(30)]
    response = client.post("/submit-tasks", json={"tasks": tasks})
    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == {"task_ids"}
    assert len(set(body["task_ids"])) == 3
    types = [get_task(client, task_id)["type"] for task_id in body["task_ids"]]
    assert types == ["primes", "sleep", "primes"]
    assert stored(client) == 3


def test_a_batch_gives_each_task_its_own_options_or_the_defaults(client):
    tasks = [primes_task(10), primes_task(20, queue="batch", max_retries=7, priority=3)]
    tasks.append(primes_task(30))
    ids = client.post("/submit-tasks", json={"tasks": tasks}).get_json()["task_ids"]
    got = [get_task(client, task_id) for task_id in ids]
    options = [(t["queue"], t["max_retries"], t["priority"]) for t in got]
    assert options == [("default", 3, 0), ("batch", 7, 3), ("default", 3, 0)]


def test_submission_options_are_stored(client):
    body = primes_task(50, queue="batch", max_retries=7, priority=3, timeout=12.5)
    task = get_task(client, submit(client, body))
    assert task["queue"] == "batch"
    assert task["max_retries"] == 7
    assert task["priority"] == 3
    assert task["payload"] == {"limit": 50, "start": 2, "algorithm": "sieve"}
    [claimed] = claim(client, queues=["batch"])
    assert claimed["timeout"] == 12.5


def test_a_delayed_task_is_not_handed_out_early(client, clock):
    task_id = submit(client, primes_task(delay=60))
    assert claim(client) == []
    clock.now = T0 + 61
    claim_one(client, task_id)


# -- workers --------------------------------------------------------------------------


def test_get_task_hands_out_a_task_under_a_lease(client):
    task_id = submit(client, {"type": "sleep", "payload": {"duration": 1}})
    response = client.post("/get-task", json={"worker_id": "w1"})
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"tasks"}
    [task] = body["tasks"]
    assert set(task) == CLAIM_FIELDS
    assert task["task_id"] == task_id
    assert task["type"] == "sleep"
    assert task["payload"] == {"duration": 1}
    assert task["attempt"] == 1
    assert task["timeout"] == 300
    assert isinstance(task["lease_token"], str) and task["lease_token"]
    assert parse_time(task["lease_expires_at"]) == parse_time(iso(T0 + 120))
    assert get_task(client, task_id)["status"] == "in_progress"


def test_get_task_hands_out_up_to_max_tasks(client):
    ids = [submit(client) for _ in range(4)]
    claimed = claim(client, max_tasks=3)
    assert len(claimed) == 3
    assert len({t["lease_token"] for t in claimed}) == 3
    assert [t["task_id"] for t in claimed] == ids[:3]
    assert [t["task_id"] for t in claim(client, "w2", max_tasks=3)] == ids[3:]


def test_get_task_with_wait_on_an_empty_queue_returns_no_tasks(client):
    response = client.post("/get-task", json={"worker_id": "w1", "wait": 0.2})
    assert response.status_code == 200
    assert response.get_json() == {"tasks": []}


def test_submit_result_completes_the_task(client):
    task_id = submit(client)
    lease = claim_one(client, task_id)
    response = send_result(client, task_id, lease, result={"count": 25})
    assert response.status_code == 200
    assert response.get_json() == {"task_id": task_id, "status": "completed"}
    task = get_task(client, task_id)
    assert task["status"] == "completed"
    assert task["result"] == {"count": 25}


def test_the_same_result_sent_again_answers_200(client):
    task_id = submit(client)
    lease = claim_one(client, task_id)
    assert send_result(client, task_id, lease, result=1).status_code == 200
    again = send_result(client, task_id, lease, result=1)
    assert again.status_code == 200
    assert again.get_json() == {"task_id": task_id, "status": "completed"}


def test_a_failure_with_retries_left_answers_pending(client):
    task_id = submit(client)
    lease = claim_one(client, task_id)
    response = send_result(client, task_id, lease, "failed", error="boom")
    assert response.status_code == 200
    assert response.get_json() == {"task_id": task_id, "status": "pending"}
    task = get_task(client, task_id)
    assert task["status"] == "pending"
    assert task["error"] == "boom"


def test_a_failure_on_the_last_attempt_answers_failed(client):
    task_id = submit(client, primes_task(max_retries=0))
    lease = claim_one(client, task_id)
    response = send_result(client, task_id, lease, "failed", error="boom")
    assert response.get_json() == {"task_id": task_id, "status": "failed"}
    assert get_task(client, task_id)["error"] == "boom"


def test_a_result_for_a_task_finished_under_another_lease_is_409(client, clock):
    task_id = submit(client)
    first_lease = claim_one(client, task_id, "w1", instance_id="old")
    # w1 restarts: its earlier instance's task goes back to the queue at once
    assert (
        client.post("/heartbeat", json={"worker_id": "w1", "instance_id": "new"}).status_code == 200
    )
    clock.now = T0 + 1
    second_lease = claim_one(client, task_id, "w2")
    assert send_result(client, task_id, second_lease, worker="w2", result="w2").status_code == 200
    clock.now = T0 + 2
    late = send_result(client, task_id, first_lease, result="w1")
    assert_error(late, 409)
    task = get_task(client, task_id)
    assert task["status"] == "completed"
    assert task["result"] == "w2"


def test_a_taken_over_instance_gets_409(client):
    submit(client)
    claim(client, "w1", instance_id="old")
    claim(client, "w1", instance_id="new")
    message = assert_error(
        client.post("/get-task", json={"worker_id": "w1", "instance_id": "old"}), 409
    )
    assert "taken over" in message
    assert_error(client.post("/heartbeat", json={"worker_id": "w1", "instance_id": "old"}), 409)


def test_a_forged_lease_is_409(client):
    task_id = submit(client)
    claim_one(client, task_id)
    assert_error(send_result(client, task_id, "forged-token", result="x"), 409)
    assert get_task(client, task_id)["status"] == "in_progress"


def test_a_result_for_an_unknown_task_is_404(client):
    assert_error(send_result(client, "no-such-task", "a" * 32), 404)


def test_submit_results_answers_each_item_in_order(client):
    done, retried, untouched = submit(client), submit(client), submit(client)
    leases = {t["task_id"]: t["lease_token"] for t in claim(client, max_tasks=3)}
    items = [
        {
            "task_id": done,
            "worker_id": "w1",
            "lease_token": leases[done],
            "status": "completed",
            "result": {"count": 25},
        },
        {"task_id": "no-such-task", "worker_id": "w1", "lease_token": "x", "status": "completed"},
        {"task_id": untouched, "worker_id": "w1", "status": "completed", "result": "lost"},
        {
            "task_id": retried,
            "worker_id": "w1",
            "lease_token": leases[retried],
            "status": "failed",
            "error": "boom",
        },
    ]
    response = client.post("/submit-results", json={"results": items})
    assert response.status_code == 200
    answers = response.get_json()["results"]
    assert len(answers) == 4
    assert answers[0] == {"task_id": done, "status": "completed"}
    assert set(answers[1]) == {"task_id", "error", "code"}
    assert answers[1]["task_id"] == "no-such-task"
    assert answers[1]["code"] == 404
    assert set(answers[2]) == {"task_id", "error", "code"}
    assert answers[2]["task_id"] == untouched
    assert answers[2]["code"] == 400
    assert answers[3] == {"task_id": retried, "status": "pending"}
    assert get_task(client, done)["result"] == {"count": 25}
    assert get_task(client, retried)["status"] == "pending"
    assert get_task(client, untouched)["status"] == "in_progress"


def test_submit_results_answers_409_for_an_item_finished_under_another_lease(client):
    task_id = submit(client)
    lease = claim_one(client, task_id)
    client.post(f"/task/{task_id}/cancel")
    item = {"task_id": task_id, "worker_id": "w1", "lease_token": lease, "status": "completed"}
    response = client.post("/submit-results", json={"results": [item]})
    assert response.status_code == 200
    [answer] = response.get_json()["results"]
    assert answer["code"] == 409
    assert get_task(client, task_id)["status"] == "cancelled"


def test_results_can_carry_the_next_claim(client):
    first, second = submit(client), submit(client)
    lease = claim_one(client, first)
    item = {"task_id": first, "worker_id": "w1", "lease_token": lease, "status": "completed"}
    claim_body = {"worker_id": "w1", "max_tasks": 5}
    response = client.post("/submit-results", json={"results": [item], "claim": claim_body})
    assert response.status_code == 200
    body = response.get_json()
    assert body["results"] == [{"task_id": first, "status": "completed"}]
    assert [t["task_id"] for t in body["tasks"]] == [second]
    assert "claim_error" not in body
    assert get_task(client, first)["status"] == "completed"
    assert get_task(client, second)["status"] == "in_progress"
    # the claim is a real lease: its result is taken
    [task] = body["tasks"]
    assert send_result(client, second, task["lease_token"]).status_code == 200
    assert get_task(client, second)["status"] == "completed"


def test_a_claim_sent_with_results_that_finds_nothing_brings_no_tasks(client):
    task_id = submit(client)
    lease = claim_one(client, task_id)
    item = {"task_id": task_id, "worker_id": "w1", "lease_token": lease, "status": "completed"}
    claim_body = {"worker_id": "w1", "wait": 0.05}
    response = client.post("/submit-results", json={"results": [item], "claim": claim_body})
    assert response.status_code == 200
    assert response.get_json() == {
        "results": [{"task_id": task_id, "status": "completed"}],
        "tasks": [],
    }


@pytest.mark.parametrize(
    "claim_body",
    [{"max_tasks": 1}, {"worker_id": "w1", "max_tasks": 0}, {"worker_id": "w1", "wait": -1}],
)
def test_a_bad_claim_sent_with_results_never_undoes_them(client, claim_body):
    first, second = submit(client), submit(client)
    lease = claim_one(client, first)
    item = {"task_id": first, "worker_id": "w1", "lease_token": lease, "status": "completed"}
    response = client.post("/submit-results", json={"results": [item], "claim": claim_body})
    assert response.status_code == 200
    body = response.get_json()
    assert body["results"] == [{"task_id": first, "status": "completed"}]
    assert body["tasks"] == []
    assert body["claim_error"]["code"] == 400 and body["claim_error"]["error"]
    assert get_task(client, first)["status"] == "completed"
    assert get_task(client, second)["status"] == "pending"


def test_a_claim_that_is_not_an_object_is_refused_with_the_results(client):
    task_id = submit(client)
    lease = claim_one(client, task_id)
    item = {"task_id": task_id, "worker_id": "w1", "lease_token": lease, "status": "completed"}
    assert_error(client.post("/submit-results", json={"results": [item], "claim": 5}), 400)
    assert get_task(client, task_id)["status"] == "in_progress"


def test_release_gives_tasks_back_at_once(client):
    task_id = submit(client)
    lease = claim_one(client, task_id)
    body = {"worker_id": "w1", "tasks": [{"task_id": task_id, "lease_token": lease}]}
    response = client.post("/release", json=body)
    assert response.status_code == 200
    assert response.get_json()["released"] == 1
    task = get_task(client, task_id)
    assert task["status"] == "pending"
    assert task["attempts"] == 0
    [again] = claim(client, "w2")
    assert again["attempt"] == 1


def test_heartbeat_names_the_tasks_to_abandon(client):
    keep, drop = submit(client), submit(client)
    claim(client, max_tasks=2)
    client.post(f"/task/{drop}/cancel")
    response = client.post("/heartbeat", json={"worker_id": "w1", "task_ids": [keep, drop]})
    assert response.status_code == 200
    body = response.get_json()
    assert body["abandon"] == [drop]


def test_heartbeat_registers_a_new_worker(client):
    response = client.post("/heartbeat", json={"worker_id": "fresh", "instance_id": "i1"})
    assert response.status_code == 200
    assert response.get_json()["abandon"] == []
    [worker] = client.get("/workers").get_json()["workers"]
    assert worker["worker_id"] == "fresh"
    assert worker["status"] == "alive"


def test_heartbeat_extends_the_lease(client, clock):
    task_id = submit(client)
    claim_one(client, task_id)
    clock.now = T0 + 100
    response = client.post("/heartbeat", json={"worker_id": "w1"})
    assert parse_time(response.get_json()["lease_expires_at"]) == parse_time(iso(T0 + 220))


# -- progress -------------------------------------------------------------------------


def beat(client, progress: dict, worker: str = "w1", **fields):
    return client.post("/heartbeat", json={"worker_id": worker, "progress": progress, **fields})


def test_a_heartbeats_progress_shows_in_get_task_and_stays_after_it_finishes(client, clock):
    task_id = submit(client)
    lease = claim_one(client, task_id)
    assert get_task(client, task_id)["progress"] is None
    clock.now = T0 + 2
    response = beat(client, {task_id: {"fraction": 0.5, "message": "halfway"}}, task_ids=[task_id])
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["abandon"] == []
    shown = {"fraction": 0.5, "message": "halfway", "updated_at": iso(T0 + 2)}
    assert get_task(client, task_id)["progress"] == shown
    assert parse_time(shown["updated_at"]).timestamp() == T0 + 2  # ISO 8601 UTC, as others
    [listed] = client.get("/tasks").get_json()["tasks"]
    assert listed["progress"] == shown
    [worker] = client.get("/workers").get_json()["workers"]
    assert worker["progress"] == {task_id: shown}
    clock.now = T0 + 3
    assert beat(client, {task_id: {"fraction": 1}}).status_code == 200  # message: ""
    send_result(client, task_id, lease, result={"count": 25})
    kept = {"fraction": 1.0, "message": "", "updated_at": iso(T0 + 3)}
    assert get_task(client, task_id)["progress"] == kept


def test_progress_for_a_task_the_worker_does_not_hold_is_ignored(client):
    mine, theirs = submit(client), submit(client)
    claim_one(client, mine, "w1")
    claim_one(client, theirs, "w2")
    response = beat(client, {theirs: {"fraction": 0.9, "message": "not mine"}})
    assert response.status_code == 200
    assert get_task(client, theirs)["progress"] is None


BAD_PROGRESS = {  # a task's entry -> what the 400 says about it
    "fraction-above-1": ({"fraction": 1.5}, "'fraction' must be between 0 and 1"),
    "fraction-below-0": ({"fraction": -0.1}, "'fraction' must be between 0 and 1"),
    "fraction-as-text": ({"fraction": "half"}, "'fraction' must be a number"),
    "fraction-as-bool": ({"fraction": True}, "'fraction' must be a number"),
    "no-fraction": ({"message": "hi"}, "'fraction' is required"),
    "message-too-long": ({"fraction": 0, "message": "x" * 201}, "'message' must be at most 200 c"),
    "message-as-number": ({"fraction": 0.5, "message": 5}, "'message' must be a string"),
}  # fmt: skip


@pytest.mark.parametrize("entry, rule", BAD_PROGRESS.values(), ids=BAD_PROGRESS)
def test_a_bad_progress_is_400_naming_the_task_and_field(client, entry, rule):
    task_id = submit(client)
    claim_one(client, task_id)
    progress = {task_id: {"fraction": 0.5, "message": "fine"}, "t1": entry}
    assert assert_error(beat(client, progress), 400).startswith(f"progress['t1']: {rule}")
    assert get_task(client, task_id)["progress"] is None  # nothing of it stored


@pytest.mark.parametrize(
    "progress, error",
    [
        pytest.param({"t1": 0.5}, "'progress['t1']' must be a JSON object", id="entry-a-number"),
        pytest.param([0.5], "'progress' must be a JSON object", id="progress-as-list"),
        pytest.param(
            {"t" * 201: {"fraction": 0.5}},
            "progress: a key must be at most 200 characters",
            id="task-id-too-long",
        ),
    ],
)
def test_a_bad_progress_object_is_400(client, progress, error):
    assert assert_error(beat(client, progress), 400) == error


def test_a_heartbeat_without_progress_from_an_older_worker_still_works(client):
    task_id = submit(client)
    claim_one(client, task_id)
    response = client.post("/heartbeat", json={"worker_id": "w1", "task_ids": [task_id]})
    assert response.status_code == 200
    assert beat(client, None).status_code == 200  # null: the same as left out
    assert get_task(client, task_id)["progress"] is None


# -- reading --------------------------------------------------------------------------


def test_get_task_status_shows_every_spec_field(client, clock):
    task_id = submit(client, primes_task(max_retries=2, priority=4))
    lease = claim_one(client, task_id)
    clock.now = T0 + 5
    send_result(client, task_id, lease, result={"count": 25})
    task = get_task(client, task_id)
    assert TASK_FIELDS <= set(task)
    assert task["task_id"] == task_id
    assert task["type"] == "primes"
    assert task["queue"] == "default"
    assert task["payload"] == {"limit": 100, "start": 2, "algorithm": "sieve"}
    assert task["status"] == "completed"
    assert task["result"] == {"count": 25}
    assert task["error"] is None
    assert task["attempts"] == 1
    assert task["max_retries"] == 2
    assert task["priority"] == 4
    assert task["worker_id"] == "w1"
    assert parse_time(task["created_at"]) == parse_time(iso(T0))
    assert parse_time(task["started_at"]) == parse_time(iso(T0))
    assert parse_time(task["finished_at"]) == parse_time(iso(T0 + 5))
    [attempt] = task["history"]
    assert set(attempt) == HISTORY_FIELDS
    assert attempt["attempt"] == 1
    assert attempt["worker_id"] == "w1"
    assert attempt["outcome"] == "completed"
    assert attempt["error"] is None
    assert parse_time(attempt["started_at"]) == parse_time(iso(T0))
    assert parse_time(attempt["finished_at"]) == parse_time(iso(T0 + 5))


def test_a_pending_task_has_no_times_but_its_creation(client):
    task = get_task(client, submit(client))
    assert task["status"] == "pending"
    assert task["started_at"] is None
    assert task["finished_at"] is None
    assert task["worker_id"] is None
    assert task["history"] == []


def test_an_unknown_task_is_404(client):
    assert_error(client.get("/task/no-such-task"), 404)


def test_waiting_on_an_unfinished_task_returns_it_unfinished(client):
    task_id = submit(client)
    response = client.get(f"/task/{task_id}?wait=0.2")
    assert response.status_code == 200
    assert response.get_json()["status"] == "pending"


def test_waiting_on_a_finished_task_returns_it(client):
    task_id = submit(client)
    lease = claim_one(client, task_id)
    send_result(client, task_id, lease, result="done")
    response = client.get(f"/task/{task_id}?wait=0.2")
    assert response.get_json()["result"] == "done"


def test_wait_tasks_answers_the_finished_ones_and_the_unknown_ids(client):
    done, waiting = submit(client), submit(client)
    send_result(client, done, claim_one(client, done), result="done")
    response = client.post("/wait-tasks", json={"task_ids": [waiting, done, "nope"]})
    assert response.status_code == 200
    body = response.get_json()
    assert body["missing"] == ["nope"]
    [task] = body["tasks"]
    assert task == get_task(client, done)  # the task as GET /task/<id> shows it
    held = client.post("/wait-tasks", json={"task_ids": [waiting], "wait": 0.2})
    assert held.get_json() == {"tasks": [], "missing": []}


def test_a_held_wait_tasks_answers_when_one_of_them_finishes(client):
    first, second = submit(client), submit(client)
    lease = claim_one(client, first)
    answers = []
    waiter = threading.Thread(
        target=lambda: answers.append(
            client.post("/wait-tasks", json={"task_ids": [second, first], "wait": 30})
        )
    )
    waiter.start()
    send_result(client, first, lease, result=1)
    waiter.join(timeout=30)
    assert not waiter.is_alive()
    [response] = answers
    assert [t["task_id"] for t in response.get_json()["tasks"]] == [first]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({}, id="no-ids"),
        pytest.param({"task_ids": []}, id="empty"),
        pytest.param({"task_ids": "abc"}, id="not-a-list"),
        pytest.param({"task_ids": ["a"], "wait": -1}, id="negative-wait"),
        pytest.param({"task_ids": ["a"], "wait": 31}, id="wait-above-max"),
        pytest.param({"task_ids": ["a"] * 1001}, id="more-than-max-batch"),
        pytest.param({"task_ids": [""]}, id="empty-id"),
    ],
)
def test_a_bad_wait_tasks_is_400(client, body):
    assert_error(client.post("/wait-tasks", json=body), 400)


@pytest.mark.parametrize("wait", ["abc", "-1", "30.5", "nan", "inf"])
def test_a_bad_wait_on_a_task_is_400(client, wait):
    task_id = submit(client)
    assert_error(client.get(f"/task/{task_id}?wait={wait}"), 400)


def test_a_wait_above_max_wait_seconds_is_400(make_client):
    client = make_client(max_wait_seconds=1)
    task_id = submit(client)
    assert_error(client.get(f"/task/{task_id}?wait=2"), 400)
    assert_error(client.post("/get-task", json={"worker_id": "w1", "wait": 2}), 400)


def test_list_tasks_filters_by_status_and_type(client):
    sleepers = [submit(client, {"type": "sleep", "payload": {"duration": 1}}) for _ in range(2)]
    counters = [submit(client) for _ in range(3)]
    lease = claim_one(client, sleepers[0], queues=["default"])
    send_result(client, sleepers[0], lease, result={})

    def listed(query: str) -> list[str]:
        response = client.get(f"/tasks?{query}")
        assert response.status_code == 200, response.get_json()
        return [t["task_id"] for t in response.get_json()["tasks"]]

    assert listed("") == sleepers + counters
    assert listed("type=primes") == counters
    assert listed("status=completed") == [sleepers[0]]
    assert listed("status=pending&type=sleep") == [sleepers[1]]
    assert listed("status=failed") == []
    assert listed("type=nothing") == []


def test_list_tasks_pages_with_limit_and_offset(client):
    ids = [submit(client) for _ in range(5)]
    pages = [
        client.get(f"/tasks?limit=2&offset={offset}").get_json()["tasks"] for offset in (0, 2, 4)
    ]
    assert [[t["task_id"] for t in page] for page in pages] == [ids[:2], ids[2:4], ids[4:]]
    task = pages[0][0]
    assert task["status"] == "pending"
    parse_time(task["created_at"])


@pytest.mark.parametrize(
    "query", ["status=done", "limit=abc", "limit=0", "limit=1000000", "offset=-1"]
)
def test_a_bad_list_query_is_400(client, query):
    assert_error(client.get(f"/tasks?{query}"), 400)


def test_cancel_and_retry(client):
    task_id = submit(client)
    response = client.post(f"/task/{task_id}/cancel")
    assert response.status_code == 200
    assert response.get_json() == {"task_id": task_id, "status": "cancelled"}
    assert_error(client.post(f"/task/{task_id}/cancel"), 409)
    response = client.post(f"/task/{task_id}/retry")
    assert response.status_code == 200
    assert response.get_json() == {"task_id": task_id, "status": "pending"}
    assert_error(client.post(f"/task/{task_id}/retry"), 409)
    assert get_task(client, task_id)["status"] == "pending"


def test_retrying_a_failed_task_resets_its_attempts(client):
    task_id = submit(client, primes_task(max_retries=0))
    lease = claim_one(client, task_id)
    send_result(client, task_id, lease, "failed", error="boom")
    assert client.post(f"/task/{task_id}/retry").status_code == 200
    task = get_task(client, task_id)
    assert task["status"] == "pending"
    assert task["attempts"] == 0


def test_cancelling_a_completed_task_is_409(client):
    task_id = submit(client)
    send_result(client, task_id, claim_one(client, task_id), result="done")
    assert_error(client.post(f"/task/{task_id}/cancel"), 409)
    assert_error(client.post(f"/task/{task_id}/retry"), 409)
    assert get_task(client, task_id)["status"] == "completed"


def test_cancel_and_retry_of_an_unknown_task_are_404(client):
    assert_error(client.post("/task/no-such-task/cancel"), 404)
    assert_error(client.post("/task/no-such-task/retry"), 404)


def test_stats_shape(client):
    submit(client)
    submit(client)
    claim(client)
    response = client.get("/stats")
    assert response.status_code == 200
    body = response.get_json()
    assert body["tasks"] == {
        "waiting": 0,
        "pending": 1,
        "in_progress": 1,
        "completed": 0,
        "failed": 0,
        "cancelled": 0,
    }
    assert body["workers"] == {"alive": 1, "dead": 0, "stopped": 0}


def test_stats_count_a_silent_worker_as_dead(client, clock):
    client.post("/heartbeat", json={"worker_id": "w1"})
    clock.now = T0 + 61  # WORKER_DEAD_AFTER is 60
    assert client.get("/stats").get_json()["workers"] == {"alive": 0, "dead": 1, "stopped": 0}
    [worker] = client.get("/workers").get_json()["workers"]
    assert worker["status"] == "dead"


def test_workers_lists_each_worker_with_its_tasks(client):
    task_id = submit(client)
    claim_one(client, task_id, "w1")
    response = client.get("/workers")
    assert response.status_code == 200
    [worker] = response.get_json()["workers"]
    assert worker["worker_id"] == "w1"
    assert worker["status"] == "alive"
    assert parse_time(worker["last_heartbeat"]) == parse_time(iso(T0))
    assert worker["current_tasks"] == [task_id]
    assert worker["attempts_completed"] == 0
    assert worker["attempts_failed"] == 0


def test_health(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


# -- bad input: a 4xx JSON error, and nothing stored --------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(primes_task(limit="10"), id="limit-as-string"),
        pytest.param(primes_task(max_retries=True), id="bool-max-retries"),
        pytest.param(primes_task(priority=1.5), id="fractional-priority"),
        pytest.param(primes_task(timeout="10"), id="timeout-as-string"),
        pytest.param(primes_task(timeout=0), id="zero-timeout"),
        pytest.param(primes_task(delay=-1), id="negative-delay"),
        pytest.param(primes_task(max_retries=-1), id="negative-max-retries"),
        pytest.param(primes_task(queue=""), id="empty-queue"),
        pytest.param(primes_task(queue=7), id="queue-as-number"),
        pytest.param(primes_task(idempotency_key=3), id="key-as-number"),
        pytest.param({"type": "nope", "payload": {}}, id="unknown-type"),
        pytest.param({"payload": {"limit": 10}}, id="missing-type"),
        pytest.param({"type": "primes", "payload": {}}, id="missing-payload-field"),
        pytest.param({"type": "primes"}, id="missing-payload"),
        pytest.param({"type": "primes", "payload": [10]}, id="payload-as-array"),
        pytest.param({"type": "primes", "payload": None}, id="payload-null"),
        pytest.param(primes_task(100_000_001), id="limit-above-primes-max-limit"),
        pytest.param({"type": "primes", "payload": {"limit": 10, "x": 1}}, id="unknown-field"),
        pytest.param(primes_task(colour="red"), id="unknown-top-level-field"),
        pytest.param({"type": "compute", "payload": {"operation": "sqrt", "value": 4}}, id="op"),
    ],
)
def test_a_bad_submission_is_400_and_stores_nothing(client, body):
    submit(client)
    assert_error(client.post("/submit-task", json=body), 400)
    assert stored(client) == 1


@pytest.mark.parametrize(
    "path", ["/submit-task", "/submit-tasks", "/get-task", "/submit-result", "/heartbeat"]
)
def test_a_malformed_json_body_is_400(client, path):
    submit(client)
    response = client.post(path, data='{"type": "primes",', content_type="application/json")
    assert_error(response, 400)
    assert stored(client) == 1


@pytest.mark.parametrize("path", ["/submit-task", "/submit-tasks", "/get-task", "/heartbeat"])
def test_a_json_array_body_is_400(client, path):
    submit(client)
    assert_error(client.post(path, json=[primes_task()]), 400)
    assert stored(client) == 1


def test_an_oversize_body_is_413_and_stores_nothing(client):
    submit(client)
    body = {"type": "fail", "payload": {"error_message": "x" * 1_048_577}}
    assert_error(client.post("/submit-task", json=body), 413)
    assert stored(client) == 1


def test_a_body_just_under_the_limit_is_accepted(make_client):
    client = make_client(max_request_bytes=2000)
    body = {"type": "fail", "payload": {"error_message": "x" * 1000}}
    assert client.post("/submit-task", json=body).status_code == 201
    body = {"type": "fail", "payload": {"error_message": "x" * 3000}}
    assert_error(client.post("/submit-task", json=body), 413)
    assert stored(client) == 1


def test_a_batch_above_max_batch_is_400(small_client):
    tasks = [primes_task()] * 6
    assert_error(small_client.post("/submit-tasks", json={"tasks": tasks}), 400)
    assert stored(small_client) == 0
    assert small_client.post("/submit-tasks", json={"tasks": tasks[:5]}).status_code == 201
    assert stored(small_client) == 5


def test_a_results_batch_above_max_batch_is_400(small_client):
    task_id = submit(small_client)
    lease = claim_one(small_client, task_id)
    item = {"task_id": task_id, "worker_id": "w1", "lease_token": lease, "status": "completed"}
    assert_error(small_client.post("/submit-results", json={"results": [item] * 6}), 400)
    assert get_task(small_client, task_id)["status"] == "in_progress"


def test_a_release_batch_above_max_batch_is_400(small_client):
    task_id = submit(small_client)
    lease = claim_one(small_client, task_id)
    items = [{"task_id": task_id, "lease_token": lease}] * 6
    assert_error(small_client.post("/release", json={"worker_id": "w1", "tasks": items}), 400)
    assert get_task(small_client, task_id)["status"] == "in_progress"


@pytest.mark.parametrize("max_tasks", [0, -1, 6, "2", 1.5, True])
def test_a_bad_max_tasks_is_400_and_claims_nothing(small_client, max_tasks):
    task_id = submit(small_client)
    response = small_client.post("/get-task", json={"worker_id": "w1", "max_tasks": max_tasks})
    assert_error(response, 400)
    assert get_task(small_client, task_id)["status"] == "pending"
    assert small_client.get("/workers").get_json()["workers"] == []


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"worker_id": ""}, id="empty-worker-id"),
        pytest.param({"worker_id": "   "}, id="blank-worker-id"),
        pytest.param({}, id="missing-worker-id"),
        pytest.param({"worker_id": 7}, id="worker-id-as-number"),
        pytest.param({"worker_id": "w1", "queues": []}, id="empty-queues"),
        pytest.param({"worker_id": "w1", "queues": "default"}, id="queues-as-string"),
        pytest.param({"worker_id": "w1", "wait": "1"}, id="wait-as-string"),
        pytest.param({"worker_id": "w1", "wait": -1}, id="negative-wait"),
    ],
)
def test_a_bad_claim_is_400_and_claims_nothing(client, fields):
    task_id = submit(client)
    assert_error(client.post("/get-task", json=fields), 400)
    assert get_task(client, task_id)["status"] == "pending"
    assert client.get("/workers").get_json()["workers"] == []


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"worker_id": ""}, id="empty-worker-id"),
        pytest.param({}, id="missing-worker-id"),
        pytest.param({"worker_id": "w1", "task_ids": "abc"}, id="task-ids-as-string"),
        pytest.param({"worker_id": "w1", "task_ids": [1]}, id="task-id-as-number"),
    ],
)
def test_a_bad_heartbeat_is_400_and_registers_nothing(client, fields):
    assert_error(client.post("/heartbeat", json=fields), 400)
    assert client.get("/workers").get_json()["workers"] == []


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"status": "done"}, id="unknown-status"),
        pytest.param({"lease_token": ""}, id="empty-lease"),
        pytest.param({"lease_token": None}, id="missing-lease"),
        pytest.param({"worker_id": ""}, id="empty-worker-id"),
        pytest.param({"error": 5, "status": "failed"}, id="error-as-number"),
    ],
)
def test_a_bad_result_is_400_and_changes_nothing(client, change):
    task_id = submit(client)
    lease = claim_one(client, task_id)
    body = {"task_id": task_id, "worker_id": "w1", "lease_token": lease, "status": "completed"}
    body.update(change)
    assert_error(client.post("/submit-result", json=body), 400)
    task = get_task(client, task_id)
    assert task["status"] == "in_progress"
    assert task["result"] is None


def test_submit_tasks_with_one_bad_item_is_400_and_stores_none(client):
    tasks = [primes_task(10), primes_task(-5), primes_task(20)]
    message = assert_error(client.post("/submit-tasks", json={"tasks": tasks}), 400)
    assert "tasks[1]" in message
    assert stored(client) == 0


@pytest.mark.parametrize("body", [{"tasks": []}, {"tasks": "x"}, {}, {"tasks": [5]}])
def test_submit_tasks_without_a_list_of_tasks_is_400(client, body):
    assert_error(client.post("/submit-tasks", json=body), 400)
    assert stored(client) == 0


def test_a_wrong_method_is_405_json(client):
    assert_error(client.get("/submit-task"), 405)
    assert_error(client.delete("/task/abc"), 405)
    assert stored(client) == 0


def test_an_unknown_route_is_404_json(client):
    assert_error(client.get("/no-such-endpoint"), 404)
    assert_error(client.post("/submit-everything", json={}), 404)


def test_a_deeply_nested_body_is_400_not_500(client):
    submit(client)
    body = "[" * 100_000 + "]" * 100_000
    assert_error(client.post("/submit-task", data=body, content_type="application/json"), 400)
    assert stored(client) == 1


HUGE = 10**400  # a valid JSON number that no float can hold


@pytest.mark.parametrize(
    "path,body",
    [
        pytest.param("/submit-task", primes_task(delay=HUGE), id="submit-task-delay"),
        pytest.param("/submit-task", primes_task(timeout=HUGE), id="submit-task-timeout"),
        pytest.param("/submit-tasks", {"tasks": [primes_task(delay=HUGE)]}, id="submit-tasks"),
        pytest.param("/get-task", {"worker_id": "w1", "wait": HUGE}, id="get-task-wait"),
    ],
)
def test_a_huge_number_is_400_not_500(client, path, body):
    task_id = submit(client)
    assert_error(client.post(path, json=body), 400)
    assert stored(client) == 1
    assert get_task(client, task_id)["status"] == "pending"


def test_a_lone_surrogate_in_a_payload_is_stored_or_refused_never_a_500(client):
    # "\ud800" is a legal JSON escape, but not a character UTF-8 can hold
    body = '{"type": "fail", "payload": {"error_message": "a\\ud800b"}}'
    response = client.post("/submit-task", data=body, content_type="application/json")
    assert response.status_code in (201, 400), response.get_data(as_text=True)
    assert stored(client) == (1 if response.status_code == 201 else 0)


def test_one_unstorable_result_does_not_sink_its_batch(client):
    good, odd = submit(client), submit(client)
    leases = {t["task_id"]: t["lease_token"] for t in claim(client, max_tasks=2)}
    items = [
        {"task_id": good, "worker_id": "w1", "lease_token": leases[good], "status": "completed"},
        {"task_id": odd, "worker_id": "w1", "lease_token": leases[odd], "status": "completed"},
    ]
    text = json.dumps({"results": items}).replace(
        '"status": "completed"}]', '"status": "completed", "result": "x\\ud800"}]'
    )
    assert "ud800" in text
    response = client.post("/submit-results", data=text, content_type="application/json")
    assert response.status_code == 200, response.get_data(as_text=True)
    answers = response.get_json()["results"]
    assert answers[0] == {"task_id": good, "status": "completed"}
    assert answers[1].get("status") == "completed" or answers[1].get("code") == 400
    assert get_task(client, good)["status"] == "completed"


def strict_json(text: str):
    """Parse as RFC 8259 JSON: NaN and Infinity are not JSON."""

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_a_result_holding_nan_never_makes_the_task_unreadable_as_json(client):
    task_id = submit(client)
    lease = claim_one(client, task_id)
    body = json.dumps(
        {"task_id": task_id, "worker_id": "w1", "lease_token": lease, "status": "completed"}
    )
    body = body[:-1] + ', "result": NaN}'
    response = client.post("/submit-result", data=body, content_type="application/json")
    assert response.status_code in (200, 400), response.get_data(as_text=True)
    strict_json(client.get(f"/task/{task_id}").get_data(as_text=True))
    strict_json(client.get("/tasks").get_data(as_text=True))


# -- API token ------------------------------------------------------------------------


@pytest.fixture
def token_client(make_client):
    return make_client(api_token="s3cret")


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-header"),
        pytest.param({"Authorization": "Bearer wrong"}, id="wrong-token"),
        pytest.param({"Authorization": "s3cret"}, id="no-bearer"),
        pytest.param({"Authorization": "Bearer s3cret2"}, id="longer-token"),
    ],
)
def test_without_the_right_token_every_endpoint_is_401(token_client, headers):
    good = {"Authorization": "Bearer s3cret"}
    assert_error(token_client.post("/submit-task", json=primes_task(), headers=headers), 401)
    assert_error(token_client.get("/stats", headers=headers), 401)
    assert_error(token_client.post("/get-task", json={"worker_id": "w"}, headers=headers), 401)
    assert_error(token_client.get("/task/abc", headers=headers), 401)
    stats = token_client.get("/stats", headers=good).get_json()
    assert sum(stats["tasks"].values()) == 0


def test_health_needs_no_token(token_client):
    response = token_client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_the_right_token_works(token_client):
    good = {"Authorization": "Bearer s3cret"}
    response = token_client.post("/submit-task", json=primes_task(), headers=good)
    assert response.status_code == 201
    task_id = response.get_json()["task_id"]
    response = token_client.get(f"/task/{task_id}", headers=good)
    assert response.status_code == 200
    assert response.get_json()["status"] == "pending"


# -- values that must survive the round trip ----------------------------------------


def test_a_payload_with_awkward_characters_comes_back_byte_for_byte(client):
    message = 'He said "hi"; DROP TABLE tasks; -- \' \\ ünïcödé 日本語 🚀 \x00 after NUL\n\ttab'
    body = {"type": "fail", "payload": {"error_message": message}}
    task_id = submit(client, body)
    assert get_task(client, task_id)["payload"] == {"error_message": message}
    [claimed] = claim(client)
    assert claimed["payload"]["error_message"] == message
    assert claimed["payload"]["error_message"].encode() == message.encode()


def test_an_awkward_error_message_comes_back_intact(client):
    error = 'quote " semicolon ; ünïcode ✓ NUL \x00 end'
    task_id = submit(client, primes_task(max_retries=0))
    lease = claim_one(client, task_id)
    send_result(client, task_id, lease, "failed", error=error)
    assert get_task(client, task_id)["error"] == error


def test_a_big_integer_result_round_trips_exactly(client):
    big = math.factorial(100)
    task_id = submit(
        client, {"type": "compute", "payload": {"operation": "factorial", "value": 100}}
    )
    lease = claim_one(client, task_id)
    result = {"operation": "factorial", "value": 100, "result": big}
    assert send_result(client, task_id, lease, result=result).status_code == 200
    response = client.get(f"/task/{task_id}")
    assert response.get_json()["result"]["result"] == big
    raw = json.loads(response.get_data(as_text=True))
    assert raw["result"]["result"] == big
    assert str(big) in response.get_data(as_text=True)


def test_a_json_body_without_a_content_type_is_accepted(client):
    body = json.dumps(primes_task())
    response = client.post("/submit-task", data=body)  # what plain `curl -d` sends
    assert response.status_code == 201, response.get_json()
    assert get_task(client, response.get_json()["task_id"])["payload"]["limit"] == 100


# -- found by schemathesis and the OpenAPI document (tests/integration/test_schemathesis.py)


def test_a_405_names_the_allowed_methods_in_an_allow_header(client):
    response = client.delete("/task/abc")
    assert_error(response, 405)
    assert set(response.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "HEAD"}
    assert "POST" in client.get("/submit-task").headers["Allow"]


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param('"queues": ["a\\ud800"]', id="queue"),
        pytest.param('"queues": ["default", "\\udc00"], "wait": 0.1', id="queue-with-wait"),
    ],
)
def test_a_lone_surrogate_in_a_queue_name_is_400_not_500(client, fields):
    task_id = submit(client)
    body = '{"worker_id": "w1", ' + fields + "}"
    message = assert_error(
        client.post("/get-task", data=body, content_type="application/json"), 400
    )
    assert "'queues'" in message
    assert get_task(client, task_id)["status"] == "pending"


def test_a_lone_surrogate_in_heartbeat_task_ids_is_400_not_500(client):
    task_id = submit(client)
    claim_one(client, task_id)
    body = '{"worker_id": "w1", "task_ids": ["' + task_id + '", "x\\ud800"]}'
    message = assert_error(
        client.post("/heartbeat", data=body, content_type="application/json"), 400
    )
    assert "'task_ids'" in message
    assert get_task(client, task_id)["status"] == "in_progress"


def test_more_queues_than_allowed_is_400(client):
    from dispatcher.parse import MAX_QUEUES

    queues = [f"q{i}" for i in range(MAX_QUEUES + 1)]
    assert_error(client.post("/get-task", json={"worker_id": "w1", "queues": queues}), 400)
    assert client.get("/workers").get_json()["workers"] == []
    assert claim(client, queues=queues[:MAX_QUEUES]) == []


def test_a_whole_number_written_with_a_fraction_is_a_whole_number(client):
    # JSON has one number type: 3.0 is the integer 3 (JSON Schema agrees)
    task_id = submit(client, primes_task(priority=3.0, max_retries=2.0))
    task = get_task(client, task_id)
    assert (task["priority"], task["max_retries"]) == (3, 2)
    assert isinstance(task["priority"], int)
    [claimed] = claim(client, max_tasks=2.0)
    assert claimed["task_id"] == task_id
    assert client.get("/tasks?limit=1.0&offset=0.0").get_json()["limit"] == 1


@pytest.mark.parametrize("query", ["offset=0.5", "limit=2.5", "offset=abc", "limit=inf"])
def test_a_fractional_or_non_numeric_limit_or_offset_is_400(client, query):
    submit(client)
    message = assert_error(client.get(f"/tasks?{query}"), 400)
    assert "whole number" in message


def nested(depth: int):
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_a_result_nested_too_deep_is_400_and_the_task_stays_readable(client):
    from dispatcher.parse import MAX_DEPTH

    task_id = submit(client)
    lease = claim_one(client, task_id)
    message = assert_error(send_result(client, task_id, lease, result=nested(MAX_DEPTH + 1)), 400)
    assert "'result'" in message
    assert get_task(client, task_id)["status"] == "in_progress"
    assert send_result(client, task_id, lease, result=nested(MAX_DEPTH)).status_code == 200
    assert client.get("/tasks").status_code == 200
    assert get_task(client, task_id)["result"] == nested(MAX_DEPTH)


def test_the_deepest_result_the_parser_takes_is_refused_and_listing_still_works(client):
    # Was: a result nested as deep as the JSON parser allows (~980 levels) was stored, and
    # then every GET /tasks, which nests it 3 levels further, failed to encode it: a 500.
    task_id = submit(client)
    lease = claim_one(client, task_id)
    head = json.dumps(
        {"task_id": task_id, "worker_id": "w1", "lease_token": lease, "status": "completed"}
    )[:-1]
    for depth in range(1000, 800, -1):  # the deepest body the parser reads
        body = f'{head}, "result": {"[" * depth}{"]" * depth}}}'
        response = client.post("/submit-result", data=body, content_type="application/json")
        if "nested too deeply" not in response.get_data(as_text=True):
            break
    assert "'result' is nested more than" in assert_error(response, 400)
    assert client.get("/tasks").status_code == 200
    assert get_task(client, task_id)["status"] == "in_progress"


def test_a_payload_nested_too_deep_is_400_for_a_type_that_accepts_any_object(client, monkeypatch):
    from dispatcher.parse import MAX_DEPTH
    from tasks import TaskType, accept_object, registry

    monkeypatch.setitem(registry._types, "anything", TaskType("anything", accept_object, print))
    body = {"type": "anything", "payload": {"x": nested(MAX_DEPTH)}}
    assert_error(client.post("/submit-task", json=body), 400)
    assert stored(client) == 0
    body = {"type": "anything", "payload": {"x": nested(MAX_DEPTH - 1)}}
    task_id = submit(client, body)
    [claimed] = claim(client)
    assert claimed["payload"] == {"x": nested(MAX_DEPTH - 1)}
    assert get_task(client, task_id)["status"] == "in_progress"


@pytest.mark.parametrize("bad_id", [{"a": 1}, [1, 2], 7, None])
def test_submit_results_echoes_a_task_id_only_when_it_is_a_string(client, bad_id):
    item = {"task_id": bad_id, "worker_id": "w1", "lease_token": "x", "status": "completed"}
    response = client.post("/submit-results", json={"results": [item]})
    assert response.status_code == 200
    [answer] = response.get_json()["results"]
    assert answer["task_id"] is None
    assert answer["code"] == 400


@pytest.mark.parametrize("key", ["worker_id", "lease_token", "task_id"])
def test_an_id_of_python_white_space_only_is_400(client, key):
    # "\x1d" is white space to Python's str.strip(); the document's pattern says the same
    task_id = submit(client)
    lease = claim_one(client, task_id)
    body = {"task_id": task_id, "worker_id": "w1", "lease_token": lease, "status": "completed"}
    body[key] = "\x1d\u3000"
    assert_error(client.post("/submit-result", json=body), 400)
    assert get_task(client, task_id)["status"] == "in_progress"


@pytest.mark.parametrize(
    ("path", "body", "key"),
    [
        ("/get-task", {"worker_id": "w\u00001"}, "'worker_id'"),
        ("/get-task", {"worker_id": "w1", "queues": ["de\u0000fault"]}, "'queues'"),
        (
            "/submit-task",
            {"type": "sleep", "payload": {"duration": 1}, "idempotency_key": "k\u0000"},
            "'idempotency_key'",
        ),
        (
            "/submit-task",
            {"type": "sleep", "payload": {"duration": 1}, "queue": "q\u0000"},
            "'queue'",
        ),
    ],
)
def test_a_nul_character_in_an_id_name_or_key_is_400_on_every_backend(client, path, body, key):
    task_id = submit(client)
    message = assert_error(client.post(path, json=body), 400)
    assert key in message and "NUL" in message
    assert get_task(client, task_id)["status"] == "pending"
    assert client.get("/stats").get_json()["tasks"]["pending"] == 1
