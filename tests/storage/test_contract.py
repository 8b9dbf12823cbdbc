"""The storage contract, one suite for every backend: a real SQLite file, and a fresh
schema of a real PostgreSQL server (TEST_DATABASE_URL; see tests/pg.py for what
happens when it cannot be reached).

Time never passes by itself here: every operation gets `now`, and tests move it by
passing a bigger number. T0 is the moment each test starts.
"""

from __future__ import annotations

import math
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from common.config import Config
from dispatcher.errors import (
    Conflict,
    LeaseConflict,
    QueueFull,
    TaskNotFound,
    WorkerStopping,
    WorkerTakenOver,
    http_status,
)
from dispatcher.storage import Moved, NewTask, Result, open_storage
from dispatcher.storage.core import DELETE_BATCH
from dispatcher.storage.sqlite import SCHEMA_VERSION
from tests.pg import fresh_schema_url

T0 = 1_700_000_000.0
LEASE = 30.0  # every claim and heartbeat below leases for this long unless it says otherwise
FOREVER = 10.0**9  # a dead_after no worker reaches


def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/tasks.db"  # an absolute path: four slashes in all


@pytest.fixture(params=["sqlite", "postgres"])
def config(request, tmp_path):
    if request.param == "sqlite":
        yield Config(database_url=sqlite_url(tmp_path))
    else:
        with fresh_schema_url() as url:  # dropped after the storage is closed
            yield Config(database_url=url)


@pytest.fixture
def sqlite_config(tmp_path) -> Config:  # for what only SQLite has: the file, PRAGMAs
    return Config(database_url=sqlite_url(tmp_path))


@pytest.fixture
def storage(config):
    store = open_storage(config)
    yield store
    store.close()


def new_task(type_: str = "sleep", payload: dict | None = None, **options) -> NewTask:
    return NewTask(type=type_, payload={"duration": 1} if payload is None else payload, **options)


def submit(storage, now: float = T0, **options) -> str:
    [(task_id, created)] = storage.submit([new_task(**options)], now=now)
    assert created
    return task_id


def claim(
    storage,
    worker: str = "w1",
    now: float = T0,
    max_tasks: int = 1,
    queues: tuple[str, ...] = ("default",),
    instance: str = "",
    lease_s: float = LEASE,
) -> list[dict]:
    return storage.claim(
        worker, instance, queues=queues, max_tasks=max_tasks, now=now, lease_s=lease_s
    )


def claim_one(storage, task_id: str, worker: str = "w1", now: float = T0, **options) -> str:
    """Claim the next task, check it is `task_id`, and return its lease token."""
    [claimed] = claim(storage, worker, now, **options)
    assert claimed["task_id"] == task_id
    return claimed["lease_token"]


def finish(
    storage,
    task_id: str,
    lease_token: str,
    status: str = "completed",
    result=None,
    error: str | None = None,
    worker: str = "w1",
    now: float = T0 + 1,
):
    item = Result(task_id, lease_token, worker, status, result=result, error=error)
    [outcome] = storage.finish([item], now=now)
    return outcome


def reap(storage, now: float, dead_after: float = FOREVER, retention_s: float = 0.0):
    return storage.reap(now=now, dead_after=dead_after, retention_s=retention_s)


def heartbeat(storage, worker="w1", task_ids=None, now=T0, instance="", lease_s=LEASE):
    return storage.heartbeat(worker, instance, task_ids, now=now, lease_s=lease_s)


def total(storage) -> int:
    return sum(storage.stats(now=T0, dead_after=FOREVER)["tasks"].values())


@pytest.fixture
def pending_task(storage) -> str:  # submitted at T0, three retries
    return submit(storage, max_retries=3)


@pytest.fixture
def claimed_task(storage, pending_task) -> tuple[str, str]:
    # held by worker w1 since T0 under a 30-second lease: (task_id, lease_token)
    return pending_task, claim_one(storage, pending_task)


def expire_and_reclaim(storage, task_id: str, worker: str = "w2") -> str:
    """The lease taken at T0 expires; `worker` claims the task at T0 + 32."""
    assert reap(storage, now=T0 + 31).expired == [task_id]
    return claim_one(storage, task_id, worker, now=T0 + 32)


# -- submission -----------------------------------------------------------------------


def test_submit_gives_each_task_its_own_id(storage):
    answers = storage.submit([new_task(), new_task(), new_task()], now=T0)
    assert [created for _, created in answers] == [True, True, True]
    assert len({task_id for task_id, _ in answers}) == 3


def test_a_submitted_task_is_pending_with_its_payload_intact(storage):
    payload = {"text": 'a "quoted"; value ünïcode \x00 end', "nested": {"list": [1, 2.5, None]}}
    task_id = submit(storage, type_="custom", payload=payload, queue="q1", priority=4)
    task = storage.get(task_id)
    assert task["payload"] == payload
    assert task["type"] == "custom"
    assert task["queue"] == "q1"
    assert task["priority"] == 4
    assert task["status"] == "pending"
    assert task["attempts"] == 0
    assert task["result"] is None
    assert task["error"] is None
    assert task["created_at"] == T0
    assert task["history"] == []


def test_a_repeated_idempotency_key_returns_the_first_task_and_stores_nothing(storage):
    [(first, created)] = storage.submit([new_task(idempotency_key="k1")], now=T0)
    assert created
    again = new_task(payload={"duration": 99}, idempotency_key="k1")
    assert storage.submit([again], now=T0 + 5) == [(first, False)]
    assert total(storage) == 1
    assert storage.get(first)["payload"] == {"duration": 1}


def test_a_key_repeated_inside_one_batch_stores_one_task(storage):
    answers = storage.submit(
        [new_task(idempotency_key="k"), new_task(idempotency_key="k"), new_task()], now=T0
    )
    assert answers[1] == (answers[0][0], False)
    assert answers[0][1] and answers[2][1]
    assert total(storage) == 2


# -- claiming -------------------------------------------------------------------------


def test_one_claim_hands_out_max_tasks_each_under_its_own_lease(storage):
    for _ in range(5):
        submit(storage)
    claimed = claim(storage, max_tasks=3)
    assert len(claimed) == 3
    assert len({c["task_id"] for c in claimed}) == 3
    assert len({c["lease_token"] for c in claimed}) == 3
    for c in claimed:
        assert c["attempt"] == 1
        assert c["type"] == "sleep"
        assert c["payload"] == {"duration": 1}
        assert c["timeout"] == 300.0
        assert c["lease_expires_at"] == T0 + LEASE
        task = storage.get(c["task_id"])
        assert task["status"] == "in_progress"
        assert task["worker_id"] == "w1"
        assert task["attempts"] == 1


def test_successive_claims_never_hand_out_the_same_task_twice(storage):
    submitted = {submit(storage) for _ in range(5)}
    seen = []
    for worker in ("w1", "w2", "w3", "w4"):
        seen += [c["task_id"] for c in claim(storage, worker, max_tasks=2)]
    assert sorted(seen) == sorted(submitted)
    assert claim(storage, "w5", max_tasks=2) == []


def test_higher_priority_is_claimed_first_then_the_oldest(storage):
    low_old = submit(storage, now=T0, priority=0)
    high_new = submit(storage, now=T0 + 2, priority=5)
    high_old = submit(storage, now=T0 + 1, priority=5)
    low_new = submit(storage, now=T0 + 3, priority=0)
    order = [claim(storage, now=T0 + 10)[0]["task_id"] for _ in range(4)]
    assert order == [high_old, high_new, low_old, low_new]


def test_one_claim_of_many_tasks_lists_them_in_priority_order(storage):
    low = submit(storage, now=T0, priority=-1)
    high = submit(storage, now=T0 + 1, priority=9)
    middle = submit(storage, now=T0 + 2, priority=3)
    claimed = claim(storage, now=T0 + 10, max_tasks=3)
    assert [c["task_id"] for c in claimed] == [high, middle, low]


def test_a_delayed_task_is_not_claimed_before_its_time(storage):
    task_id = submit(storage, now=T0, delay=10.0)
    assert claim(storage, now=T0 + 9.9) == []
    assert storage.get(task_id)["status"] == "pending"
    claim_one(storage, task_id, now=T0 + 10)


def test_a_delayed_task_does_not_block_ready_ones_behind_it(storage):
    submit(storage, now=T0, delay=60.0, priority=9)
    ready = submit(storage, now=T0 + 1)
    claim_one(storage, ready, now=T0 + 2)


def test_claims_take_queues_in_the_given_order(storage):
    low = submit(storage, now=T0, queue="low")
    high = submit(storage, now=T0 + 1, queue="high")
    elsewhere = submit(storage, now=T0, queue="other")
    later = T0 + 10
    assert [c["task_id"] for c in claim(storage, queues=("high", "low"), now=later)] == [high]
    assert [c["task_id"] for c in claim(storage, queues=("high", "low"), now=later)] == [low]
    assert claim(storage, queues=("high", "low"), now=later) == []
    assert storage.get(elsewhere)["status"] == "pending"


def test_one_claim_fills_up_from_the_next_queue(storage):
    first = submit(storage, now=T0 + 1, queue="a")
    second = submit(storage, now=T0, queue="b")
    claimed = claim(storage, queues=("a", "b"), max_tasks=5, now=T0 + 10)
    assert [c["task_id"] for c in claimed] == [first, second]


# -- completing -----------------------------------------------------------------------


def test_completing_with_the_current_lease_stores_the_result(storage, claimed_task):
    task_id, lease = claimed_task
    assert finish(storage, task_id, lease, result={"answer": 42}, now=T0 + 5) == "completed"
    task = storage.get(task_id)
    assert task["status"] == "completed"
    assert task["result"] == {"answer": 42}
    assert task["error"] is None
    assert task["attempts"] == 1
    assert task["started_at"] == T0
    assert task["finished_at"] == T0 + 5


def test_a_big_integer_result_comes_back_exact(storage, claimed_task):
    task_id, lease = claimed_task
    big = math.factorial(1000)  # 2,568 digits: no 64-bit integer, no float
    result = {"value": big, "negative": -big, "small": 1, "float": 0.1, "huge": 1e300}
    assert finish(storage, task_id, lease, result=result) == "completed"
    stored = storage.get(task_id)["result"]
    assert stored == result
    assert type(stored["value"]) is int and type(stored["huge"]) is float


def test_the_same_result_sent_again_for_the_same_lease_is_harmless(storage, claimed_task):
    task_id, lease = claimed_task
    assert finish(storage, task_id, lease, result=[1, 2], now=T0 + 1) == "completed"
    assert finish(storage, task_id, lease, result=[1, 2], now=T0 + 2) == "completed"
    task = storage.get(task_id)
    assert task["result"] == [1, 2]
    assert task["finished_at"] == T0 + 1


def test_a_result_for_a_task_finished_under_another_lease_is_refused(storage, claimed_task):
    task_id, first_lease = claimed_task
    second_lease = expire_and_reclaim(storage, task_id, "w2")
    assert finish(storage, task_id, second_lease, result="w2", worker="w2") == "completed"
    outcome = finish(storage, task_id, first_lease, result="w1", now=T0 + 40)
    assert isinstance(outcome, LeaseConflict)
    assert http_status(outcome) == 409
    task = storage.get(task_id)
    assert task["status"] == "completed"
    assert task["result"] == "w2"


def test_a_forged_lease_token_is_refused(storage, claimed_task):
    task_id, lease = claimed_task
    outcome = finish(storage, task_id, "0" * len(lease), result="forged")
    assert isinstance(outcome, LeaseConflict)
    task = storage.get(task_id)
    assert task["status"] == "in_progress"
    assert task["result"] is None


def test_a_forged_lease_token_cannot_finish_a_pending_task(storage, pending_task):
    outcome = finish(storage, pending_task, "f" * 32, result="forged")
    assert isinstance(outcome, LeaseConflict)
    assert storage.get(pending_task)["status"] == "pending"


def test_a_result_for_an_unknown_task_is_not_found(storage):
    outcome = finish(storage, "no-such-task", "a" * 32)
    assert isinstance(outcome, TaskNotFound)
    assert http_status(outcome) == 404


def test_each_result_of_a_batch_is_judged_alone(storage):
    first, second = submit(storage), submit(storage)
    [a, b] = claim(storage, max_tasks=2)
    results = [
        Result(first, a["lease_token"], "w1", "completed", result=1),
        Result("missing", "x" * 32, "w1", "completed"),
        Result(second, "forged", "w1", "completed"),
        Result(second, b["lease_token"], "w1", "failed", error="boom"),
    ]
    outcomes = storage.finish(results, now=T0 + 1)
    assert outcomes[0] == "completed"
    assert isinstance(outcomes[1], TaskNotFound)
    assert isinstance(outcomes[2], LeaseConflict)
    assert outcomes[3] == "pending"
    assert storage.get(first)["result"] == 1


def test_a_late_result_from_an_expired_lease_wins_while_the_task_runs_again(storage, claimed_task):
    task_id, first_lease = claimed_task
    second_lease = expire_and_reclaim(storage, task_id, "w2")
    assert finish(storage, task_id, first_lease, result="first", now=T0 + 33) == "completed"
    outcome = finish(storage, task_id, second_lease, result="second", worker="w2", now=T0 + 34)
    assert isinstance(outcome, LeaseConflict)
    task = storage.get(task_id)
    assert task["status"] == "completed"
    assert task["result"] == "first"
    assert heartbeat(storage, "w2", [task_id], now=T0 + 35) == [task_id]


def test_a_finished_task_has_no_attempt_left_open(storage, claimed_task):
    # the late result of attempt 1 wins while attempt 2 runs: the task is finished, so
    # its history must not show attempt 2 as still running
    task_id, first_lease = claimed_task
    expire_and_reclaim(storage, task_id, "w2")
    assert finish(storage, task_id, first_lease, result="first", now=T0 + 33) == "completed"
    history = storage.get(task_id)["history"]
    assert [a["attempt"] for a in history] == [1, 2]
    assert all(a["outcome"] is not None for a in history), history
    assert all(a["finished_at"] is not None for a in history), history


# -- failing --------------------------------------------------------------------------


def test_a_failure_with_retries_left_goes_back_to_pending_after_a_back_off(storage, claimed_task):
    task_id, lease = claimed_task
    assert finish(storage, task_id, lease, "failed", error="boom", now=T0 + 1) == "pending"
    task = storage.get(task_id)
    assert task["status"] == "pending"
    assert task["run_at"] > T0 + 1
    assert task["attempts"] == 1
    assert task["error"] == "boom"
    assert claim(storage, now=T0 + 1) == []  # not before the back-off
    [again] = claim(storage, "w2", now=T0 + 1 + 300)  # RETRY_BACKOFF_CAP is 300
    assert again["task_id"] == task_id
    assert again["attempt"] == 2


def test_a_failure_on_the_last_attempt_ends_failed_with_its_error(storage):
    task_id = submit(storage, max_retries=0)
    lease = claim_one(storage, task_id)
    assert finish(storage, task_id, lease, "failed", error="boom", now=T0 + 2) == "failed"
    task = storage.get(task_id)
    assert task["status"] == "failed"
    assert task["error"] == "boom"
    assert task["attempts"] == 1
    assert task["finished_at"] == T0 + 2
    assert claim(storage, now=T0 + 1000) == []


def test_the_same_failure_sent_again_for_the_same_lease_is_harmless(storage):
    task_id = submit(storage, max_retries=0)
    lease = claim_one(storage, task_id)
    assert finish(storage, task_id, lease, "failed", error="boom") == "failed"
    assert finish(storage, task_id, lease, "failed", error="boom") == "failed"


def test_finished_among_gives_the_finished_tasks_as_get_does_and_the_unknown_ids(storage):
    done = submit(storage, max_retries=1)
    failed = submit(storage, max_retries=0)
    running = submit(storage)
    cancelled = submit(storage)
    waiting = submit(storage)
    finish(storage, done, claim_one(storage, done), result={"n": 1})
    finish(storage, failed, claim_one(storage, failed), "failed", error="boom")
    claim_one(storage, running)
    storage.cancel(cancelled, now=T0 + 2)
    asked = [waiting, cancelled, "nope", running, failed, done, "x\x00y"]
    tasks, missing = storage.finished_among(asked)
    assert [t["task_id"] for t in tasks] == [cancelled, failed, done]  # in the order asked
    assert tasks == [storage.get(t) for t in (cancelled, failed, done)]  # with history
    assert tasks[1]["history"][0]["error"] == "boom"
    assert missing == ["nope", "x\x00y"]
    assert storage.finished_among([waiting, running]) == ([], [])


def test_history_lists_every_attempt_with_its_outcome_and_error(storage):
    task_id = submit(storage, max_retries=2)
    first = claim_one(storage, task_id, "w1", now=T0)
    assert finish(storage, task_id, first, "failed", error="first", now=T0 + 1) == "pending"
    second = claim_one(storage, task_id, "w2", now=T0 + 100)
    assert reap(storage, now=T0 + 100 + LEASE + 1).expired == [task_id]
    third = claim_one(storage, task_id, "w3", now=T0 + 200)
    outcome = finish(storage, task_id, third, "failed", error="third", worker="w3", now=T0 + 201)
    assert outcome == "failed"
    assert second != third
    assert storage.get(task_id)["history"] == [
        {
            "attempt": 1,
            "worker_id": "w1",
            "started_at": T0,
            "finished_at": T0 + 1,
            "outcome": "failed",
            "error": "first",
        },
        {
            "attempt": 2,
            "worker_id": "w2",
            "started_at": T0 + 100,
            "finished_at": T0 + 100 + LEASE + 1,
            "outcome": "expired",
            "error": "lease expired",
        },
        {
            "attempt": 3,
            "worker_id": "w3",
            "started_at": T0 + 200,
            "finished_at": T0 + 201,
            "outcome": "failed",
            "error": "third",
        },
    ]


# -- lease expiry ---------------------------------------------------------------------


def test_an_expired_lease_goes_back_to_pending(storage, claimed_task):
    task_id, _ = claimed_task
    assert reap(storage, now=T0 + 29).expired == []
    assert storage.get(task_id)["status"] == "in_progress"
    assert reap(storage, now=T0 + 31).expired == [task_id]
    task = storage.get(task_id)
    assert task["status"] == "pending"
    assert task["error"] == "lease expired"
    assert task["attempts"] == 1
    [again] = claim(storage, "w2", now=T0 + 31)
    assert again["task_id"] == task_id
    assert again["attempt"] == 2


def test_an_expired_lease_on_the_last_attempt_ends_failed(storage):
    task_id = submit(storage, max_retries=0)
    claim_one(storage, task_id)
    assert reap(storage, now=T0 + 31).expired == [task_id]
    task = storage.get(task_id)
    assert task["status"] == "failed"
    assert task["error"] == "lease expired"


def test_a_late_real_result_replaces_a_failure_caused_only_by_lease_expiry(storage):
    task_id = submit(storage, max_retries=0)
    lease = claim_one(storage, task_id)
    reap(storage, now=T0 + 31)
    assert finish(storage, task_id, lease, result={"late": True}, now=T0 + 40) == "completed"
    task = storage.get(task_id)
    assert task["status"] == "completed"
    assert task["result"] == {"late": True}
    assert task["error"] is None
    assert finish(storage, task_id, lease, result={"late": True}, now=T0 + 41) == "completed"


def test_a_late_real_failure_replaces_the_lease_expired_error(storage):
    task_id = submit(storage, max_retries=0)
    lease = claim_one(storage, task_id)
    reap(storage, now=T0 + 31)
    assert finish(storage, task_id, lease, "failed", error="real", now=T0 + 40) == "failed"
    task = storage.get(task_id)
    assert task["status"] == "failed"
    assert task["error"] == "real"


def test_a_worker_reported_failure_is_never_replaced_by_a_late_result(storage):
    task_id = submit(storage, max_retries=1)
    first_lease = claim_one(storage, task_id, "w1", now=T0)
    second_lease = expire_and_reclaim(storage, task_id, "w2")
    outcome = finish(storage, task_id, second_lease, "failed", error="bad", worker="w2")
    assert outcome == "failed"
    late = finish(storage, task_id, first_lease, result="late", now=T0 + 40)
    assert isinstance(late, LeaseConflict)
    task = storage.get(task_id)
    assert task["status"] == "failed"
    assert task["error"] == "bad"
    assert task["result"] is None


def test_a_result_for_a_cancelled_task_is_refused(storage, claimed_task):
    task_id, lease = claimed_task
    assert storage.cancel(task_id, now=T0 + 1) == "cancelled"
    assert isinstance(finish(storage, task_id, lease, result="late", now=T0 + 2), LeaseConflict)
    task = storage.get(task_id)
    assert task["status"] == "cancelled"
    assert task["result"] is None


# -- dead workers ---------------------------------------------------------------------


def test_a_silent_worker_is_declared_dead_and_its_tasks_go_back_at_once(storage, pending_task):
    claim_one(storage, pending_task, "w1", now=T0, lease_s=300)
    assert reap(storage, now=T0 + 59, dead_after=60).dead_workers == []
    report = reap(storage, now=T0 + 61, dead_after=60)  # long before the lease ends
    assert report.dead_workers == ["w1"]
    assert storage.get(pending_task)["status"] == "pending"
    assert storage.stats(now=T0 + 61, dead_after=60)["workers"] == {
        "alive": 0,
        "dead": 1,
        "stopped": 0,
    }
    [worker] = storage.workers(now=T0 + 61, dead_after=60)
    assert worker["worker_id"] == "w1"
    assert worker["status"] == "dead"
    assert worker["current_tasks"] == []


def test_heartbeats_keep_a_worker_alive(storage, pending_task):
    claim_one(storage, pending_task, "w1", now=T0, lease_s=300)
    heartbeat(storage, "w1", now=T0 + 50, lease_s=300)
    assert reap(storage, now=T0 + 61, dead_after=60).dead_workers == []
    assert storage.get(pending_task)["status"] == "in_progress"
    assert storage.stats(now=T0 + 61, dead_after=60)["workers"] == {
        "alive": 1,
        "dead": 0,
        "stopped": 0,
    }


# -- heartbeats -----------------------------------------------------------------------


def test_a_heartbeat_extends_the_leases_of_all_the_workers_tasks(storage, claimed_task):
    task_id, _ = claimed_task
    assert heartbeat(storage, "w1", now=T0 + 20) == []
    assert reap(storage, now=T0 + 40).expired == []
    assert storage.get(task_id)["status"] == "in_progress"
    assert reap(storage, now=T0 + 51).expired == [task_id]


def test_a_heartbeat_with_task_ids_extends_only_those(storage):
    kept, dropped = submit(storage, now=T0), submit(storage, now=T0 + 0.5)
    claim(storage, max_tasks=2, now=T0 + 1)
    assert heartbeat(storage, "w1", [kept], now=T0 + 20) == []
    assert reap(storage, now=T0 + 40).expired == [dropped]
    assert storage.get(kept)["status"] == "in_progress"
    assert storage.get(dropped)["status"] == "pending"


def test_a_heartbeat_does_not_extend_another_workers_task(storage, claimed_task):
    task_id, _ = claimed_task
    assert heartbeat(storage, "w2", [task_id], now=T0 + 20) == [task_id]
    assert reap(storage, now=T0 + 31).expired == [task_id]


def test_a_heartbeat_names_the_tasks_to_abandon(storage):
    cancelled, taken, mine = (submit(storage, now=T0 + i) for i in range(3))
    claim(storage, "w1", max_tasks=3, now=T0 + 5)
    heartbeat(storage, "w1", [mine], now=T0 + 20)
    storage.cancel(cancelled, now=T0 + 21)
    assert reap(storage, now=T0 + 36).expired == [taken]
    lease = claim_one(storage, taken, "w2", now=T0 + 37)
    assert finish(storage, taken, lease, worker="w2", now=T0 + 38) == "completed"
    abandon = heartbeat(storage, "w1", [cancelled, taken, mine], now=T0 + 39)
    assert sorted(abandon) == sorted([cancelled, taken])


def test_a_heartbeat_names_a_task_now_leased_to_another_worker(storage, claimed_task):
    task_id, _ = claimed_task
    expire_and_reclaim(storage, task_id, "w2")
    assert heartbeat(storage, "w1", [task_id], now=T0 + 33) == [task_id]
    assert heartbeat(storage, "w2", [task_id], now=T0 + 33) == []


def test_a_heartbeat_keeps_a_task_whose_late_result_would_still_count(storage):
    # the last attempt failed only by lease expiry: the worker's real result would still
    # replace that failure, so it must not be told to throw its work away
    task_id = submit(storage, max_retries=0)
    lease = claim_one(storage, task_id)
    reap(storage, now=T0 + 31)
    assert heartbeat(storage, "w1", [task_id], now=T0 + 32) == []
    assert finish(storage, task_id, lease, result="done", now=T0 + 33) == "completed"


# -- progress -------------------------------------------------------------------------


def report(storage, progress: dict, worker="w1", now=T0 + 1, task_ids=None):
    """A heartbeat carrying {task_id: (fraction, message)}."""
    items = {t: {"fraction": f, "message": m} for t, (f, m) in progress.items()}
    return storage.heartbeat(worker, "", task_ids, now=now, lease_s=LEASE, progress=items)


def test_a_task_has_no_progress_until_its_worker_reports_some(storage, claimed_task):
    task_id, _ = claimed_task
    assert storage.get(task_id)["progress"] is None
    heartbeat(storage, "w1", [task_id], now=T0 + 1)  # a heartbeat without progress
    assert storage.get(task_id)["progress"] is None


def test_a_heartbeat_stores_progress_only_for_tasks_its_worker_holds(storage):
    mine, theirs, waiting = (submit(storage, now=T0 + i) for i in range(3))
    claim_one(storage, mine, "w1", now=T0 + 5)
    claim_one(storage, theirs, "w2", now=T0 + 5)
    progress = {mine: (0.5, "halfway"), theirs: (0.9, "not yours"), waiting: (0.1, "no")}
    report(storage, {**progress, "no-such-task": (1.0, "")}, now=T0 + 6, task_ids=[mine])
    stored = {"fraction": 0.5, "message": "halfway", "updated_at": T0 + 6}
    assert storage.get(mine)["progress"] == stored
    assert storage.get(theirs)["progress"] is None
    assert storage.get(waiting)["progress"] is None
    assert [t["progress"] for t in storage.list_tasks("in_progress", None, 10, 0)] == [
        stored,
        None,
    ]
    report(storage, {mine: (0.75, "")}, now=T0 + 7)  # the newest value replaces it
    assert storage.get(mine)["progress"] == {"fraction": 0.75, "message": "", "updated_at": T0 + 7}


def test_a_message_keeps_whatever_text_it_holds(storage, claimed_task):
    task_id, _ = claimed_task
    message = 'quotes " \\ é \u2028 \x00 \udc00 {"json": [1]}'
    report(storage, {task_id: (1, message)})
    assert storage.get(task_id)["progress"]["message"] == message


def test_progress_is_kept_once_the_task_finishes_and_ignored_after(storage, claimed_task):
    task_id, lease = claimed_task
    report(storage, {task_id: (0.5, "halfway")}, now=T0 + 1)
    assert finish(storage, task_id, lease, result=1, now=T0 + 2) == "completed"
    report(storage, {task_id: (1.0, "too late")}, now=T0 + 3)
    assert storage.get(task_id)["progress"] == {
        "fraction": 0.5,
        "message": "halfway",
        "updated_at": T0 + 1,
    }


def test_a_new_attempt_starts_without_the_last_ones_progress(storage, claimed_task):
    task_id, lease = claimed_task
    report(storage, {task_id: (0.5, "halfway")}, now=T0 + 1)
    assert finish(storage, task_id, lease, "failed", error="boom", now=T0 + 2) == "pending"
    assert storage.get(task_id)["progress"]["message"] == "halfway"  # while it waits
    claim_one(storage, task_id, "w2", now=T0 + 100)
    assert storage.get(task_id)["progress"] is None


def test_retrying_a_task_forgets_its_progress(storage, claimed_task):
    task_id, _ = claimed_task
    report(storage, {task_id: (0.5, "halfway")})
    storage.cancel(task_id, now=T0 + 2)
    assert storage.get(task_id)["progress"]["message"] == "halfway"
    storage.retry(task_id, now=T0 + 3)
    assert storage.get(task_id)["progress"] is None


def test_workers_show_the_progress_of_their_running_tasks(storage):
    quiet, busy = submit(storage, now=T0), submit(storage, now=T0 + 1)
    claim(storage, "w1", max_tasks=2, now=T0 + 2)
    report(storage, {busy: (0.25, "a quarter")}, now=T0 + 3)
    [w] = storage.workers(now=T0 + 4, dead_after=FOREVER)
    assert sorted(w["current_tasks"]) == sorted([quiet, busy])
    assert w["progress"] == {busy: {"fraction": 0.25, "message": "a quarter", "updated_at": T0 + 3}}


def test_a_claim_names_each_tasks_queue(storage):
    submit(storage, queue="fast")
    submit(storage, queue="slow")
    claimed = claim(storage, max_tasks=2, queues=("slow", "fast"))
    assert [c["queue"] for c in claimed] == ["slow", "fast"]


# -- worker restarts ------------------------------------------------------------------


def test_a_restarted_worker_heartbeat_gives_back_the_earlier_instances_tasks(storage, pending_task):
    claim_one(storage, pending_task, "w1", instance="a")
    heartbeat(storage, "w1", instance="b", now=T0 + 1)
    task = storage.get(pending_task)
    assert task["status"] == "pending"  # at once, long before the lease would end
    assert task["worker_id"] is None


def test_a_restarted_worker_claim_gives_back_the_earlier_instances_tasks(storage, pending_task):
    claim_one(storage, pending_task, "w1", instance="a")
    assert claim(storage, "w1", instance="b", queues=("elsewhere",), now=T0 + 1) == []
    assert storage.get(pending_task)["status"] == "pending"
    claim_one(storage, pending_task, "w2", now=T0 + 2)


def test_the_earlier_instance_is_told_it_was_taken_over(storage, pending_task):
    claim_one(storage, pending_task, "w1", instance="a")
    heartbeat(storage, "w1", instance="b", now=T0 + 1)
    with pytest.raises(WorkerTakenOver) as raised:
        heartbeat(storage, "w1", instance="a", now=T0 + 2)
    assert http_status(raised.value) == 409
    with pytest.raises(WorkerTakenOver):
        claim(storage, "w1", instance="a", now=T0 + 3)
    assert storage.get(pending_task)["status"] == "pending"  # the refused claim took nothing
    claim_one(storage, pending_task, "w1", instance="b", now=T0 + 4)


def test_the_same_instance_keeps_its_tasks(storage, pending_task):
    claim_one(storage, pending_task, "w1", instance="a")
    heartbeat(storage, "w1", instance="a", now=T0 + 1)
    assert claim(storage, "w1", instance="a", now=T0 + 2) == []
    assert storage.get(pending_task)["status"] == "in_progress"


# -- release --------------------------------------------------------------------------


def test_a_released_task_is_pending_at_once_and_its_attempt_does_not_count(storage, claimed_task):
    task_id, lease = claimed_task
    assert storage.release("w1", [(task_id, lease)], now=T0 + 1) == 1
    task = storage.get(task_id)
    assert task["status"] == "pending"
    assert task["attempts"] == 0
    assert task["history"][0]["outcome"] == "released"
    [again] = claim(storage, "w2", now=T0 + 1)
    assert again["task_id"] == task_id
    assert again["attempt"] == 1


def test_release_with_a_wrong_lease_or_worker_changes_nothing(storage, claimed_task):
    task_id, lease = claimed_task
    assert storage.release("w1", [(task_id, "forged")], now=T0 + 1) == 0
    assert storage.release("w2", [(task_id, lease)], now=T0 + 1) == 0
    task = storage.get(task_id)
    assert task["status"] == "in_progress"
    assert task["attempts"] == 1


# -- cancel and retry -----------------------------------------------------------------


def test_cancelling_a_pending_task(storage, pending_task):
    assert storage.cancel(pending_task, now=T0 + 5) == "cancelled"
    task = storage.get(pending_task)
    assert task["status"] == "cancelled"
    assert task["finished_at"] == T0 + 5
    assert claim(storage, now=T0 + 6) == []


def test_cancelling_a_finished_task_is_a_conflict(storage, claimed_task):
    task_id, lease = claimed_task
    finish(storage, task_id, lease, result="done")
    with pytest.raises(Conflict) as raised:
        storage.cancel(task_id, now=T0 + 2)
    assert http_status(raised.value) == 409
    assert storage.get(task_id)["status"] == "completed"


def test_cancelling_an_unknown_task_is_not_found(storage):
    with pytest.raises(TaskNotFound):
        storage.cancel("no-such-task", now=T0)


def test_retrying_a_failed_task_resets_its_attempts(storage):
    task_id = submit(storage, max_retries=0)
    lease = claim_one(storage, task_id)
    finish(storage, task_id, lease, "failed", error="boom")
    assert storage.retry(task_id, now=T0 + 10) == "pending"
    task = storage.get(task_id)
    assert task["status"] == "pending"
    assert task["attempts"] == 0
    assert task["error"] is None
    assert task["finished_at"] is None
    [again] = claim(storage, now=T0 + 10)
    assert again["task_id"] == task_id
    assert again["attempt"] == 1


def test_retrying_a_cancelled_task_makes_it_pending(storage, pending_task):
    storage.cancel(pending_task, now=T0 + 1)
    assert storage.retry(pending_task, now=T0 + 2) == "pending"
    assert storage.get(pending_task)["status"] == "pending"


def test_retrying_a_completed_task_is_a_conflict(storage, claimed_task):
    task_id, lease = claimed_task
    finish(storage, task_id, lease, result="done")
    with pytest.raises(Conflict):
        storage.retry(task_id, now=T0 + 2)
    task = storage.get(task_id)
    assert task["status"] == "completed"
    assert task["result"] == "done"


def test_retrying_a_pending_task_is_a_conflict(storage, pending_task):
    with pytest.raises(Conflict):
        storage.retry(pending_task, now=T0 + 1)


def test_retrying_an_unknown_task_is_not_found(storage):
    with pytest.raises(TaskNotFound):
        storage.retry("no-such-task", now=T0)


# -- retention ------------------------------------------------------------------------


def test_retention_deletes_finished_tasks_older_than_it(storage):
    old_done = submit(storage, now=T0)
    finish(storage, old_done, claim_one(storage, old_done, now=T0), now=T0 + 1)
    old_cancelled = submit(storage, now=T0 + 1)
    storage.cancel(old_cancelled, now=T0 + 2)
    new_done = submit(storage, now=T0 + 80)
    finish(storage, new_done, claim_one(storage, new_done, now=T0 + 80), now=T0 + 90)
    waiting = submit(storage, now=T0 + 3, delay=10_000)
    report = reap(storage, now=T0 + 100, retention_s=50)
    assert report.deleted == 2
    for gone in (old_done, old_cancelled):
        with pytest.raises(TaskNotFound):
            storage.get(gone)
    assert storage.get(new_done)["status"] == "completed"
    assert storage.get(waiting)["status"] == "pending"


def test_retention_zero_keeps_everything(storage, claimed_task):
    task_id, lease = claimed_task
    finish(storage, task_id, lease, result="kept")
    assert reap(storage, now=T0 + 10**9, retention_s=0).deleted == 0
    assert storage.get(task_id)["result"] == "kept"


# -- concurrency ----------------------------------------------------------------------


def drain(store, worker: str, start: threading.Barrier) -> list[str]:
    start.wait()
    got = []
    while True:
        claimed = claim(store, worker, max_tasks=3, lease_s=600)
        if not claimed:
            return got
        got += [c["task_id"] for c in claimed]


def test_threads_sharing_one_storage_never_get_the_same_task(storage):
    submitted = [task_id for task_id, _ in storage.submit([new_task()] * 300, now=T0)]
    start = threading.Barrier(8)
    with ThreadPoolExecutor(8) as pool:
        runs = [pool.submit(drain, storage, f"w{i}", start) for i in range(8)]
        handed_out = [task_id for run in runs for task_id in run.result(timeout=120)]
    assert len(handed_out) == len(set(handed_out)) == len(submitted)
    assert set(handed_out) == set(submitted)


def test_storages_sharing_one_file_never_get_the_same_task(storage, config):
    submitted = [task_id for task_id, _ in storage.submit([new_task()] * 300, now=T0)]
    stores = [open_storage(config) for _ in range(4)]
    try:
        start = threading.Barrier(4)
        with ThreadPoolExecutor(4) as pool:
            runs = [pool.submit(drain, s, f"w{i}", start) for i, s in enumerate(stores)]
            handed_out = [task_id for run in runs for task_id in run.result(timeout=120)]
    finally:
        for s in stores:
            s.close()
    assert len(handed_out) == len(set(handed_out)) == len(submitted)
    assert set(handed_out) == set(submitted)


# -- the file -------------------------------------------------------------------------


def test_the_database_runs_in_wal_mode_at_the_current_schema_version(sqlite_config):
    storage = open_storage(sqlite_config)
    submit(storage)
    storage.close()
    db = sqlite3.connect(sqlite_config.database_path())
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        db.close()


def test_reopening_an_existing_file_keeps_its_tasks(storage, config, claimed_task):
    task_id, lease = claimed_task
    finish(storage, task_id, lease, result={"kept": [1, 2]})
    other = submit(storage, now=T0 + 2)
    storage.close()
    reopened = open_storage(config)
    try:
        assert reopened.get(task_id)["result"] == {"kept": [1, 2]}
        assert reopened.get(other)["status"] == "pending"
        assert total(reopened) == 2
    finally:
        reopened.close()


# -- stats ----------------------------------------------------------------------------


def test_stats_counts_add_up(storage):
    done = submit(storage, now=T0)
    finish(storage, done, claim_one(storage, done, now=T0), now=T0 + 1)
    running = submit(storage, now=T0 + 2)
    claim_one(storage, running, now=T0 + 2)
    failed = submit(storage, now=T0 + 3, type_="fail", payload={}, queue="other", max_retries=0)
    lease = claim_one(storage, failed, now=T0 + 3, queues=("other",))
    finish(storage, failed, lease, "failed", error="boom", now=T0 + 4)
    cancelled = submit(storage, now=T0 + 5, type_="compute", payload={})
    storage.cancel(cancelled, now=T0 + 5)
    submit(storage, now=T0 + 6)  # left pending

    stats = storage.stats(now=T0 + 10, dead_after=60)
    zero = dict.fromkeys(
        ("waiting", "pending", "in_progress", "completed", "failed", "cancelled"), 0
    )
    assert stats["tasks"] == {
        "waiting": 0,
        "pending": 1,
        "in_progress": 1,
        "completed": 1,
        "failed": 1,
        "cancelled": 1,
    }
    assert stats["queues"] == {
        "default": {**zero, "pending": 1, "in_progress": 1, "completed": 1, "cancelled": 1},
        "other": {**zero, "failed": 1},
    }
    assert stats["types"] == {
        "sleep": {**zero, "pending": 1, "in_progress": 1, "completed": 1},
        "fail": {**zero, "failed": 1},
        "compute": {**zero, "cancelled": 1},
    }
    assert stats["workers"] == {"alive": 1, "dead": 0, "stopped": 0}


def test_queue_age_counts_only_tasks_that_are_ready(storage):
    submit(storage, now=T0, delay=3600)  # delayed: not waiting yet
    stats = storage.stats(now=T0 + 10, dead_after=FOREVER)
    assert stats["oldest_pending_age_seconds"] is None
    submit(storage, now=T0 + 4)
    stats = storage.stats(now=T0 + 10, dead_after=FOREVER)
    assert stats["oldest_pending_age_seconds"] == 6


def test_retention_clears_a_backlog_larger_than_one_batch(storage):
    count = DELETE_BATCH * 2 + 7
    storage.submit([new_task() for _ in range(count)], now=T0)
    results = [
        Result(c["task_id"], c["lease_token"], "w1", "completed")
        for c in claim(storage, max_tasks=count)
    ]
    assert storage.finish(results, now=T0 + 1) == ["completed"] * count
    keep = submit(storage, now=T0 + 2)

    report = reap(storage, now=T0 + 100, retention_s=50)
    assert report.deleted == count
    assert total(storage) == 1
    assert storage.get(keep)["status"] == "pending"


def test_a_version_1_database_file_is_migrated_and_keeps_its_tasks(sqlite_config):
    config = sqlite_config
    old = open_storage(config)
    task_id = submit(old)
    old.close()
    path = config.database_path()
    with sqlite3.connect(path) as db:  # make the file what version 1 wrote
        db.execute("DROP INDEX tasks_pending_age")
        db.execute("ALTER TABLE workers DROP COLUMN queues")
        db.execute("ALTER TABLE workers DROP COLUMN concurrency")
        db.execute("ALTER TABLE tasks DROP COLUMN progress")
        db.execute("ALTER TABLE tasks DROP COLUMN schedule")
        db.execute("DROP TABLE schedules")
        db.execute("ALTER TABLE tasks DROP COLUMN waiting_on")
        db.execute("ALTER TABLE tasks DROP COLUMN depends_on")
        db.execute("ALTER TABLE tasks DROP COLUMN has_dependents")
        db.execute("DROP TABLE task_dependencies")
        db.execute("DROP INDEX tasks_expiry")  # version 6's objects
        db.execute("ALTER TABLE tasks DROP COLUMN expires_at")
        db.execute("DROP TABLE queue_settings")
        db.execute("DROP TABLE queue_claims")
        db.execute("DROP TABLE audit")  # version 7's
        db.execute("DROP TABLE secrets")
        db.execute("PRAGMA user_version = 1")
    db.close()

    migrated = open_storage(config)
    try:
        assert migrated.get(task_id)["status"] == "pending"
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7
            index = db.execute("SELECT sql FROM sqlite_master WHERE name = 'tasks_pending_age'")
            [(sql,)] = index.fetchall()
        db.close()
        assert "(queue, run_at)" in sql, sql  # version 4's shape, by way of version 2's
        assert migrated.get(task_id)["progress"] is None  # version 5's column
        assert migrated.get(task_id)["schedule"] is None and migrated.schedules() == []  # 6's
        assert migrated.get(task_id)["depends_on"] == []  # version 6's
        assert migrated.get(task_id)["expires_at"] is None  # version 6's
        assert migrated.audit_records(10, 0) == []  # version 7's
        assert len(migrated.shared_secret("s")) == 32
    finally:
        migrated.close()


# -- one batch mixing every kind of result ---------------------------------------------


def test_a_batch_mixing_current_stale_repeated_and_unknown_results(storage):
    # Every kind of result in one finish() call, out of task-id order, with several
    # results for one task: each is judged as if it came alone, in the batch's order.
    # (On PostgreSQL the first result of each task goes through the set-based path and
    # the rest result by result; the outcomes must not show it.)
    stale_done, stale_failed = submit(storage, max_retries=3), submit(storage, max_retries=3)
    old = {c["task_id"]: c["lease_token"] for c in claim(storage, "w1", T0, max_tasks=2)}
    assert sorted(reap(storage, now=T0 + 31).expired) == sorted(old)
    new = {c["task_id"]: c["lease_token"] for c in claim(storage, "w2", T0 + 32, max_tasks=2)}
    assert set(new) == set(old)

    done, repeated = submit(storage, now=T0 + 33), submit(storage, now=T0 + 33)
    last, fail_then_done = (
        submit(storage, now=T0 + 33, max_retries=0),
        submit(storage, now=T0 + 33, max_retries=0),
    )
    retried = submit(storage, now=T0 + 33, max_retries=3)
    lease = {c["task_id"]: c["lease_token"] for c in claim(storage, "w1", T0 + 34, max_tasks=5)}
    assert len(lease) == 5
    other = submit(storage, now=T0 + 34)
    lease[other] = claim_one(storage, other, "w2", now=T0 + 34)

    def result(task_id, token, worker="w1", status="completed", **fields):
        return Result(task_id, token, worker, status, **fields)

    batch = [
        result(repeated, lease[repeated], result="first"),
        result(stale_done, old[stale_done], result="late"),
        result("no-such-task", "x" * 32),
        result(done, lease[done], result="done"),
        result(stale_failed, old[stale_failed], status="failed", error="stale boom"),
        result(repeated, lease[repeated], result="second"),
        result(stale_done, new[stale_done], "w2", result="current"),
        result(last, lease[last], status="failed", error="final"),
        result(stale_failed, new[stale_failed], "w2", status="failed", error="boom"),
        result(repeated, "f" * 32, result="forged"),
        result(fail_then_done, lease[fail_then_done], status="failed", error="f boom"),
        result(fail_then_done, lease[fail_then_done], result="too late"),
        result(last, lease[last], status="failed", error="final"),
        result(retried, lease[retried], status="failed", error="retry me"),
        result(retried, lease[retried], result="after all"),
        result(other, lease[other], "w2", result="other"),
    ]
    outcomes = storage.finish(batch, now=T0 + 35)
    kinds = [o if isinstance(o, str) else type(o).__name__ for o in outcomes]
    assert kinds == [
        "completed",
        "completed",  # a late result from an expired lease wins while the task runs again
        "TaskNotFound",
        "completed",
        "in_progress",  # a failure under an earlier lease: history only
        "completed",  # the same result again: harmless
        "LeaseConflict",  # the current lease, but the late result finished the task
        "failed",
        "pending",
        "LeaseConflict",  # a lease never issued
        "failed",
        "failed",  # a result after the failure that ended the task changes nothing
        "failed",
        "pending",
        "completed",  # the failure put it back to pending; a result of its lease still counts
        "completed",
    ]
    # what moved its task says so, with the task's queue and type (metrics count these)
    moved = [i for i, o in enumerate(outcomes) if isinstance(o, Moved)]
    assert moved == [0, 1, 3, 7, 8, 10, 13, 14, 15]
    assert {(outcomes[i].queue, outcomes[i].type) for i in moved} == {("default", "sleep")}

    def state(task_id):
        task = storage.get(task_id)
        history = [
            (a["attempt"], a["worker_id"], a["outcome"], a["error"]) for a in task["history"]
        ]
        return task["status"], task["result"], task["error"], task["worker_id"], history

    assert state(done) == ("completed", "done", None, "w1", [(1, "w1", "completed", None)])
    assert state(repeated) == ("completed", "first", None, "w1", [(1, "w1", "completed", None)])
    assert state(stale_done) == (
        "completed",
        "late",
        None,
        "w1",
        [(1, "w1", "completed", None), (2, "w2", "superseded", None)],
    )
    assert state(stale_failed)[0] == "pending"
    assert state(stale_failed)[2:] == (
        "boom",
        None,
        [(1, "w1", "expired", "lease expired"), (2, "w2", "failed", "boom")],
    )
    assert state(last) == ("failed", None, "final", "w1", [(1, "w1", "failed", "final")])
    assert state(fail_then_done) == (
        "failed",
        None,
        "f boom",
        "w1",
        [(1, "w1", "failed", "f boom")],
    )
    assert state(retried) == (
        "completed",
        "after all",
        None,
        "w1",
        [(1, "w1", "completed", None)],
    )
    assert state(other) == ("completed", "other", None, "w2", [(1, "w2", "completed", None)])
    for task_id in (done, repeated, stale_done, last, fail_then_done, retried, other):
        assert storage.get(task_id)["finished_at"] == T0 + 35
    counters = {
        w["worker_id"]: (w["attempts_completed"], w["attempts_failed"])
        for w in storage.workers(T0, FOREVER)
    }
    # w1: done, repeated, stale_done (late), retried; failed: last, fail_then_done, retried
    # w2: other; failed: stale_failed
    assert counters == {"w1": (4, 3), "w2": (1, 1)}


def moved(outcome) -> tuple:
    """A status as (status, queue, type) when it moved its task; else the status alone."""
    if isinstance(outcome, Moved):
        return str(outcome), outcome.queue, outcome.type
    return outcome if isinstance(outcome, str) else type(outcome).__name__


def test_what_moved_a_task_names_its_queue_and_type(storage):
    # A result, a cancellation and an expired lease name only a task id; what storage
    # answers names the queue and type of each task it moved, for the metrics' labels.
    # Six results in one batch: on PostgreSQL the set-based statement takes the first
    # five (a retry is judged alone), on SQLite each goes alone.
    kinds = [("a", "t1", 0), ("a", "t2", 0), ("b", "t1", 0), ("b", "t3", 0), ("a", "t1", 3)]
    kinds += [("b", "t2", 0)]
    ids = [submit(storage, queue=q, type_=t, max_retries=r) for q, t, r in kinds]
    lease = {c["task_id"]: c["lease_token"] for c in claim(storage, max_tasks=6, queues=("a", "b"))}
    statuses = ["completed", "failed", "completed", "failed", "failed", "completed"]
    batch = [Result(i, lease[i], "w1", s, error="x") for i, s in zip(ids, statuses, strict=True)]
    again = Result(ids[0], lease[ids[0]], "w1", "completed")
    forged = Result(ids[5], "f" * 32, "w1", "completed")
    assert [moved(o) for o in storage.finish([*batch, again, forged], now=T0 + 1)] == [
        ("completed", "a", "t1"),
        ("failed", "a", "t2"),
        ("completed", "b", "t1"),
        ("failed", "b", "t3"),
        ("pending", "a", "t1"),  # a retry
        ("completed", "b", "t2"),
        "completed",  # the same result again moves nothing
        "LeaseConflict",
    ]

    one = submit(storage, queue="c", type_="t4")  # one result alone: the per-result path
    assert moved(finish(storage, one, claim_one(storage, one, queues=("c",)))) == (
        "completed",
        "c",
        "t4",
    )

    last, running = submit(storage, queue="c", max_retries=0), submit(storage, queue="d")
    late = claim_one(storage, last, queues=("c",))
    claim_one(storage, running, queues=("d",), now=T0 + 10)
    report = reap(storage, now=T0 + 31)
    assert (report.expired, report.expired_queues) == ([last], ["c"])
    assert moved(finish(storage, last, late, now=T0 + 32)) == ("completed", "c", "sleep")

    assert moved(storage.cancel(running, now=T0 + 33)) == ("cancelled", "d", "sleep")
    assert moved(storage.retry(running, now=T0 + 34)) == ("pending", "d", "sleep")
    report = reap(storage, now=T0 + 100)
    assert (report.expired, report.expired_queues) == ([], [])


# -- a worker that stops, and workers long gone -------------------------------------------


def test_a_stopping_worker_claims_nothing_and_a_stopped_one_is_not_dead(storage):
    submit(storage)
    heartbeat(storage, "w1", [], now=T0, instance="i1")
    storage.heartbeat("w1", "i1", [], now=T0 + 1, lease_s=LEASE, state="stopping")
    with pytest.raises(WorkerStopping):
        claim(storage, "w1", T0 + 2, instance="i1")
    heartbeat(storage, "w1", [], now=T0 + 3, instance="i1")  # a plain beat keeps it stopping
    [shown] = storage.workers(now=T0 + 3, dead_after=60)
    assert shown["status"] == "stopping"
    storage.heartbeat("w1", "i1", [], now=T0 + 4, lease_s=LEASE, state="stopped")
    report = storage.reap(now=T0 + 1000, dead_after=60, retention_s=0)
    assert report.dead_workers == []
    [shown] = storage.workers(now=T0 + 1000, dead_after=60)
    assert shown["status"] == "stopped"
    assert storage.stats(now=T0 + 1000, dead_after=60)["workers"] == {
        "alive": 0,
        "dead": 0,
        "stopped": 1,
    }
    # the same id started again: a new instance takes it over, alive, and claims
    assert [c["attempt"] for c in claim(storage, "w1", T0 + 1001, instance="i2")] == [1]
    [shown] = storage.workers(now=T0 + 1001, dead_after=60)
    assert shown["status"] == "alive"


def test_workers_gone_longer_than_forget_after_are_forgotten(storage):
    heartbeat(storage, "w-dead", [], now=T0)
    heartbeat(storage, "w-stopped", [], now=T0)
    storage.heartbeat("w-stopped", "", [], now=T0, lease_s=LEASE, state="stopped")
    heartbeat(storage, "w-alive", [], now=T0 + 500)
    storage.reap(now=T0 + 100, dead_after=60, retention_s=0, forget_after=1000)
    names = {w["worker_id"]: w["status"] for w in storage.workers(T0 + 100, 60)}
    assert names == {"w-dead": "dead", "w-stopped": "stopped", "w-alive": "alive"}
    report = storage.reap(now=T0 + 1001, dead_after=600, retention_s=0, forget_after=1000)
    assert report.forgotten == 2
    assert [w["worker_id"] for w in storage.workers(T0 + 1001, 600)] == ["w-alive"]


# -- MAX_PENDING_TASKS ---------------------------------------------------------------------


def pending_count(storage) -> int:
    return storage.stats(now=T0, dead_after=FOREVER)["tasks"]["pending"]


@pytest.fixture
def capped(storage):  # a queue that may hold 3 pending tasks
    storage.max_pending = 3
    return storage


def test_a_submission_up_to_the_limit_passes(capped):
    capped.submit([new_task(), new_task()], now=T0)
    capped.submit([new_task()], now=T0)  # the third: at the limit, not past it
    assert pending_count(capped) == 3


def test_a_submission_past_the_limit_is_refused_and_stores_nothing(capped):
    capped.submit([new_task() for _ in range(3)], now=T0)
    with pytest.raises(QueueFull) as refused:
        capped.submit([new_task(idempotency_key="k1")], now=T0)
    assert "MAX_PENDING_TASKS" in str(refused.value) and "3" in str(refused.value)
    assert http_status(refused.value) == 429
    with pytest.raises(QueueFull):
        capped.submit([new_task()], now=T0)  # the bulk path too
    assert pending_count(capped) == 3 and total(capped) == 3


def test_a_batch_that_would_cross_the_limit_is_refused_whole(capped):
    capped.submit([new_task()], now=T0)
    with pytest.raises(QueueFull) as refused:
        capped.submit([new_task() for _ in range(3)], now=T0)
    assert "adds 3" in str(refused.value)
    with pytest.raises(QueueFull):  # with keys: the rollback undoes the inserted ones
        capped.submit([new_task(idempotency_key=f"b{i}") for i in range(3)], now=T0)
    assert pending_count(capped) == 1 and total(capped) == 1
    [(_, created)] = capped.submit([new_task(idempotency_key="b0")], now=T0)
    assert created  # b0 was not kept by the refused batch


def test_claimed_tasks_make_room_and_a_repeat_is_never_refused(capped):
    [(first, _)] = capped.submit([new_task(idempotency_key="same")], now=T0)
    capped.submit([new_task(), new_task()], now=T0)
    assert capped.submit([new_task(idempotency_key="same")], now=T0) == [(first, False)]
    with pytest.raises(QueueFull):
        capped.submit([new_task()], now=T0)
    assert len(claim(capped, max_tasks=2)) == 2  # no longer pending
    capped.submit([new_task(), new_task()], now=T0 + 1)
    assert pending_count(capped) == 3


def test_far_below_the_limit_submissions_do_not_count_each_time(storage):
    storage.max_pending = 1000
    counts = []
    real = storage._pending_before

    def counting(tx, adding, now):
        pending = real(tx, adding, now)
        counts.append(pending)
        return pending

    storage._pending_before = counting
    for _ in range(10):
        storage.submit([new_task()], now=T0)
    assert counts[0] == 0 and counts[1:] == [None] * 9  # one count, then the estimate
    storage.submit([new_task()], now=T0 + 2)  # the estimate is too old: counted again
    assert counts[-1] == 10
