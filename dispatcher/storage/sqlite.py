"""SQLite storage: the core's rules (core.py) on one file, and what SQLite does its own way.

Connections run in autocommit mode (`isolation_level=None`), lent from a small pool per
operation; every write is one `_write()`: BEGIN IMMEDIATE ... COMMIT, so a transaction
holds the write lock from its first statement and two dispatcher processes never
interleave inside one. A commit that may wake held polls is announced to the other
processes on the same file (localwake.py) and to this one (`on_change`).

Its own: the claim (by rowid, and no write at all for an empty poll of a live worker),
the bulk insert, retention's delete, the schema (`PRAGMA user_version`), the lock waits,
and what a full disk or a read-only file means. Times are REAL epoch seconds (UTC).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from ..localwake import LocalWake
from . import STOPPING, NewTask, browse, core
from .core import SCHEMA_VERSION, SqlStorage, Tx, statements, upgrade
from .errors import DatabaseUnavailable, DiskFull, ReadOnly, WorkerStopping
from .rows import dumps

BUSY_TIMEOUT_S = 30.0  # a writer waits this long for the lock before the client sees a 503
# Waiting for another process's write lock: SQLite's own busy handler sleeps 1, 2, 5, 10 ms
# between tries, so a claim and a result arriving together cost the second one a
# millisecond or more. We try again ourselves, after BUSY_FIRST_S doubling to BUSY_MAX_S.
BUSY_FIRST_S = 0.00005
BUSY_MAX_S = 0.001
KEEP_IDLE = 16  # pooled connections kept open between operations
TOUCH_EVERY_S = 1.0  # an empty long poll refreshes its worker's last_heartbeat this often

# Migrations from version N to N + 1, applied in order to an existing file.
MIGRATIONS: dict[int, list[str]] = {
    1: [core.PENDING_AGE_INDEX],  # version 2: /stats reads the queue's age from an index
    2: [core.WORKER_QUEUES_COLUMN],  # version 3: the queues a worker claims from (GET /workers)
    3: core.TO_VERSION_4,  # version 4: each queue's age from an index; worker concurrency
    4: core.TO_VERSION_5,  # version 5: the progress a running task reported
}  # and 5 -> 6 (issue 18), 6 -> 7 (issue 19) below, in SQLite's types

# -- SQLite's own statements ---------------------------------------------------------

# (nothing) -> pending, many at once: tasks without an idempotency key (and the same with
# their expiry, for a batch where some task has one: the others pay nothing for it)
INSERT_TASKS = """
INSERT INTO tasks (id, type, queue, payload, status, priority, run_at, created_at,
                   max_retries, timeout)
VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?)"""
INSERT_EXPIRING_TASKS = """
INSERT INTO tasks (id, type, queue, payload, status, priority, run_at, created_at,
                   max_retries, timeout, expires_at)
VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?)"""

# pending -> in_progress: one more attempt, a fresh random lease token for each task, no
# progress yet (an earlier attempt's is forgotten). By
# rowid: the subquery is answered from tasks_ready alone and the update finds each row
# without the id index; at 10^6 pending tasks this halves its cost (docs/PERFORMANCE.md).
# Named: tasks_pending_age (queue, run_at) also fits the WHERE, but would read every
# ready task of the queue to sort them by priority.
CLAIM = """
UPDATE tasks
   SET status = 'in_progress', attempts = attempts + 1, worker_id = :worker_id,
       lease_token = lower(hex(randomblob(16))), lease_expires_at = :now + :lease_s,
       started_at = :now, expired_failure = 0, progress = NULL
 WHERE rowid IN (SELECT rowid FROM tasks INDEXED BY tasks_ready
                  WHERE status = 'pending' AND queue = :queue AND run_at <= :now
                  ORDER BY priority DESC, run_at LIMIT :max_tasks)
   AND (expires_at IS NULL OR attempts > 0 OR expires_at > :now)
RETURNING id, type, payload, attempts, timeout, lease_token, lease_expires_at, priority, run_at,
          depends_on"""

RECORD_ATTEMPT = """
INSERT INTO attempts (task_id, attempt, lease_token, worker_id, started_at)
VALUES (?, ?, ?, ?, ?)"""

HAS_TASKS = "SELECT 1 FROM sqlite_master WHERE name = 'tasks'"
WORKER = "SELECT instance_id, status, last_heartbeat FROM workers WHERE worker_id = :worker_id"
READY_IN = """
SELECT 1 FROM tasks WHERE status = 'pending' AND queue = :queue AND run_at <= :now LIMIT 1"""

# finished tasks past retention, a batch at a time, with their history
PAST_RETENTION = """
SELECT json_group_array(id) AS ids FROM (
    SELECT id FROM tasks
     WHERE finished_at < :cutoff AND status IN ('completed', 'failed', 'cancelled')
     LIMIT :batch)"""
DELETE_HISTORY = "DELETE FROM attempts WHERE task_id IN (SELECT value FROM json_each(:ids))"
DELETE_EDGES = "DELETE FROM task_dependencies WHERE task_id IN (SELECT value FROM json_each(:ids))"
DELETE_TASKS = "DELETE FROM tasks WHERE id IN (SELECT value FROM json_each(:ids))"

# Two reads the planner left to itself answers from tasks_counts, reading every row of a
# status: the oldest pending task of a queue (0.6 ms at 5,000 pending, where peerbench
# polls /stats every 10 ms while the workers run) and the tasks finished lately (3.6 s
# at 10^6 tasks when none finished in the last minute). Each is one range of its index.
OLDEST_PENDING_IN = """
SELECT min(run_at) AS t FROM tasks INDEXED BY tasks_pending_age
 WHERE status = 'pending' AND queue = :queue"""
FINISHED_SINCE = """
SELECT queue, status, CAST(finished_at / 60 AS INTEGER) AS minute, count(*) AS n
  FROM tasks INDEXED BY tasks_finished
 WHERE finished_at >= :since GROUP BY queue, status, minute"""


def for_sqlite(sql: str) -> str:
    """A core statement in SQLite's words: `:name` placeholders; no row locks and no
    collation (the write transaction holds the whole file, and text compares
    bytewise); `rowid` for PostgreSQL's insertion-order column `seq`; lists as JSON,
    and PostgreSQL's `json_each_text` of a JSON object is SQLite's `json_each`."""
    sql = re.sub(r"%\((\w+)\)s", r":\1", sql)
    sql = re.sub(r"json_each_text\((:\w+)::json\)", r"json_each(\1)", sql)
    sql = re.sub(r" FOR (UPDATE|SHARE)( SKIP LOCKED)?| COLLATE \"C\"|::text", "", sql)
    sql = sql.replace("created_at, seq", "created_at, rowid")
    return sql.replace("= ANY(:ids)", "IN (SELECT value FROM json_each(:ids))")


def schema_for_sqlite(sql: str) -> str:
    """A CREATE statement of core.SCHEMA in SQLite's types; the rowid orders insertions."""
    sql = re.sub(r",\s*seq BIGINT[^\n]*", "", sql)
    sql = sql.replace("BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "INTEGER PRIMARY KEY")
    sql = sql.replace(  # an id never given twice (the audit trail's)
        "BIGINT GENERATED ALWAYS AS IDENTITY (NO CYCLE) PRIMARY KEY",
        "INTEGER PRIMARY KEY AUTOINCREMENT",
    )
    sql = sql.replace("BOOLEAN NOT NULL DEFAULT FALSE", "INTEGER NOT NULL DEFAULT 0")
    return sql.replace("DOUBLE PRECISION", "REAL")


SCHEMA = [schema_for_sqlite(statement) for statement in core.SCHEMA]
# version 6: queue settings and rate windows, tasks' expiry
MIGRATIONS[5] = [schema_for_sqlite(statement) for statement in core.TO_VERSION_6]
# version 7: the audit trail
MIGRATIONS[6] = [schema_for_sqlite(statement) for statement in core.TO_VERSION_7]


# a status few tasks have: its range of tasks_counts (the planner may walk the id index)
def _indexed_by(sql: str, index: str) -> str:
    """A statement of browse.py with SQLite's index named (fails loudly if reworded)."""
    hinted = sql.replace("FROM tasks\n WHERE", f"FROM tasks INDEXED BY {index}\n WHERE", 1)
    assert hinted != sql, f"no place for INDEXED BY {index} in {sql}"
    return hinted


FIND_BY_STATUS = _indexed_by(for_sqlite(browse.STATEMENTS["FIND_BY_STATUS"]), "tasks_counts")
FIND_BY_STATUS_IN_QUEUE = _indexed_by(
    for_sqlite(browse.STATEMENTS["FIND_BY_STATUS_IN_QUEUE"]), "tasks_counts"
)

# a walk down the id index (the planner may take tasks_counts for a status most have)
FIND_IN_WINDOW = _indexed_by(
    for_sqlite(browse.STATEMENTS["FIND_IN_WINDOW"]), "sqlite_autoindex_tasks_1"
)

# each reported task found by its id (the planner would walk the worker's running tasks
# and search the reported ones for each)
SET_PROGRESS = for_sqlite(core.SHARED["SET_PROGRESS"]).replace(
    "UPDATE tasks SET", "UPDATE tasks INDEXED BY sqlite_autoindex_tasks_1 SET", 1
)
assert "INDEXED BY" in SET_PROGRESS, SET_PROGRESS

# not-started tasks past their expiry: a range of tasks_expiry (fails loudly if reworded)
EXPIRED_UNSTARTED = for_sqlite(core.SHARED["EXPIRED_UNSTARTED"]).replace(
    "FROM tasks\n", "FROM tasks INDEXED BY tasks_expiry\n", 1
)
assert "INDEXED BY" in EXPIRED_UNSTARTED, EXPIRED_UNSTARTED
WORKER_FOR_CLAIM = (
    for_sqlite(core.SHARED["WORKER_FOR_CLAIM"])
    .replace("FROM tasks t\n", "FROM tasks t INDEXED BY tasks_expiry\n", 1)
    .replace(" OF w", "")
)
assert "INDEXED BY" in WORKER_FOR_CLAIM and "FOR UPDATE" not in WORKER_FOR_CLAIM

Q = statements(
    for_sqlite,
    EXPIRED_UNSTARTED=EXPIRED_UNSTARTED,
    WORKER_FOR_CLAIM=WORKER_FOR_CLAIM,
    LIMITS_LOCKED=for_sqlite(core.SHARED["LIMITS"]),  # no locks: the write lock holds all
    FIND_IN_WINDOW=FIND_IN_WINDOW,
    SET_PROGRESS=SET_PROGRESS,
    CLAIM=CLAIM,
    OLDEST_PENDING_IN=OLDEST_PENDING_IN,
    FINISHED_SINCE=FINISHED_SINCE,
    FIND_BY_STATUS=FIND_BY_STATUS,
    FIND_BY_STATUS_IN_QUEUE=FIND_BY_STATUS_IN_QUEUE,
)


class SqliteStorage(SqlStorage):
    q = Q
    # Other processes' commits arrive as LocalWake datagrams; the change counter is only
    # the fallback for a lost one, so it is read slowly.
    change_poll_s = 0.05
    marks_waiters = True  # announce() wakes only the processes that hold long polls

    def __init__(self, path: Path, backoff_base: float = 1.0, backoff_cap: float = 300.0):
        super().__init__(backoff_base, backoff_cap)
        self.path = Path(path)
        self._wake = LocalWake(self.path)
        # Connections are lent per operation, not kept per thread: the server serves each
        # connection in a greenlet, and a thread-local connection would be one per client.
        self._idle: list[sqlite3.Connection] = []
        self._watch_db: sqlite3.Connection | None = None  # change_counter()'s own
        self._lock = threading.Lock()
        # One writer at a time in this process: requests queue here, woken at once,
        # instead of sleeping in SQLite's busy handler.
        self._write_lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._migrate()

    # -- connections and transactions ------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(
                self.path, isolation_level=None, timeout=BUSY_TIMEOUT_S, check_same_thread=False
            )
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA synchronous = FULL")
            db.execute("PRAGMA journal_mode = WAL")
        except sqlite3.Error as exc:
            raise DatabaseUnavailable(f"database unavailable: {exc}") from exc
        return db

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        """A connection of this process's pool for one operation (opened when none is
        idle; at most KEEP_IDLE are kept between operations)."""
        with self._lock:
            db = self._idle.pop() if self._idle else None
        if db is None:
            db = self._open()
        try:
            yield db
        finally:
            with self._lock:
                if len(self._idle) < KEEP_IDLE:
                    self._idle.append(db)
                    db = None
            if db is not None:
                db.close()

    @contextmanager
    def _write(self, fsync: bool = True) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT. With fsync=False (claims only) the commit reaches
        the WAL unsynced (synchronous=NORMAL): a process crash keeps it, a power cut may
        lose it until the next synced commit. docs/RELIABILITY.md argues why that is safe."""
        if not self._write_lock.acquire(timeout=BUSY_TIMEOUT_S):
            raise DatabaseUnavailable("database unavailable: no write lock after 30 s")
        try:
            with self._conn() as db:
                if not fsync:
                    db.execute("PRAGMA synchronous = NORMAL")
                try:
                    _begin_immediate(db)
                    yield db
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:  # a failed COMMIT (a full disk) may have ended it
                        db.execute("ROLLBACK")
                    raise
                finally:
                    if not fsync:
                        db.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as exc:
            error = _unavailable(exc)
            if isinstance(error, (DiskFull, ReadOnly)):
                self.refusals.seen(error)
            raise error from exc
        except (DiskFull, ReadOnly) as exc:  # refused at BEGIN
            self.refusals.seen(exc)
            raise
        finally:
            self._write_lock.release()

    def _transact(self, body: Callable[[Tx], Any], fsync: bool = True) -> Any:
        with self._write(fsync) as db:
            tx = Tx(db)
            out = body(tx)
        if tx.notify:  # committed: tell the processes holding polls, then this one
            self.announce()
            self.on_change()
        self._committed(tx)
        return out

    def _read(self, sql: str, args: Any = None) -> list[sqlite3.Row]:
        try:
            with self._conn() as db:
                return db.execute(sql, args or {}).fetchall()
        except sqlite3.Error as exc:
            raise _unavailable(exc) from exc

    def _ids(self, ids: list[str]) -> str:
        return json.dumps(ids)

    def close(self) -> None:
        self._wake.close()
        with self._lock:
            idle, self._idle = self._idle, []
            if self._watch_db is not None:
                idle.append(self._watch_db)
                self._watch_db = None
        for db in idle:
            with suppress(sqlite3.Error):
                db.close()

    def _migrate(self) -> None:
        """Create the schema in a new file, or bring an older one up to SCHEMA_VERSION.
        A file already at SCHEMA_VERSION is only read: a full disk does not stop a
        start, and the server processes after the first write nothing here."""
        if self._read("PRAGMA user_version")[0][0] == SCHEMA_VERSION:
            return
        with self._write() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if not version and not db.execute(HAS_TASKS).fetchone():
                for statement in SCHEMA:
                    db.execute(statement)
                version = SCHEMA_VERSION
            upgrade(Tx(db), version, MIGRATIONS)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- what SQLite does its own way ------------------------------------------------

    def _insert_many(self, tx: Tx, ids: list[str], tasks: list[NewTask], now: float) -> None:
        rows = [
            (task_id, t.type, t.queue, dumps(t.payload), t.priority, now + t.delay, now)
            + (t.max_retries, t.timeout)
            for task_id, t in zip(ids, tasks, strict=True)
        ]
        if any(t.expires_in is not None for t in tasks):
            expiry = [None if t.expires_in is None else now + t.expires_in for t in tasks]
            rows = [(*row, at) for row, at in zip(rows, expiry, strict=True)]
            tx.handle.executemany(INSERT_EXPIRING_TASKS, rows)
            return
        tx.handle.executemany(INSERT_TASKS, rows)

    def claim(self, worker_id, instance_id, queues, max_tasks, now, lease_s) -> list[dict]:
        if self._idle_poll(worker_id, instance_id, queues, now):
            return []  # no write: it would collide with the results a worker posts
        return super().claim(worker_id, instance_id, queues, max_tasks, now, lease_s)

    def _claim_queue(self, tx: Tx, args: dict) -> list:
        rows = tx.all(self.q.CLAIM, args)
        opened = [(r["id"], r["attempts"], r["lease_token"], args["worker_id"]) for r in rows]
        tx.handle.executemany(RECORD_ATTEMPT, [(*a, args["now"]) for a in opened])
        return rows

    def _idle_poll(self, worker_id: str, instance_id: str, queues, now: float) -> bool:
        """A claim that would only refresh a last_heartbeat younger than TOUCH_EVERY_S:
        nothing ready, the live instance we know (new, retired, dead ones write). Ready
        here ignores the queues' settings (a read fewer for every claim): a claim of a
        paused or full queue's ready tasks writes, and finds nothing to take; the held
        poll around it asks has_ready, which does count them, before it claims again."""
        if self._ready_in(queues, now):
            return False
        row = next(iter(self._read(WORKER, {"worker_id": worker_id})), None)
        if row is None:
            return False
        same = not instance_id or row["instance_id"] == instance_id
        if same and row["status"] in STOPPING:
            raise WorkerStopping(worker_id)
        return row["status"] == "alive" and same and now - row["last_heartbeat"] < TOUCH_EVERY_S

    def _ready_in(self, queues: tuple[str, ...], now: float) -> bool:
        return any(self._read(READY_IN, {"queue": q, "now": now}) for q in queues)

    def _next_run_in(self, queues: tuple[str, ...]) -> float | None:
        return min(self.oldest_pending(queues).values(), default=None)

    def _delete_finished(self, tx: Tx, cutoff: float) -> int:
        ids = tx.one(PAST_RETENTION, {"cutoff": cutoff, "batch": core.DELETE_BATCH})["ids"]
        tx.execute(DELETE_HISTORY, {"ids": ids})
        tx.execute(DELETE_EDGES, {"ids": ids})
        return tx.execute(DELETE_TASKS, {"ids": ids}).rowcount

    def health(self) -> str | None:
        """A write refused lately, or no byte free on the file's filesystem."""
        self.ping()
        if _free_bytes(self.path.parent) == 0:
            return str(DiskFull(f"no space left on the filesystem of {self.path}"))
        return self.refusals.recent()

    # -- wake-ups -----------------------------------------------------------------

    def change_counter(self) -> int:
        """PRAGMA data_version, on a connection of its own (the counter is per connection)."""
        try:
            if self._watch_db is None:
                self._watch_db = self._open()
            return self._watch_db.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.OperationalError as exc:
            raise DatabaseUnavailable(f"database unavailable: {exc}") from exc

    def listen(self, callback: Callable[[], None], stop: threading.Event) -> None:
        """Another process's commit arrives as a datagram (localwake.py)."""
        self._wake.listen(callback, stop)

    def announce(self) -> None:
        self._wake.announce()

    def set_waiting(self, waiting: bool) -> None:
        self._wake.set_waiting(waiting)


def _begin_immediate(db: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE, waiting for another process's write lock in short steps (see
    BUSY_FIRST_S) for up to BUSY_TIMEOUT_S."""
    db.execute("PRAGMA busy_timeout = 0")
    try:
        delay, deadline = BUSY_FIRST_S, None
        while True:
            try:
                db.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise _unavailable(exc) from exc
                now = time.monotonic()
                if deadline is None:
                    deadline = now + BUSY_TIMEOUT_S
                elif now >= deadline:
                    raise DatabaseUnavailable(f"database unavailable: {exc}") from exc
            time.sleep(delay)
            delay = min(delay * 2, BUSY_MAX_S)
    finally:
        db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")


def _unavailable(exc: sqlite3.Error) -> DatabaseUnavailable:
    """What a client reads for an error of SQLite itself (503 in every case)."""
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    if code == sqlite3.SQLITE_FULL:
        return DiskFull(str(exc))
    if code == sqlite3.SQLITE_READONLY:
        return ReadOnly(str(exc))
    return DatabaseUnavailable(f"database unavailable: {exc}")


def _free_bytes(directory: Path) -> int:
    try:
        st = os.statvfs(directory)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc)
