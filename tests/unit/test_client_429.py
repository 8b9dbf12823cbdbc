"""The client tries a call answered 429 again after Retry-After, for a bounded time
(the worker's client and add_task.py use it): against a real dispatcher whose queue is
full (MAX_PENDING_TASKS). Waiting is the `pause` callback, so no test sleeps."""

from __future__ import annotations

import threading

import pytest
from served_dispatcher import ServedDispatcher

from common.client import ApiError, Client
from worker.worker import RETRY_429_FOR, Worker

TASK = {"type": "sleep", "payload": {"duration": 0.1}}


@pytest.fixture
def full(tmp_path):
    """A dispatcher whose queue holds one pending task, its limit."""
    served = ServedDispatcher(tmp_path, max_pending_tasks=1)
    served.submit("sleep", {"duration": 0.1})
    yield served
    served.close()


def test_a_429_is_tried_again_after_retry_after_and_then_succeeds(full):
    waits: list[tuple[int, float]] = []

    def pause(seconds: float) -> bool:  # the queue drains while the client waits
        full.client.get_task("w1", "", ("default",), wait=0, max_tasks=1)
        return False

    client = Client(
        full.url, retry_429_for=30, pause=pause, on_429=lambda e, s: waits.append((e.status, s))
    )
    task_id = client.submit_task(TASK)
    assert full.task(task_id)["status"] == "pending"
    assert [status for status, _ in waits] == [429]
    assert 1.0 <= waits[0][1] <= 30  # Retry-After: 1, with a little jitter


def test_the_retries_are_bounded_then_the_429_is_raised(full):
    waits: list[float] = []

    def pause(seconds: float) -> bool:  # the real wait, never past the bound
        waits.append(seconds)
        return threading.Event().wait(seconds)

    client = Client(full.url, retry_429_for=0.3, pause=pause)
    with pytest.raises(ApiError) as refused:
        client.submit_task(TASK)
    assert refused.value.status == 429 and refused.value.retry_after == 1.0
    assert "MAX_PENDING_TASKS" in refused.value.message
    assert len(waits) == 1 and waits[0] < 1.0  # what was left of the bound, not Retry-After
    assert full.client.stats()["tasks"]["pending"] == 1


def test_without_retry_429_for_a_429_is_raised_at_once(full):
    client = Client(full.url, pause=lambda seconds: pytest.fail("waited"))
    with pytest.raises(ApiError) as refused:
        client.submit_task(TASK)
    assert refused.value.status == 429


def test_pause_returning_true_stops_the_retries(full):
    calls: list[float] = []

    def stopping(seconds: float) -> bool:
        calls.append(seconds)
        return True  # a stopping worker waits no more

    client = Client(full.url, retry_429_for=30, pause=stopping)
    with pytest.raises(ApiError):
        client.submit_task(TASK)
    assert len(calls) == 1


def test_every_client_of_the_worker_retries_429(full):
    worker = Worker(full.worker_config(), "w1")  # not run: its clients are what is checked
    client = worker._client()
    assert client.retry_429_for == RETRY_429_FOR > 0
    assert client._pause == worker.stopping.wait  # a stopping worker does not wait
