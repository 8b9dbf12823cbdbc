"""Queue controls (pause, max_in_flight, rate_limit) and expiry (expires_in), on both
backends: what a claim may take, what `has_ready` / `next_run_at` tell a held poll,
the settings the API reads and writes, and the not-started tasks that expire at a
claim or by the reaper."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from dispatcher.storage import open_storage
from dispatcher.storage.flow import EXPIRE_BATCH, expiry_error
from tests.storage import test_contract as contract
from tests.storage.test_contract import FOREVER, T0, claim, finish, new_task, reap, submit

# the fixtures: SQLite and PostgreSQL
config, storage, pending_task, claimed_task = (
    contract.config,
    contract.storage,
    contract.pending_task,
    contract.claimed_task,
)

Q = ("default",)


def ids(claimed) -> list[str]:
    return [t["task_id"] for t in claimed]


def submit_many(storage, n: int, now: float = T0, **options) -> list[str]:
    return [task_id for task_id, _ in storage.submit([new_task(**options)] * n, now=now)]


# -- settings -------------------------------------------------------------------------


def test_a_queue_without_tasks_can_be_configured_and_is_listed(storage):
    got = storage.set_queue("empty", {"paused": True, "max_in_flight": 3}, now=T0)
    assert got == {
        "name": "empty",
        "paused": True,
        "max_in_flight": 3,
        "rate_limit": None,
        "updated_at": T0,
    }
    [queue] = storage.queues(now=T0)
    assert queue["name"] == "empty" and queue["paused"] and queue["max_in_flight"] == 3
    assert set(queue["counts"].values()) == {0}


def test_queues_lists_queues_with_tasks_and_their_counts_by_status(storage):
    submit_many(storage, 2, queue="a")
    submit(storage, queue="b")
    [t] = claim(storage, queues=("a",))
    finish(storage, t["task_id"], t["lease_token"])
    storage.set_queue("c", {"rate_limit": {"count": 5, "per_seconds": 2.5}}, now=T0)
    queues = {q["name"]: q for q in storage.queues(now=T0 + 2)}
    assert sorted(queues) == ["a", "b", "c"]
    assert queues["a"]["counts"]["pending"] == 1 and queues["a"]["counts"]["completed"] == 1
    assert queues["b"]["counts"]["pending"] == 1 and not queues["b"]["paused"]
    assert queues["b"]["rate_limit"] is None and queues["b"]["updated_at"] is None
    assert queues["c"]["rate_limit"] == {"count": 5, "per_seconds": 2.5}


def test_a_change_keeps_the_settings_it_does_not_name(storage):
    storage.set_queue("q", {"paused": True, "max_in_flight": 2}, now=T0)
    storage.set_queue("q", {"rate_limit": {"count": 1, "per_seconds": 1}}, now=T0 + 1)
    got = storage.set_queue("q", {"paused": False}, now=T0 + 2)
    assert (got["paused"], got["max_in_flight"], got["rate_limit"]) == (
        False,
        2,
        {"count": 1, "per_seconds": 1.0},
    )
    got = storage.set_queue("q", {"max_in_flight": None, "rate_limit": None}, now=T0 + 3)
    assert (got["max_in_flight"], got["rate_limit"], got["updated_at"]) == (None, None, T0 + 3)


# -- pause ----------------------------------------------------------------------------


def test_a_paused_queue_accepts_submissions_and_hands_out_nothing(storage):
    storage.set_queue("default", {"paused": True}, now=T0)
    task_id = submit(storage)
    assert claim(storage, now=T0 + 1) == []
    assert not storage.has_ready(Q, T0 + 1)
    assert storage.next_run_at(Q, T0 + 1) is None  # a resume wakes the polls, not a time
    storage.set_queue("default", {"paused": False}, now=T0 + 2)
    assert storage.has_ready(Q, T0 + 2)
    assert ids(claim(storage, now=T0 + 2)) == [task_id]


def test_a_paused_queue_lets_its_running_tasks_finish(storage, claimed_task):
    task_id, lease = claimed_task
    storage.set_queue("default", {"paused": True}, now=T0)
    assert finish(storage, task_id, lease) == "completed"


def test_a_claim_passes_over_a_paused_queue_to_the_next(storage):
    submit(storage, queue="a")
    b = submit(storage, queue="b")
    storage.set_queue("a", {"paused": True}, now=T0)
    assert ids(claim(storage, queues=("a", "b"), max_tasks=5)) == [b]
    assert not storage.has_ready(("a",), T0) and not storage.has_ready(("a", "b"), T0)


# -- max_in_flight ----------------------------------------------------------------------


def test_max_in_flight_caps_the_queues_tasks_in_progress(storage):
    storage.set_queue("default", {"max_in_flight": 2}, now=T0)
    submit_many(storage, 5)
    first = claim(storage, "w1", max_tasks=5)
    assert len(first) == 2
    assert claim(storage, "w2", max_tasks=5) == []
    assert not storage.has_ready(Q, T0) and storage.next_run_at(Q, T0) is None
    finish(storage, first[0]["task_id"], first[0]["lease_token"])
    assert storage.has_ready(Q, T0 + 1)
    assert len(claim(storage, "w2", now=T0 + 1, max_tasks=5)) == 1


def test_max_in_flight_counts_every_worker_and_leaves_other_queues_alone(storage):
    storage.set_queue("a", {"max_in_flight": 1}, now=T0)
    submit_many(storage, 3, queue="a")
    submit_many(storage, 3, queue="b")
    got = claim(storage, "w1", queues=("a", "b"), max_tasks=3)
    assert [t["queue"] for t in got] == ["a", "b", "b"]
    assert [t["queue"] for t in claim(storage, "w2", queues=("a", "b"), max_tasks=3)] == ["b"]


def test_concurrent_claims_never_pass_max_in_flight(storage, config):
    """Eight claimers on four storage objects (PostgreSQL: four pools; SQLite: four
    connection pools on one file), started together: exactly max_in_flight are handed
    out."""
    storage.set_queue("default", {"max_in_flight": 3}, now=T0)
    submit_many(storage, 40)
    stores = [open_storage(config) for _ in range(4)]
    start = threading.Barrier(8)

    def take(i: int) -> int:
        start.wait()
        return len(claim(stores[i % 4], f"w{i}", max_tasks=2))

    try:
        with ThreadPoolExecutor(8) as pool:
            assert sum(pool.map(take, range(8))) == 3
    finally:
        for store in stores:
            store.close()


# -- rate_limit ------------------------------------------------------------------------


def test_a_rate_limit_allows_count_claims_in_any_window(storage):
    storage.set_queue("default", {"rate_limit": {"count": 3, "per_seconds": 10}}, now=T0)
    submit_many(storage, 10)
    assert len(claim(storage, "w1", now=T0, max_tasks=2)) == 2
    assert len(claim(storage, "w2", now=T0 + 4, max_tasks=5)) == 1
    assert claim(storage, "w3", now=T0 + 9.9, max_tasks=5) == []
    assert not storage.has_ready(Q, T0 + 9.9)
    # the window lets one more in when the first claim (two tasks at T0) leaves it
    assert storage.next_run_at(Q, T0 + 9.9) == pytest.approx(T0 + 10)
    assert len(claim(storage, "w3", now=T0 + 10, max_tasks=5)) == 2
    assert storage.next_run_at(Q, T0 + 10) == pytest.approx(T0 + 14)
    assert len(claim(storage, "w3", now=T0 + 14, max_tasks=5)) == 1


def test_a_rate_limited_queue_waits_for_a_delayed_task_and_its_window(storage):
    storage.set_queue("default", {"rate_limit": {"count": 1, "per_seconds": 5}}, now=T0)
    submit(storage)
    submit(storage, delay=20)
    assert len(claim(storage, now=T0)) == 1
    assert storage.next_run_at(Q, T0 + 1) == pytest.approx(T0 + 20)  # the task, not the window


def test_removing_a_rate_limit_opens_the_queue(storage):
    storage.set_queue("default", {"rate_limit": {"count": 1, "per_seconds": 60}}, now=T0)
    submit_many(storage, 3)
    assert len(claim(storage, max_tasks=3)) == 1
    storage.set_queue("default", {"rate_limit": None}, now=T0 + 1)
    assert len(claim(storage, now=T0 + 1, max_tasks=3)) == 2


def test_all_limits_together_take_the_least(storage):
    storage.set_queue(
        "default",
        {"max_in_flight": 4, "rate_limit": {"count": 3, "per_seconds": 60}},
        now=T0,
    )
    submit_many(storage, 10)
    assert len(claim(storage, max_tasks=10)) == 3


# -- expiry ----------------------------------------------------------------------------


def test_a_task_not_started_in_time_is_never_handed_out(storage):
    late = submit(storage, expires_in=5)
    fine = submit(storage, now=T0 + 0.001)
    assert ids(claim(storage, now=T0 + 5, max_tasks=5)) == [fine]
    task = storage.get(late)
    assert (task["status"], task["error"], task["attempts"]) == (
        "cancelled",
        "expired: not started within 5 s",
        0,
    )
    assert task["finished_at"] == T0 + 5 and task["history"] == []


def test_a_task_started_in_time_runs_and_finishes(storage):
    task_id = submit(storage, expires_in=5)
    [t] = claim(storage, now=T0 + 4.9)
    assert t["task_id"] == task_id
    assert storage.get(task_id)["expires_at"] == T0 + 5
    assert finish(storage, task_id, t["lease_token"], now=T0 + 60) == "completed"


def test_the_reaper_expires_not_started_tasks(storage):
    storage.set_queue("nobody", {"paused": True}, now=T0)
    a = submit(storage, queue="nobody", expires_in=2.5)
    b = submit(storage, queue="nobody", expires_in=60)
    report = reap(storage, now=T0 + 3)
    assert report.unstarted == [("nobody", "sleep")]
    assert storage.get(a)["status"] == "cancelled"
    assert storage.get(a)["error"] == "expired: not started within 2.5 s"
    assert storage.get(b)["status"] == "pending"
    assert reap(storage, now=T0 + 4).unstarted == []


def test_a_claim_reports_the_tasks_it_expired(storage):
    reported: list = []
    storage.on_expired = reported.extend  # after the commit (the app counts them)
    submit(storage, queue="other", expires_in=1)
    got = claim(storage, now=T0 + 2)
    assert got == [] and reported == [("other", "sleep")]


def test_a_task_that_started_does_not_expire_when_it_waits_for_a_retry(storage):
    task_id = submit(storage, expires_in=5, max_retries=2)
    [t] = claim(storage, now=T0 + 1)
    assert finish(storage, task_id, t["lease_token"], "failed", error="boom", now=T0 + 2) == (
        "pending"
    )
    assert reap(storage, now=T0 + 100).unstarted == []
    [again] = claim(storage, now=T0 + 100)
    assert (again["task_id"], again["attempt"]) == (task_id, 2)


def test_a_released_task_has_not_started_and_still_expires(storage):
    task_id = submit(storage, expires_in=5)
    [t] = claim(storage, now=T0 + 1)
    assert storage.release("w1", [(task_id, t["lease_token"])], now=T0 + 2) == 1
    assert claim(storage, now=T0 + 6) == []
    assert storage.get(task_id)["status"] == "cancelled"


def test_an_operators_retry_of_an_expired_task_no_longer_expires(storage):
    task_id = submit(storage, expires_in=1)
    reap(storage, now=T0 + 2)
    storage.retry(task_id, now=T0 + 3)
    assert storage.get(task_id)["expires_at"] is None
    assert ids(claim(storage, now=T0 + 10)) == [task_id]


def test_expiry_clears_a_backlog_larger_than_one_batch(storage):
    storage.set_queue("nobody", {"paused": True}, now=T0)
    submit_many(storage, EXPIRE_BATCH + 3, queue="nobody", expires_in=1)
    assert len(reap(storage, now=T0 + 2).unstarted) == EXPIRE_BATCH + 3
    assert storage.queues(now=T0 + 2)[0]["counts"]["cancelled"] == EXPIRE_BATCH + 3


def test_an_expired_task_behind_a_paused_queue_is_left_to_the_reaper(storage):
    storage.set_queue("default", {"paused": True}, now=T0)
    task_id = submit(storage, expires_in=1)
    assert not storage.has_ready(Q, T0 + 2)
    reap(storage, now=T0 + 2)
    assert storage.get(task_id)["status"] == "cancelled"


def test_expiry_error_names_the_submissions_expires_in():
    assert expiry_error(T0, T0 + 5) == "expired: not started within 5 s"
    assert expiry_error(T0 + 0.1, T0 + 0.1 + 0.3) == "expired: not started within 0.3 s"
    assert expiry_error(T0, T0 + 31_536_000) == "expired: not started within 31536000 s"


def test_finished_counts_include_expired_tasks(storage):
    submit(storage, expires_in=1)
    reap(storage, now=T0 + 2)
    assert storage.stats(now=T0 + 2, dead_after=FOREVER)["tasks"]["cancelled"] == 1


def test_a_batch_mixing_tasks_with_and_without_expiry_keeps_each(storage):
    items = [new_task(expires_in=5), new_task(), new_task(expires_in=0.25)]
    ids = [task_id for task_id, _ in storage.submit(items, now=T0)]
    assert [storage.get(t)["expires_at"] for t in ids] == [T0 + 5, None, T0 + 0.25]
    with_key = new_task(expires_in=7, idempotency_key="k")  # the one-by-one path
    [(keyed, _)] = storage.submit([with_key], now=T0)
    assert storage.get(keyed)["expires_at"] == T0 + 7
