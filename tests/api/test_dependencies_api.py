"""Dependencies through the HTTP API (Flask's test client, a fresh SQLite file, a clock
the test moves): depends_on and "#N" on submissions, the 400s, status waiting in
/stats and GET /tasks, the claim's dependencies, GET /task's depends_on and dependents."""

from __future__ import annotations

import pytest

from tests.api import test_api
from tests.api.test_api import (
    assert_error,
    claim,
    get_task,
    primes_task,
    send_result,
    stored,
    submit,
)

clock, make_client, client = test_api.clock, test_api.make_client, test_api.client  # fixtures


def batch(client, *tasks: dict) -> list[str]:
    response = client.post("/submit-tasks", json={"tasks": list(tasks)})
    assert response.status_code == 201, response.get_json()
    return response.get_json()["task_ids"]


def test_a_chain_in_one_batch_runs_in_order_with_results(client):
    a, b = batch(client, primes_task(), primes_task(depends_on=["#0"]))
    assert get_task(client, b)["status"] == "waiting"
    assert get_task(client, b)["depends_on"] == [a]
    assert get_task(client, a)["dependents"] == [b]
    stats = client.get("/stats").get_json()
    assert stats["tasks"]["waiting"] == 1 and stats["queues"]["default"]["waiting"] == 1
    listed = client.get("/tasks?status=waiting").get_json()["tasks"]
    assert [t["task_id"] for t in listed] == [b]
    [task] = claim(client, max_tasks=5)
    assert task["task_id"] == a and "dependencies" not in task
    assert send_result(client, a, task["lease_token"], result=[2, 3]).status_code == 200
    [task] = claim(client, max_tasks=5)
    assert task["task_id"] == b and task["dependencies"] == {a: [2, 3]}


def test_submit_task_answers_the_status_it_stored(client):
    a = submit(client)
    response = client.post("/submit-task", json=primes_task(depends_on=[a]))
    assert response.status_code == 201
    assert response.get_json()["status"] == "waiting"
    client.post(f"/task/{a}/cancel")
    response = client.post("/submit-task", json=primes_task(depends_on=[a]))
    assert response.get_json()["status"] == "cancelled"
    b = response.get_json()["task_id"]
    assert get_task(client, b)["error"] == f"dependency {a} was cancelled"


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        (
            [primes_task(depends_on=["#0"])],
            "tasks[0]: 'depends_on': '#0': the batch's first task can depend on none of the batch",
        ),
        (
            [primes_task(), primes_task(depends_on=["#00"])],
            "tasks[1]: 'depends_on': '#00' is not an earlier task of this batch (\"#0\" to \"#0\")",
        ),
        (
            [primes_task(), primes_task(depends_on=["#1"])],
            "tasks[1]: 'depends_on': '#1' is not an earlier task of this batch (\"#0\" to \"#0\")",
        ),
        (
            [primes_task(), primes_task(), primes_task(depends_on=["#x"])],
            "tasks[2]: 'depends_on': '#x' is not an earlier task of this batch (\"#0\" to \"#1\")",
        ),
        (
            [primes_task(), primes_task(depends_on=["0" * 32])],
            f"tasks[1]: 'depends_on': task {'0' * 32} not found",
        ),
        (
            [primes_task(depends_on=["a"] * 101)],
            "tasks[0]: 'depends_on' holds 101 items; at most 100 per call",
        ),
        ([primes_task(depends_on=[""])], "tasks[0]: 'depends_on[0]' must be a non-empty string"),
        ([primes_task(depends_on="x")], "tasks[0]: 'depends_on' must be a list"),
    ],
)
def test_a_bad_depends_on_is_a_400_and_stores_nothing(client, tasks, message):
    submit(client)
    error = assert_error(client.post("/submit-tasks", json={"tasks": tasks}), 400)
    assert error == message
    assert stored(client) == 1


def test_batch_references_are_refused_outside_a_batch(client):
    error = assert_error(client.post("/submit-task", json=primes_task(depends_on=["#0"])), 400)
    assert error == (
        "'depends_on': '#0' names a task of the same batch; only POST /submit-tasks has one"
    )
    missing = "f" * 32
    error = assert_error(client.post("/submit-task", json=primes_task(depends_on=[missing])), 400)
    assert error == f"'depends_on': task {missing} not found"
    assert stored(client) == 0


def test_a_nul_in_depends_on_is_a_400(client):
    error = assert_error(client.post("/submit-task", json=primes_task(depends_on=["a\x00"])), 400)
    assert "depends_on" in error


def test_cancel_of_a_waiting_task_and_the_cascade(client):
    a, b, c = batch(
        client, primes_task(), primes_task(depends_on=["#0"]), primes_task(depends_on=["#1"])
    )
    response = client.post(f"/task/{b}/cancel")
    assert response.status_code == 200, response.get_json()
    got = get_task(client, c)
    assert (got["status"], got["error"], got["attempts"]) == (
        "cancelled",
        f"dependency {b} was cancelled",
        0,
    )
    assert get_task(client, a)["status"] == "pending"
    error = assert_error(client.post(f"/task/{c}/retry"), 409)
    assert error == f"task {c} depends on task {b}, which is cancelled: retry that one first"
