"""The schedules' storage operations, on both backends (the fixtures of test_contract.py):
create, read, update, delete, and the firing of a tick, which exactly one of any number
of concurrent firings wins (compare-and-set of next_run_at, then the tick's idempotency
key)."""

from __future__ import annotations

import threading

import pytest

from dispatcher.errors import Conflict, ScheduleNotFound, http_status
from dispatcher.storage import NewTask
from dispatcher.storage.schedules import tick_key
from tests.storage.test_contract import T0, config, storage  # noqa: F401 (fixtures)

DEFINITION = {
    "cron": None,
    "every": 60,
    "timezone": "UTC",
    "catch_up": "one",
    "task": {"type": "sleep", "payload": {"duration": 1}},
}
TICK = T0 + 60
TASK = NewTask("sleep", {"duration": 1}, queue="cron")


def make(storage, name="nightly", next_run_at=TICK, enabled=True):  # noqa: F811
    return storage.create_schedule(name, DEFINITION, enabled, next_run_at, now=T0)


def test_a_schedule_is_created_read_listed_and_deleted(storage):  # noqa: F811
    made = make(storage)
    assert made == {
        "name": "nightly",
        "definition": DEFINITION,
        "enabled": True,
        "next_run_at": TICK,
        "last_run_at": None,
        "last_tick": None,
        "last_task_id": None,
        "error": None,
        "created_at": T0,
        "updated_at": T0,
    }
    make(storage, "b-second", enabled=False, next_run_at=None)
    assert storage.get_schedule("nightly") == made
    assert [s["name"] for s in storage.schedules()] == ["b-second", "nightly"]
    with pytest.raises(Conflict) as taken:
        make(storage)
    assert http_status(taken.value) == 409 and "already exists" in str(taken.value)
    storage.delete_schedule("nightly")
    for missing in ("nightly", "nul\x00name"):
        with pytest.raises(ScheduleNotFound) as gone:
            storage.get_schedule(missing)
        assert http_status(gone.value) == 404
        with pytest.raises(ScheduleNotFound):
            storage.delete_schedule(missing)
        with pytest.raises(ScheduleNotFound):
            storage.update_schedule(missing, DEFINITION, True, TICK, now=T0)


def test_an_update_replaces_the_definition_and_its_error(storage):  # noqa: F811
    made = make(storage)
    assert storage.fire_schedule("nightly", TICK, T0, TICK + 60, [], TICK, error="bad") == []
    assert storage.get_schedule("nightly")["error"] == "bad"
    changed = {**DEFINITION, "every": 30}
    after = storage.update_schedule("nightly", changed, False, None, now=T0 + 5, version=T0)
    assert (after["definition"], after["enabled"], after["next_run_at"]) == (changed, False, None)
    assert (after["error"], after["updated_at"]) == (None, T0 + 5)
    # an update made from a stale read is refused
    with pytest.raises(Conflict):
        storage.update_schedule("nightly", DEFINITION, True, TICK, now=T0 + 6, version=T0)
    assert made["updated_at"] == T0
    # the caller says what the new definition's error is
    kept = storage.update_schedule("nightly", changed, True, TICK, now=T0 + 7, error="worse")
    assert kept["error"] == "worse"


def test_due_schedules_and_the_earliest_next_run(storage):  # noqa: F811
    make(storage, "a", next_run_at=TICK)
    make(storage, "b", next_run_at=TICK + 30)
    make(storage, "off", next_run_at=None, enabled=False)
    assert storage.due_schedules(TICK - 1) == []
    assert [s["name"] for s in storage.due_schedules(TICK + 30)] == ["a", "b"]
    assert storage.next_schedule_at() == TICK


def test_a_firing_creates_the_ticks_tasks_marked_with_schedule_and_tick(storage):  # noqa: F811
    make(storage)
    ticks = [TICK, TICK + 60]
    ids = storage.fire_schedule(
        "nightly", TICK, T0, TICK + 120, [(t, TASK) for t in ticks], now=TICK + 61
    )
    assert len(ids) == 2
    tasks = [storage.get(i) for i in ids]
    assert [t["schedule"] for t in tasks] == [
        {"name": "nightly", "tick": "2023-11-14T22:14:20Z"},
        {"name": "nightly", "tick": "2023-11-14T22:15:20Z"},
    ]
    assert {(t["status"], t["queue"], t["type"]) for t in tasks} == {("pending", "cron", "sleep")}
    after = storage.get_schedule("nightly")
    assert (after["next_run_at"], after["last_run_at"]) == (TICK + 120, TICK + 61)
    assert (after["last_tick"], after["last_task_id"]) == (TICK + 60, ids[1])
    # a client's task has no schedule
    [(client_task, _)] = storage.submit([TASK], now=T0)
    assert storage.get(client_task)["schedule"] is None
    listed = {t["task_id"]: t["schedule"] for t in storage.list_tasks(None, None, 10, 0)}
    assert listed == {client_task: None, ids[0]: tasks[0]["schedule"], ids[1]: tasks[1]["schedule"]}


def test_a_firing_from_a_stale_read_fires_nothing(storage):  # noqa: F811
    make(storage)
    assert storage.fire_schedule("nightly", TICK, T0, TICK + 60, [(TICK, TASK)], TICK) != []
    # the same tick again (another process read the same row): lost, nothing created
    assert storage.fire_schedule("nightly", TICK, T0, TICK + 60, [(TICK, TASK)], TICK) is None
    # a firing from before an update (its definition's version) loses too
    storage.update_schedule("nightly", DEFINITION, True, TICK + 60, now=T0 + 1)
    assert storage.fire_schedule("nightly", TICK + 60, T0, TICK + 120, [], TICK + 60) is None
    # a disabled schedule is not fired
    storage.update_schedule("nightly", DEFINITION, False, TICK + 60, now=T0 + 2)
    assert storage.fire_schedule("nightly", TICK + 60, T0 + 2, TICK + 120, [], TICK) is None
    assert len(storage.list_tasks(None, None, 10, 0)) == 1


def test_the_ticks_idempotency_key_is_a_second_guard(storage):  # noqa: F811
    """Even a firing that wins the compare-and-set cannot create a tick's task twice (a
    schedule deleted and made again, a clock set back)."""
    make(storage)
    [first] = storage.fire_schedule("nightly", TICK, T0, TICK + 60, [(TICK, TASK)], TICK)
    storage.delete_schedule("nightly")
    make(storage)  # its next run is TICK again
    assert storage.fire_schedule("nightly", TICK, T0, TICK + 60, [(TICK, TASK)], TICK) == []
    [(again, created)] = storage.submit(
        [NewTask("sleep", {"duration": 1}, idempotency_key=tick_key("nightly", TICK))], TICK
    )
    assert (again, created) == (first, False)
    assert storage.get_schedule("nightly")["last_task_id"] is None


def test_concurrent_firings_of_one_tick_exactly_one_wins(storage):  # noqa: F811
    """Eight threads (eight connections: on PostgreSQL, eight transactions racing for the
    row) fire the same tick; one creates its task, seven find it moved."""
    make(storage)
    start = threading.Barrier(8)
    outcomes: list = []

    def fire():
        start.wait()
        outcomes.append(
            storage.fire_schedule("nightly", TICK, T0, TICK + 60, [(TICK, TASK)], now=TICK)
        )

    threads = [threading.Thread(target=fire) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    won = [o for o in outcomes if o is not None]
    assert len(outcomes) == 8 and len(won) == 1 and len(won[0]) == 1, outcomes
    assert [t["task_id"] for t in storage.list_tasks(None, None, 10, 0)] == won[0]
