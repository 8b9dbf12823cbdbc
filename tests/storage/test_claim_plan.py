"""The claim at scale: 200,000 pending tasks, loaded through the storage API, are served
by the partial index `tasks_ready`, never by a scan of the table or a sort, and the claim
takes the highest priority first, then the oldest, of its queue, and only what is due."""

from __future__ import annotations

import random
import sqlite3
from contextlib import closing

import pytest

from common.config import Config
from dispatcher.storage import NewTask, open_storage
from dispatcher.storage.sqlite import CLAIM, FINISHED_SINCE, OLDEST_PENDING_IN, SET_PROGRESS

T0 = 1_700_000_000.0
BATCHES, BATCH = 20, 10_000  # 200,000 tasks, one storage.submit per batch
SPECIAL = 100  # tasks of each kind below, among the 200,000
LATER = T0 + BATCHES  # every batch is due by then
SLEEP = {"duration": 1}


def _specials(rng: random.Random) -> dict[int, tuple[str, NewTask]]:
    """Where (batch * BATCH + position) each special task goes, and what it is:
    - early: priority 50 in batches 0..18 (older), the claim's first 100;
    - late: priority 50 in the last batch (newest), the claim's next 100;
    - other: priority 1000 in queue `other`, never claimed from `default`;
    - future: priority 1000, delayed an hour, not due yet."""
    last = (BATCHES - 1) * BATCH
    slots = iter(rng.sample(range(last), 3 * SPECIAL))
    late = iter(rng.sample(range(last, BATCHES * BATCH), SPECIAL))
    kinds = {
        "early": (slots, NewTask("sleep", SLEEP, priority=50)),
        "late": (late, NewTask("sleep", SLEEP, priority=50)),
        "other": (slots, NewTask("sleep", SLEEP, queue="other", priority=1000)),
        "future": (slots, NewTask("sleep", SLEEP, priority=1000, delay=3600)),
    }
    placed = {}
    for kind, (where, task) in kinds.items():
        for _ in range(SPECIAL):
            placed[next(where)] = (kind, task)
    return placed


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """(storage, database path, {kind: set of task ids}) with 200,000 pending tasks."""
    path = tmp_path_factory.mktemp("claim-plan") / "tasks.db"
    storage = open_storage(Config(database_url=f"sqlite:///{path}"))
    rng = random.Random(20240601)
    specials = _specials(rng)
    kinds: dict[str, set[str]] = {kind: set() for kind in ("early", "late", "other", "future")}
    for b in range(BATCHES):
        tasks, marks = [], []
        for n in range(b * BATCH, (b + 1) * BATCH):
            kind, task = specials.get(n, (None, None))
            tasks.append(task or NewTask("sleep", SLEEP, priority=rng.randrange(10)))
            marks.append(kind)
        ids = storage.submit(tasks, now=T0 + b)  # run_at = created_at = T0 + b
        for (task_id, created), kind in zip(ids, marks, strict=True):
            assert created
            if kind:
                kinds[kind].add(task_id)
    yield storage, path, kinds
    storage.close()


def test_the_claim_uses_the_ready_index_without_scan_or_sort(loaded):
    storage, path, _ = loaded
    assert storage.stats(now=LATER, dead_after=60)["tasks"]["pending"] == BATCHES * BATCH
    args = {"worker_id": "w1", "queue": "default", "now": LATER, "lease_s": 30, "max_tasks": 100}
    with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
        plan = [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {CLAIM}", args)]
    shown = "\n".join(plan)
    assert any("INDEX tasks_ready" in step for step in plan), shown
    assert not any("SCAN tasks" in step for step in plan), shown
    assert not any("TEMP B-TREE" in step for step in plan), shown


def test_stats_reads_each_queues_oldest_pending_task_from_its_index(loaded):
    storage, path, _ = loaded
    with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
        plan = [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {OLDEST_PENDING_IN}", ("x",))]
    assert plan == ["SEARCH tasks USING INDEX tasks_pending_age (queue=?)"], "\n".join(plan)
    stats = storage.stats(now=LATER, dead_after=60)
    assert stats["oldest_pending_age_seconds"] == pytest.approx(LATER - T0)  # the first batch
    ages = stats["queue_oldest_pending_age_seconds"]
    assert sorted(ages) == ["default", "other"], ages
    assert ages["default"] == pytest.approx(LATER - T0)


def test_the_tasks_finished_lately_are_read_from_their_index(loaded):
    """Left to itself the planner counted them through tasks_counts, reading every row
    of a status: 3.6 s at 10^6 tasks when none had finished in the last minute."""
    _, path, _ = loaded
    with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
        plan = [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {FINISHED_SINCE}", (T0,))]
    assert plan[0] == "SEARCH tasks USING INDEX tasks_finished (finished_at>?)", "\n".join(plan)


def test_a_heartbeats_progress_finds_each_task_by_its_id(loaded):
    """Left to itself the planner walked all the worker's running tasks (tasks_by_worker)
    and searched the reported ones for each."""
    _, path, _ = loaded
    args = {"progress": '{"a": "{}"}', "worker_id": "w1"}
    with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
        plan = [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {SET_PROGRESS}", args)]
    assert plan[-1] == "SEARCH tasks USING INDEX sqlite_autoindex_tasks_1 (id=?)", "\n".join(plan)


def test_the_claim_takes_the_highest_priority_then_the_oldest_of_its_queue(loaded):
    storage, _, kinds = loaded
    first = storage.claim("w1", "", ("default",), max_tasks=100, now=LATER, lease_s=30)
    assert {t["task_id"] for t in first} == kinds["early"]
    second = storage.claim("w1", "", ("default",), max_tasks=100, now=LATER, lease_s=30)
    assert {t["task_id"] for t in second} == kinds["late"]
    priorities = {storage.get(t["task_id"])["priority"] for t in [*first, *second]}
    assert priorities == {50}
    third = storage.claim("w1", "", ("default",), max_tasks=100, now=LATER, lease_s=30)
    assert not {t["task_id"] for t in third} & kinds["future"]  # priority 1000, not due
    assert max(storage.get(t["task_id"])["priority"] for t in third) < 10
    elsewhere = storage.claim("w2", "", ("other",), max_tasks=200, now=LATER, lease_s=30)
    assert {t["task_id"] for t in elsewhere} == kinds["other"]


def test_the_postgres_claim_uses_the_ready_index_without_scan_or_sort():
    """The same check on PostgreSQL: 20,000 tasks in ten queues, statistics fresh, and
    the claim's pick reads the partial index `tasks_ready` in its order (no Sort, no
    Seq Scan), and locks with SKIP LOCKED."""
    from dispatcher.storage.postgres import CLAIM as PG_CLAIM
    from tests.pg import connect, fresh_schema_url

    rng = random.Random(7)
    with fresh_schema_url() as url:
        storage = open_storage(Config(database_url=url))
        try:
            tasks = [
                NewTask("sleep", SLEEP, queue=f"q{n % 10}", priority=rng.randrange(10))
                for n in range(20_000)
            ]
            storage.submit(tasks, now=T0)
        finally:
            storage.close()
        args = {"worker_id": "w1", "queue": "q3", "now": LATER, "lease_s": 30, "max_tasks": 100}
        with connect(url) as db:
            db.execute("ANALYZE tasks")
            with db.transaction(force_rollback=True):  # EXPLAIN only plans; roll back anyway
                plan = [row[0] for row in db.execute(f"EXPLAIN {PG_CLAIM}", args)]
    shown = "\n".join(plan)
    assert any("tasks_ready" in step for step in plan), shown
    assert not any("Seq Scan on tasks" in step for step in plan), shown
    assert not any("Sort" in step for step in plan), shown
    assert any("LockRows" in step for step in plan), shown
