"""Databases made by the code before this one, committed under tests/fixtures/: schema
version 2 (commit 9a9130d), version 3 (commit faa55a7), version 4 (commit 6c4aaab),
version 5 (commit ba15159) and version 6 (commit 65698b3; these three made by
tests/fixtures/make_schema_fixture.py). Opened by this code they are migrated once and
keep every task, result, error, attempt history, idempotency key, worker and live
lease; an old worker's lease goes on working, and new columns start empty. Version 7's
audit table is the same whether a database was made new or migrated to it.

schema-vN.db and schema-vN-postgres.sql (pg_dump of schema tq_fixture_vN) hold the same
story: four tasks submitted at T0 (one with idempotency_key "key-1"), worker w-old
(instance inst-1) claimed three at T0 + 1 with a 3,600 s lease, completed one, failed one
(max_retries 0: failed for good), and heart-beat the third, still in progress; the fourth
(queue slow) is pending. Version 3 also knows the queues w-old claimed from; version 4
its concurrency (2), and has a fifth task, cancelled before the claim."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from common.config import Config
from dispatcher.storage import AuditEntry, NewTask, Result, open_storage
from dispatcher.storage.postgres import SCHEMA_VERSION as PG_VERSION
from dispatcher.storage.sqlite import SCHEMA_VERSION
from tests.pg import connect, fresh_schema_url

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
T0 = 1_800_000_000.0


def leases(rows) -> dict[str, tuple]:
    return {r[0]: (r[1], r[2]) for r in rows}


def check_kept(storage, lease_of: dict[str, tuple], version: int) -> None:
    tasks = {t["task_id"]: t for t in storage.list_tasks(None, None, 100, 0)}
    by_status = {}
    for t in tasks.values():
        by_status.setdefault(t["status"], []).append(t)
    statuses = ["completed", "failed", "in_progress", "pending"]
    if version >= 4:
        statuses = ["cancelled", *statuses]
        [cancelled] = by_status["cancelled"]
        assert storage.get(cancelled["task_id"])["history"] == []
    assert sorted(by_status) == statuses, by_status
    # no task of an older release has reported progress
    assert [storage.get(t)["progress"] for t in tasks] == [None] * len(tasks)
    [done] = by_status["completed"]
    assert storage.get(done["task_id"])["result"] == {"result": 4}
    [failed] = by_status["failed"]
    assert storage.get(failed["task_id"])["error"] == "boom"
    assert [h["outcome"] for h in storage.get(failed["task_id"])["history"]] == ["failed"]
    [pending] = by_status["pending"]
    assert (pending["queue"], pending["priority"]) == ("slow", 5)
    # the idempotency key still names its task
    [(again, created)] = storage.submit(
        [NewTask("compute", {"operation": "double", "value": 2}, idempotency_key="key-1")],
        now=T0 + 10,
    )
    assert (again, created) == (done["task_id"], False)
    # the live lease of the old worker: extended by its heartbeat, then its result counts
    [running] = by_status["in_progress"]
    token, worker = lease_of[running["task_id"]]
    assert worker == "w-old"
    assert storage.heartbeat("w-old", "inst-1", [running["task_id"]], T0 + 20, 3600) == []
    # ...and a new worker's progress is stored for it, and kept once it is finished
    half = {running["task_id"]: {"fraction": 0.5, "message": "halfway"}}
    storage.heartbeat("w-old", "inst-1", None, T0 + 20.5, 3600, progress=half)
    progress = {"fraction": 0.5, "message": "halfway", "updated_at": T0 + 20.5}
    assert storage.get(running["task_id"])["progress"] == progress
    result = Result(running["task_id"], token, "w-old", "completed", result={"result": 2})
    assert storage.finish([result], now=T0 + 21) == ["completed"]
    [w] = storage.workers(now=T0 + 22, dead_after=60)
    assert storage.get(running["task_id"])["progress"] == progress
    assert (w["worker_id"], w["status"], w["attempts_completed"]) == ("w-old", "alive", 2)
    # version 2 did not know the queues, version 3 did; version 4 knew the concurrency
    assert w["queues"] == (None if version == 2 else ["default"])
    assert w["concurrency"] == (2 if version >= 4 else None)
    storage.claim("w-old", "inst-1", ("default", "slow"), 1, now=T0 + 23, lease_s=60)
    [w] = storage.workers(now=T0 + 24, dead_after=60)
    assert w["queues"] == ["default", "slow"]
    # version 6: every task kept has no expiry; queue controls and expiry work
    assert [storage.get(t)["expires_at"] for t in tasks] == [None] * len(tasks)
    assert storage.set_queue("slow", {"paused": True}, now=T0 + 25)["paused"]
    new = NewTask("sleep", {"duration": 1}, queue="slow", expires_in=1)
    [(late, _)] = storage.submit([new], now=T0 + 25)
    assert storage.claim("w-new", "", ("slow",), 5, now=T0 + 25.5, lease_s=60) == []
    report = storage.reap(now=T0 + 27, dead_after=10.0**9, retention_s=0)
    assert report.unstarted == [("slow", "sleep")]
    assert storage.get(late)["error"] == "expired: not started within 1 s"
    queues = {q["name"]: q for q in storage.queues(now=T0 + 27)}
    assert queues["slow"]["paused"] and queues["slow"]["counts"]["cancelled"] == 1
    assert not queues["default"]["paused"] and queues["default"]["counts"]["completed"] == 2
    check_schedules(storage, tasks)
    check_dependencies(storage, done["task_id"], failed["task_id"])
    check_audit(storage)


def check_audit(storage) -> None:
    """Version 7: the audit trail starts empty, records, de-duplicates and is reaped."""
    assert storage.audit_records(10, 0) == []
    entry = AuditEntry("alice", "admin", "queue.update", "queue slow", "r-1", "10.0.0.1")
    assert storage.record_audit(entry, now=T0 + 40, key="once")
    assert not storage.record_audit(entry, now=T0 + 41, key="once")
    [record] = storage.audit_records(10, 0)
    assert record["request_id"] == "r-1"
    assert (record["action"], record["at"], record["client"]) == (
        "queue.update",
        T0 + 40,
        "10.0.0.1",
    )
    report = storage.reap(now=T0 + 50, dead_after=10.0**9, retention_s=0, audit_retention_s=5)
    assert report.audit_deleted == 1 and storage.audit_records(10, 0) == []


def check_schedules(storage, old_tasks: dict) -> None:
    """Version 6's periodic tasks work on a migrated database; older tasks have none."""
    assert [storage.get(t)["schedule"] for t in old_tasks] == [None] * len(old_tasks)
    definition = {"cron": None, "every": 60, "timezone": "UTC", "catch_up": "one", "task": {}}
    storage.create_schedule("upgraded", definition, True, T0 + 60, now=T0 + 30)
    task = NewTask("sleep", {"duration": 1})
    [fired] = storage.fire_schedule(
        "upgraded", T0 + 60, T0 + 30, T0 + 120, [(T0 + 60, task)], T0 + 61
    )
    assert storage.get(fired)["schedule"] == {"name": "upgraded", "tick": "2027-01-15T08:01:00Z"}
    assert storage.get_schedule("upgraded")["last_task_id"] == fired


def check_dependencies(storage, done: str, failed: str) -> None:
    """Version 6: tasks of the old database as dependencies of new ones."""
    new = [
        NewTask("compute", {"operation": "double", "value": 1}, queue="q6", depends_on=[done]),
        NewTask("compute", {"operation": "double", "value": 1}, queue="q6", depends_on=[failed]),
        NewTask("compute", {"operation": "double", "value": 1}, queue="q6", depends_on=[0]),
    ]
    [(ready, _), (gone, _), (waiting, _)] = storage.submit(new, now=T0 + 30)
    assert [storage.status_of(t) for t in (ready, gone, waiting)] == [
        "pending",
        "cancelled",
        "waiting",
    ]
    assert storage.get(gone)["error"] == f"dependency {failed} failed"
    [claimed] = storage.claim("w-new", "", ("q6",), 5, now=T0 + 31, lease_s=60)
    assert claimed["dependencies"] == {done: {"result": 4}}
    item = Result(ready, claimed["lease_token"], "w-new", "completed", result=1)
    assert storage.finish([item], now=T0 + 32) == ["completed"]
    assert storage.status_of(waiting) == "pending"
    assert storage.stats(now=T0 + 33, dead_after=60)["tasks"]["waiting"] == 0


@pytest.mark.parametrize("version", [2, 3, 4, 5, 6])
def test_an_older_sqlite_file_is_migrated_and_keeps_everything(tmp_path, version):
    path = tmp_path / "tasks.db"
    shutil.copy(FIXTURES / f"schema-v{version}.db", path)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == version
        lease_of = leases(
            db.execute("SELECT id, lease_token, worker_id FROM tasks WHERE status = 'in_progress'")
        )
    db.close()
    storage = open_storage(Config(database_url=f"sqlite:///{path}"))
    try:
        check_kept(storage, lease_of, version)
    finally:
        storage.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7
        assert audit_objects(db) == audit_objects(new_sqlite_file(tmp_path))
    db.close()


def audit_objects(db) -> list[tuple]:
    """The audit table's SQLite objects (table, indexes) as the file stores them."""
    query = "SELECT type, name, sql FROM sqlite_master WHERE tbl_name = 'audit' ORDER BY name"
    return db.execute(query).fetchall()


def new_sqlite_file(tmp_path: Path) -> sqlite3.Connection:
    path = tmp_path / "new.db"
    open_storage(Config(database_url=f"sqlite:///{path}")).close()
    return sqlite3.connect(path)


def load_postgres_fixture(url: str, schema: str, version: int) -> None:
    """The pg_dump of tq_fixture_vN, into `schema` (psql's \\ lines left out)."""
    text = (FIXTURES / f"schema-v{version}-postgres.sql").read_text()
    script = "\n".join(line for line in text.splitlines() if not line.startswith("\\"))
    with connect() as admin:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.execute(script.replace(f"tq_fixture_v{version}", schema))


@pytest.mark.parametrize("version", [2, 3, 4, 5, 6])
def test_an_older_postgresql_schema_is_migrated_and_keeps_everything(version):
    with fresh_schema_url() as url:
        schema = url.rsplit("%3D", 1)[1]
        load_postgres_fixture(url, schema, version)
        with connect(url) as db:
            db.execute(f"SET search_path = {schema}")
            assert db.execute("SELECT schema_version FROM meta").fetchone() == (version,)
            lease_of = leases(
                db.execute(
                    "SELECT id, lease_token, worker_id FROM tasks WHERE status = 'in_progress'"
                ).fetchall()
            )
        storage = open_storage(Config(database_url=url))
        try:
            check_kept(storage, lease_of, version)
        finally:
            storage.close()
        with connect(url) as db:
            db.execute(f"SET search_path = {schema}")
            assert db.execute("SELECT schema_version FROM meta").fetchone() == (PG_VERSION,)
            migrated = pg_audit_objects(db, schema)
        with fresh_schema_url() as new:
            open_storage(Config(database_url=new)).close()
            with connect(new) as db:
                assert migrated == pg_audit_objects(db, new.rsplit("%3D", 1)[1])
    assert PG_VERSION == 7


def pg_audit_objects(db, schema: str) -> tuple[list, list]:
    """The audit table's columns (name, type, nullable, default, identity) and indexes
    (their definitions, the schema's name left out)."""
    columns = db.execute(
        """SELECT column_name, data_type, is_nullable, column_default, is_identity,
                  identity_generation, identity_cycle
             FROM information_schema.columns
            WHERE table_schema = %s AND table_name = 'audit' ORDER BY ordinal_position""",
        (schema,),
    ).fetchall()
    indexes = db.execute(
        "SELECT indexname, indexdef FROM pg_indexes"
        " WHERE schemaname = %s AND tablename = 'audit' ORDER BY indexname",
        (schema,),
    ).fetchall()
    assert columns and indexes
    return columns, [(name, d.replace(f"{schema}.", "")) for name, d in indexes]
