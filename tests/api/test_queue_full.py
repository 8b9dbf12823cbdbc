"""MAX_PENDING_TASKS through HTTP: a submission that would take the pending count past
it is 429 with Retry-After and a JSON error naming the limit, and stores nothing."""

from __future__ import annotations

import pytest

from common.config import Config
from dispatcher.app import create_app

T0 = 1_700_000_000.0
TASK = {"type": "sleep", "payload": {"duration": 1}}


@pytest.fixture
def client(tmp_path):
    config = Config(database_url=f"sqlite:///{tmp_path}/tasks.db", max_pending_tasks=3)
    app = create_app(config, clock=lambda: T0, background=False)
    yield app.test_client()
    context = app.extensions["taskqueue"]
    context.wakeup.stop()
    context.storage.close()


def pending(client) -> int:
    return client.get("/stats").get_json()["tasks"]["pending"]


def test_a_full_queue_answers_429_with_retry_after_and_stores_nothing(client):
    assert client.post("/submit-tasks", json={"tasks": [TASK, TASK]}).status_code == 201
    assert client.post("/submit-task", json=TASK).status_code == 201  # at the limit

    refused = client.post("/submit-task", json=TASK)
    assert refused.status_code == 429, refused.get_json()
    assert refused.headers["Retry-After"] == "1"
    assert refused.get_json() == {
        "error": "the queue holds 3 pending tasks, the limit (MAX_PENDING_TASKS) is 3: "
        "try again later"
    }
    assert pending(client) == 3


def test_a_batch_that_would_cross_the_limit_is_refused_whole(client):
    assert client.post("/submit-task", json=TASK).status_code == 201
    refused = client.post("/submit-tasks", json={"tasks": [TASK, TASK, TASK]})
    assert refused.status_code == 429, refused.get_json()
    assert "Retry-After" in refused.headers
    assert "adds 3" in refused.get_json()["error"]
    assert "MAX_PENDING_TASKS" in refused.get_json()["error"]
    assert pending(client) == 1
    assert client.post("/submit-tasks", json={"tasks": [TASK, TASK]}).status_code == 201


def test_an_idempotent_repeat_is_not_refused_by_a_full_queue(client):
    keyed = {**TASK, "idempotency_key": "once"}
    first = client.post("/submit-task", json=keyed)
    assert first.status_code == 201
    client.post("/submit-tasks", json={"tasks": [TASK, TASK]})
    again = client.post("/submit-task", json=keyed)
    assert again.status_code == 200, again.get_json()
    assert again.get_json()["task_id"] == first.get_json()["task_id"]
    assert client.post("/submit-task", json=TASK).status_code == 429
