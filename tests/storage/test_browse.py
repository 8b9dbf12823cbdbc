"""The dashboard's storage operations on both backends: pages of tasks found by filters,
newest first; the bounded walk; counts and bulk moves of what a filter matches; the
minute counts of finished tasks; each queue's oldest pending task; the workers'
concurrency."""

from __future__ import annotations

import pytest

from dispatcher.storage import browse
from dispatcher.storage.browse import TaskFilter
from tests.storage import test_contract as contract
from tests.storage.test_contract import FOREVER, T0, claim, finish, new_task, submit

config, storage = contract.config, contract.storage  # the fixtures: SQLite and PostgreSQL


def ids_of(page) -> list[str]:
    return [t["task_id"] for t in page.tasks]


@pytest.fixture
def mixed(storage):
    """Twelve tasks, submitted one millisecond apart (ids in that order): queues a and b,
    types sleep and compute; four of queue a completed by w1, two of queue b failed by w2
    (with an error naming 'disk_full'), the rest pending. Returns {name: task_id}."""
    names = {}
    for i in range(12):
        queue, type_ = ("a" if i % 2 else "b"), ("sleep" if i % 3 else "compute")
        payload = {"duration": 1} if type_ == "sleep" else {"operation": "double", "value": i}
        [(task_id, _)] = storage.submit(
            [new_task(type_, payload, queue=queue, max_retries=0)], now=T0 + i / 1000
        )
        names[f"t{i}"] = task_id
    for worker, count, status, queue in (("w1", 4, "completed", "a"), ("w2", 2, "failed", "b")):
        for c in claim(storage, worker, T0 + 1, max_tasks=count, queues=(queue,)):
            error = "disk_full: no space 100%" if status == "failed" else None
            finish(storage, c["task_id"], c["lease_token"], status, error=error, worker=worker)
    return names


def test_pages_are_newest_first_and_the_next_starts_where_one_ended(storage, mixed):
    newest_first = list(reversed(mixed.values()))
    first = storage.find_tasks(TaskFilter(), None, 5, None)
    assert ids_of(first) == newest_first[:5]
    second = storage.find_tasks(TaskFilter(), first.next_before, 5, None)
    assert ids_of(second) == newest_first[5:10]
    last = storage.find_tasks(TaskFilter(), second.next_before, 5, None)
    assert ids_of(last) == newest_first[10:]
    assert (last.next_before, last.window_ended) == (None, False)


@pytest.mark.parametrize("status_count", [None, 0, browse.INDEXED_MAX + 1])
def test_each_filter_keeps_only_what_it_names_by_either_path(storage, mixed, status_count):
    everything = {t["task_id"]: t for t in storage.find_tasks(TaskFilter(), None, 50, None).tasks}

    def found(**where) -> set[str]:
        return set(ids_of(storage.find_tasks(TaskFilter(**where), None, 50, status_count)))

    def expected(keep) -> set[str]:
        return {task_id for task_id, t in everything.items() if keep(t)}

    assert found(status="failed") == expected(lambda t: t["status"] == "failed")
    assert len(found(status="failed")) == 2
    assert found(status="pending", queue="a") == expected(
        lambda t: t["status"] == "pending" and t["queue"] == "a"
    )
    assert found(status="completed", type="compute") == expected(
        lambda t: t["status"] == "completed" and t["type"] == "compute"
    )
    assert found(worker="w2") == expected(lambda t: t["worker_id"] == "w2")
    # text: in the id, the payload or the error, case-insensitive, % and _ taken literally
    assert found(text="DISK_FULL") == expected(lambda t: "disk_full" in (t["error"] or ""))
    assert found(text="100%") == found(text="disk_full") != set()
    assert found(text="disk%full") == set()
    assert found(text='"value":1') == expected(lambda t: t["payload"].get("value") in (1, 10))
    assert found(text=mixed["t7"][-12:]) == {mixed["t7"]}


def test_text_is_found_as_shown_whatever_the_stored_json_escapes(storage):
    task_id = submit(storage, payload={"city": "Zürich", "path": "C:\\dir"})
    for text in ["zürich", "ZÜRICH", "Zü", "c:\\dir"]:
        found = storage.find_tasks(TaskFilter(text=text), None, 10, None)
        assert ids_of(found) == [task_id], text


def test_the_walk_stops_after_its_window_and_says_where_to_go_on(storage, monkeypatch):
    monkeypatch.setattr(browse, "WINDOW", 4)
    ids = [submit(storage, now=T0 + i / 1000) for i in range(10)]
    storage.cancel(ids[1], now=T0 + 1)
    first = storage.find_tasks(TaskFilter(status="cancelled"), None, 5, browse.INDEXED_MAX + 1)
    assert (first.tasks, first.next_before, first.window_ended) == ([], ids[6], True)
    second = storage.find_tasks(TaskFilter(status="cancelled"), ids[6], 5, browse.INDEXED_MAX + 1)
    assert (second.tasks, second.next_before, second.window_ended) == ([], ids[2], True)
    third = storage.find_tasks(TaskFilter(status="cancelled"), ids[2], 5, browse.INDEXED_MAX + 1)
    assert (ids_of(third), third.next_before, third.window_ended) == ([ids[1]], None, False)
    # the index path finds it at once
    indexed = storage.find_tasks(TaskFilter(status="cancelled"), None, 5, 1)
    assert ids_of(indexed) == [ids[1]]


def test_bulk_retry_moves_every_failed_task_the_filter_matches(storage, mixed, monkeypatch):
    monkeypatch.setattr(browse, "BULK_BATCH", 1)  # one task per transaction: the loop runs
    failed = ids_of(storage.find_tasks(TaskFilter(status="failed"), None, 50, None))
    assert storage.count_matching(TaskFilter(status="failed", text="nothing like it")) == 0
    assert storage.count_matching(TaskFilter(status="failed")) == 2
    moved = storage.move_matching("retry", TaskFilter(status="failed"), now=T0 + 5)
    assert moved == {("b", "sleep"): 1, ("b", "compute"): 1}, moved
    for task_id in failed:
        task = storage.get(task_id)
        assert (task["status"], task["attempts"], task["error"]) == ("pending", 0, None)
    assert storage.count_matching(TaskFilter(status="failed")) == 0


def test_bulk_cancel_moves_only_the_pending_tasks_the_filter_matches(storage, mixed):
    where = TaskFilter(status="pending", queue="a")
    matching = set(ids_of(storage.find_tasks(where, None, 50, None)))
    others = set(ids_of(storage.find_tasks(TaskFilter(status="pending", queue="b"), None, 50, 0)))
    assert storage.count_matching(where) == len(matching) > 0
    moved = storage.move_matching("cancel", where, now=T0 + 5)
    assert sum(moved.values()) == len(matching) and {q for q, _ in moved} == {"a"}, moved
    assert {storage.get(t)["status"] for t in matching} == {"cancelled"}
    assert {storage.get(t)["status"] for t in others} == {"pending"}
    # a bulk retry takes failed tasks only: the cancelled ones stay
    assert not storage.move_matching("retry", TaskFilter(queue="a"), now=T0 + 6)


def test_finished_tasks_are_counted_by_queue_status_and_minute(storage):
    a, b = submit(storage, queue="a", max_retries=0), submit(storage, queue="a", max_retries=0)
    for c, (status, at) in zip(
        claim(storage, "w1", T0, max_tasks=2, queues=("a",)),
        (("completed", T0 + 30), ("failed", T0 + 90)),
        strict=True,
    ):
        finish(storage, c["task_id"], c["lease_token"], status, error="x", now=at)
    rows = {(r["queue"], r["status"], int(r["minute"])): r["n"] for r in storage.finished_since(T0)}
    assert rows == {
        ("a", "completed", int((T0 + 30) // 60)): 1,
        ("a", "failed", int((T0 + 90) // 60)): 1,
    }, rows
    assert storage.finished_since(T0 + 91) == []
    assert {storage.get(a)["status"], storage.get(b)["status"]} == {"completed", "failed"}


def test_each_queues_oldest_pending_task(storage):
    submit(storage, queue="a", now=T0)
    submit(storage, queue="a", now=T0 + 5)
    submit(storage, queue="b", now=T0 + 7)
    submit(storage, queue="c", now=T0, delay=100)  # not ready: its run_at is later
    assert storage.oldest_pending(["a", "b", "c", "none"]) == {
        "a": T0,
        "b": T0 + 7,
        "c": T0 + 100,
    }
    stats = storage.stats(now=T0 + 10, dead_after=FOREVER)
    assert stats["queue_oldest_pending_age_seconds"] == {"a": 10.0, "b": 3.0}
    assert stats["oldest_pending_age_seconds"] == 10.0


def test_a_heartbeat_records_the_workers_concurrency(storage):
    storage.heartbeat("w1", "i1", [], now=T0, lease_s=30, concurrency=4)
    storage.heartbeat("w1", "i1", [], now=T0 + 1, lease_s=30)  # not said: kept
    [w] = storage.workers(now=T0 + 2, dead_after=FOREVER)
    assert w["concurrency"] == 4


def test_active_counts_are_the_pending_and_in_progress_tasks_by_queue(storage, mixed):
    counts = {(r["queue"], r["status"]): r["n"] for r in storage.active_counts()}
    stats = storage.stats(now=T0 + 2, dead_after=FOREVER)["queues"]
    assert counts == {
        (queue, status): stats[queue][status]
        for queue in stats
        for status in ("pending", "in_progress")
        if stats[queue][status]
    }
    assert sum(counts.values()) == 6  # twelve, less four completed and two failed
