"""/schedules through Flask's test client, on both backends: what is stored and shown,
every bad input a 400 naming its field (nothing stored), PUT's rules, and firings (by
the scheduler's own fire_due, at moments the test picks) of good and broken templates."""

from __future__ import annotations

import logging
import threading

import pytest

import tasks
from common.config import Config
from dispatcher.app import create_app
from dispatcher.scheduler import MAX_SLEEP_S, Scheduler, apply_file, fire_due
from tests.pg import fresh_schema_url

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z, a whole minute
PRIMES = {"type": "primes", "payload": {"limit": 100}}


class Clock:
    def __init__(self):
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "postgres"])
def app(request, tmp_path):
    clock = Clock()

    def build(url):
        made = create_app(Config(database_url=url), clock=clock, background=False)
        made.clock = clock
        return made

    if request.param == "sqlite":
        made = build(f"sqlite:///{tmp_path}/tasks.db")
        yield made
    else:
        with fresh_schema_url() as url:
            made = build(url)
            yield made
    context = made.extensions["taskqueue"]
    context.wakeup.stop()
    context.storage.close()


@pytest.fixture
def api(app):
    return app.test_client()


def fire(app, at: float) -> int:
    app.clock.now = at
    c = app.extensions["taskqueue"]
    return fire_due(c.storage, c.config, c.registry, now=at)


def test_a_schedule_is_created_shown_and_fires(app, api):
    body = {"name": "every-10", "every": 10, "task": {**PRIMES, "queue": "cron"}}
    made = api.post("/schedules", json=body)
    assert made.status_code == 201, made.get_json()
    shown = made.get_json()
    assert shown == {
        "name": "every-10",
        "cron": None,
        "every": 10,
        "timezone": "UTC",
        "catch_up": "one",
        "task": {**PRIMES, "queue": "cron"},
        "enabled": True,
        "next_run_at": "2027-01-15T08:00:10.000+00:00",
        "last_run_at": None,
        "last_tick": None,
        "last_task_id": None,
        "error": None,
        "created_at": "2027-01-15T08:00:00.000+00:00",
        "updated_at": "2027-01-15T08:00:00.000+00:00",
    }
    assert api.get("/schedules").get_json() == {"schedules": [shown]}
    assert api.get("/schedules/every-10").get_json() == shown
    assert fire(app, T0 + 9.9) == 0
    assert fire(app, T0 + 10.2) == 1
    assert fire(app, T0 + 10.3) == 0  # that tick is done
    after = api.get("/schedules/every-10").get_json()
    assert after["next_run_at"] == "2027-01-15T08:00:20.000+00:00"
    assert after["last_run_at"] == "2027-01-15T08:00:10.200+00:00"
    assert after["last_tick"] == "2027-01-15T08:00:10Z"
    task = api.get(f"/task/{after['last_task_id']}").get_json()
    assert task["schedule"] == {"name": "every-10", "tick": "2027-01-15T08:00:10Z"}
    assert (task["type"], task["queue"], task["payload"]["limit"]) == ("primes", "cron", 100)
    assert api.get("/tasks").get_json()["tasks"][0]["schedule"]["name"] == "every-10"
    metrics = api.get("/metrics").get_data(as_text=True)
    assert 'taskqueue_schedule_fires_total{schedule="every-10"}' in metrics
    gone = api.delete("/schedules/every-10")
    assert (gone.status_code, gone.get_json()) == (200, {"name": "every-10", "deleted": True})
    assert api.get("/schedules").get_json() == {"schedules": []}
    assert api.get(f"/task/{after['last_task_id']}").status_code == 200  # its tasks stay


def test_cron_in_a_time_zone(api):
    body = {"name": "nine", "cron": "0 9 * * *", "timezone": "America/New_York", "task": PRIMES}
    shown = api.post("/schedules", json=body).get_json()
    assert shown["next_run_at"] == "2027-01-15T14:00:00.000+00:00"  # 09:00 EST


GOOD = {"name": "s", "every": 5, "task": PRIMES}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"every": None}, "give exactly one of 'cron' and 'every'"),
        ({"cron": "* * * * *"}, "give exactly one of 'cron' and 'every'"),
        ({"every": 0}, "'every' must be between 1 and"),
        ({"every": "5"}, "'every' must be a whole number"),
        ({"every": None, "cron": "99 * * * *"}, "'cron' '99 * * * *' is not valid: Bad minute"),
        ({"every": None, "cron": "* * *"}, "is not valid: Wrong number of fields"),
        ({"timezone": "Nowhere/City"}, "'timezone' 'Nowhere/City' is not a known IANA"),
        ({"catch_up": "some"}, "'catch_up' must be 'all' or 'none' or 'one'"),
        ({"name": "a/b"}, "'name' must start with a letter or digit"),
        ({"name": ""}, "'name' must be a non-empty string"),
        ({"task": None}, "'task' is required"),
        ({"task": {"type": "nope"}}, "task: unknown task type 'nope'"),
        ({"task": {"type": "primes", "payload": {"limit": -1}}}, "task: "),
        ({"task": {**PRIMES, "idempotency_key": "k"}}, "'idempotency_key' is not allowed"),
        ({"task": {**PRIMES, "depends_on": ["#0"]}}, "'depends_on' is not allowed"),
        ({"task": {**PRIMES, "priority": 10**9}}, "task: 'priority' must be between"),
        ({"enabled": "yes"}, "'enabled'"),
        ({"color": "red"}, "unknown field 'color'"),
    ],
)
def test_bad_schedules_are_400_naming_the_field_and_store_nothing(api, change, message):
    body = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    answer = api.post("/schedules", json=body)
    assert answer.status_code == 400, answer.get_json()
    assert message in answer.get_json()["error"]
    assert api.get("/schedules").get_json() == {"schedules": []}


def test_409_for_a_taken_name_and_404_for_an_unknown_one(api):
    assert api.post("/schedules", json=GOOD).status_code == 201
    taken = api.post("/schedules", json=GOOD)
    assert (taken.status_code, taken.get_json()) == (409, {"error": "schedule s already exists"})
    for answer in (
        api.get("/schedules/nope"),
        api.put("/schedules/nope", json={"enabled": False}),
        api.delete("/schedules/nope"),
    ):
        assert (answer.status_code, answer.get_json()) == (
            404,
            {"error": "schedule nope not found"},
        )
    bad = api.put("/schedules/s", json={"every": -1})
    assert bad.status_code == 400 and api.get("/schedules/s").get_json()["every"] == 5
    renamed = api.put("/schedules/s", json={"name": "t"})
    assert renamed.status_code == 400 and "names stay" in renamed.get_json()["error"]


def test_put_replaces_the_fields_given_and_keeps_the_others(app, api):
    api.post("/schedules", json={**GOOD, "timezone": "Europe/Berlin", "catch_up": "all"})
    # a field alone: the rest, and the next run, stay
    sleep = {"type": "sleep", "payload": {"duration": 1}}
    changed = api.put("/schedules/s", json={"task": sleep}).get_json()
    assert (changed["every"], changed["timezone"], changed["catch_up"]) == (
        5,
        "Europe/Berlin",
        "all",
    )
    assert changed["task"] == sleep
    assert changed["next_run_at"] == "2027-01-15T08:00:05.000+00:00"
    # cron replaces every
    app.clock.now = T0 + 100
    cron = api.put("/schedules/s", json={"cron": "*/15 * * * *"}).get_json()
    assert (cron["cron"], cron["every"]) == ("*/15 * * * *", None)
    assert cron["next_run_at"] == "2027-01-15T08:15:00.000+00:00"  # the new timing's
    # paused: no next run, nothing fires; resumed: the first tick after now, no catch-up
    paused = api.put("/schedules/s", json={"enabled": False}).get_json()
    assert (paused["enabled"], paused["next_run_at"]) == (False, None)
    assert fire(app, T0 + 7200) == 0
    resumed = api.put("/schedules/s", json={"enabled": True}).get_json()
    assert resumed["next_run_at"] == "2027-01-15T10:15:00.000+00:00"


def test_a_template_made_invalid_is_marked_skipped_and_cleared_by_a_valid_put(app, api, caplog):
    """A task type gone from the registry (TASK_MODULES changed): the firing records the
    error, creates no task, moves to the next tick, logs one line; a PUT clears it."""
    context = app.extensions["taskqueue"]
    richer = tasks.Registry()
    richer.register("report", tasks.accept_object, lambda payload: payload)
    for task_type in tasks.registry.types():
        richer._add(task_type)
    context.registry = richer  # a dispatcher with TASK_MODULES naming "report"'s module
    made = api.post("/schedules", json={"name": "r", "every": 10, "task": {"type": "report"}})
    assert made.status_code == 201, made.get_json()
    assert fire(app, T0 + 10) == 1
    context.registry = tasks.registry  # ... restarted without it
    with caplog.at_level(logging.WARNING, logger="dispatcher"):
        assert fire(app, T0 + 20) == 0
        assert fire(app, T0 + 30) == 0
    broken = api.get("/schedules/r").get_json()
    assert broken["error"].startswith("task: unknown task type 'report'")
    assert broken["next_run_at"] == "2027-01-15T08:00:40.000+00:00"
    assert broken["last_tick"] == "2027-01-15T08:00:10Z"  # the last one that made a task
    assert len(api.get("/tasks").get_json()["tasks"]) == 1
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert lines == [f"schedule r skips its ticks: {broken['error']}"]
    metrics = api.get("/metrics").get_data(as_text=True)
    assert 'taskqueue_schedule_errors_total{schedule="r"}' in metrics
    # a broken schedule can be paused and resumed; its error stays until its task is fixed
    paused = api.put("/schedules/r", json={"enabled": False})
    assert paused.status_code == 200 and paused.get_json()["error"] == broken["error"]
    assert api.put("/schedules/r", json={"enabled": True}).get_json()["error"] == broken["error"]
    fixed = api.put("/schedules/r", json={"task": PRIMES}).get_json()
    assert fixed["error"] is None
    assert fire(app, T0 + 40) == 1


def test_a_schedules_file_applied_again_and_by_several_dispatchers_at_once(app, api):
    """apply_file (SCHEDULES_FILE at start): an entry already as stored writes nothing;
    a pause by an operator survives; dispatchers starting together (threads here, each
    with its own connections) create each schedule once and all start."""
    c = app.extensions["taskqueue"]
    entries = [{"name": f"s{i}", "every": 60, "task": PRIMES} for i in range(5)]
    results: list = []

    def apply():
        try:
            results.append(apply_file(c.storage, entries, c.config, c.registry, now=T0))
        except Exception as exc:  # the test looks at every outcome
            results.append(exc)

    threads = [threading.Thread(target=apply) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(isinstance(r, tuple) for r in results) and len(results) == 4, results
    assert sorted(name for created, _ in results for name in created) == [f"s{i}" for i in range(5)]
    assert [r[1] for r in results] == [[]] * 4  # the same entries: nothing to update
    api.put("/schedules/s0", json={"enabled": False})
    before = api.get("/schedules/s0").get_json()
    assert apply_file(c.storage, entries, c.config, c.registry, now=T0 + 5) == ([], [])
    assert api.get("/schedules/s0").get_json() == before  # still paused, not written
    changed = [{**entries[0], "every": 30}, {**entries[1], "enabled": False}]
    assert apply_file(c.storage, changed, c.config, c.registry, now=T0 + 6) == ([], ["s0", "s1"])
    s0, s1 = api.get("/schedules/s0").get_json(), api.get("/schedules/s1").get_json()
    assert (s0["every"], s0["enabled"], s1["enabled"]) == (30, False, False)


def test_the_scheduler_sleeps_until_the_earliest_next_run_at_most_a_second(app, api):
    c = app.extensions["taskqueue"]
    scheduler = Scheduler(c.storage, c.config, c.registry, app.clock)
    assert scheduler.step() == MAX_SLEEP_S  # no schedule: look again in a second
    api.post("/schedules", json={"name": "soon", "every": 10, "task": PRIMES})
    app.clock.now = T0 + 9.75
    assert scheduler.step() == pytest.approx(0.25)  # wakes at the tick
    app.clock.now = T0 + 10.001
    assert scheduler.step() == MAX_SLEEP_S  # fired; the next is 10 s away
    assert api.get("/schedules/soon").get_json()["last_tick"] == "2027-01-15T08:00:10Z"
