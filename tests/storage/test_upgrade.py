"""Databases made by the code before this one (schema version 2, commit 9a9130d),
committed under tests/fixtures/: opened by this code they are migrated once and keep
every task, result, error, attempt history, idempotency key, worker and live lease; an
old worker's lease goes on working.

schema-v2.db and schema-v2-postgres.sql (pg_dump of schema tq_fixture_v2) hold the same
story: four tasks submitted at T0 (one with idempotency_key "key-1"), worker w-old
(instance inst-1) claimed three at T0 + 1 with a 3,600 s lease, completed one, failed one
(max_retries 0: failed for good), and heart-beat the third, still in progress; the fourth
(queue slow) is pending."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from common.config import Config
from dispatcher.storage import NewTask, Result, open_storage
from dispatcher.storage.postgres import SCHEMA_VERSION as PG_VERSION
from dispatcher.storage.sqlite import SCHEMA_VERSION
from tests.pg import connect, fresh_schema_url

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
T0 = 1_800_000_000.0


def leases(rows) -> dict[str, tuple]:
    return {r[0]: (r[1], r[2]) for r in rows}


def check_kept(storage, lease_of: dict[str, tuple]) -> None:
    tasks = {t["task_id"]: t for t in storage.list_tasks(None, None, 100, 0)}
    by_status = {}
    for t in tasks.values():
        by_status.setdefault(t["status"], []).append(t)
    assert sorted(by_status) == ["completed", "failed", "in_progress", "pending"], by_status
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
    result = Result(running["task_id"], token, "w-old", "completed", result={"result": 2})
    assert storage.finish([result], now=T0 + 21) == ["completed"]
    [w] = storage.workers(now=T0 + 22, dead_after=60)
    assert (w["worker_id"], w["status"], w["attempts_completed"]) == ("w-old", "alive", 2)
    assert w["queues"] is None  # not known until it claims again
    storage.claim("w-old", "inst-1", ("default", "slow"), 1, now=T0 + 23, lease_s=60)
    [w] = storage.workers(now=T0 + 24, dead_after=60)
    assert w["queues"] == ["default", "slow"]


def test_a_version_2_sqlite_file_is_migrated_and_keeps_everything(tmp_path):
    path = tmp_path / "tasks.db"
    shutil.copy(FIXTURES / "schema-v2.db", path)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
        lease_of = leases(
            db.execute("SELECT id, lease_token, worker_id FROM tasks WHERE status = 'in_progress'")
        )
    db.close()
    storage = open_storage(Config(database_url=f"sqlite:///{path}"))
    try:
        check_kept(storage, lease_of)
    finally:
        storage.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    db.close()


def load_postgres_fixture(url: str, schema: str) -> None:
    """The pg_dump of tq_fixture_v2, into `schema` (psql's \\ lines left out)."""
    text = (FIXTURES / "schema-v2-postgres.sql").read_text()
    script = "\n".join(line for line in text.splitlines() if not line.startswith("\\"))
    with connect() as admin:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.execute(script.replace("tq_fixture_v2", schema))


def test_a_version_2_postgresql_schema_is_migrated_and_keeps_everything():
    with fresh_schema_url() as url:
        schema = url.rsplit("%3D", 1)[1]
        load_postgres_fixture(url, schema)
        with connect(url) as db:
            db.execute(f"SET search_path = {schema}")
            assert db.execute("SELECT schema_version FROM meta").fetchone() == (2,)
            lease_of = leases(
                db.execute(
                    "SELECT id, lease_token, worker_id FROM tasks WHERE status = 'in_progress'"
                ).fetchall()
            )
        storage = open_storage(Config(database_url=url))
        try:
            check_kept(storage, lease_of)
        finally:
            storage.close()
        with connect(url) as db:
            db.execute(f"SET search_path = {schema}")
            assert db.execute("SELECT schema_version FROM meta").fetchone() == (PG_VERSION,)
    assert PG_VERSION == 3
