"""SQLite storage: every SQL statement of the queue, and so every status change.

Connections run in autocommit mode (`isolation_level=None`); every write goes through
`_write()`: BEGIN IMMEDIATE ... COMMIT, so a transaction holds the write lock from its
first statement and two dispatcher processes never interleave inside one. Each state
change states its rule in its WHERE clause and is judged by its row count.

Times are REAL epoch seconds (UTC). Payloads and results are JSON text.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import (
    Conflict,
    DatabaseUnavailable,
    DiskFull,
    LeaseConflict,
    ReadOnly,
    TaskNotFound,
    WorkerStopping,
    WorkerTakenOver,
)
from ..localwake import LocalWake
from ..retry import retry_at
from . import FINISHED, STOPPING, NewTask, ReapReport, Refusals, Result
from .rows import EXPIRED_ERROR, dumps, loads, new_ids, stats_dict, task_dict, worker_dict

SCHEMA_VERSION = 3
BUSY_TIMEOUT_S = 30.0  # a writer waits this long for the lock before the client sees a 503
# Waiting for another process's write lock: SQLite's own busy handler sleeps 1, 2, 5, 10 ms
# between tries, so a claim and a result arriving together cost the second one a
# millisecond or more. We try again ourselves, after BUSY_FIRST_S doubling to BUSY_MAX_S.
BUSY_FIRST_S = 0.00005
BUSY_MAX_S = 0.001
KEEP_IDLE = 16  # pooled connections kept open between operations
TOUCH_EVERY_S = 1.0  # an empty long poll refreshes its worker's last_heartbeat this often
CHUNK = 500  # ids per IN (...) list, under SQLite's parameter limit
RETIRED_INSTANCE_KEEP_S = 86_400.0
DELETE_BATCH = 2000  # finished tasks deleted per retention transaction

# the oldest ready task in one index lookup (/stats polls it often)
PENDING_AGE_INDEX = "CREATE INDEX tasks_pending_age ON tasks (run_at) WHERE status = 'pending'"

# the queues a worker last claimed from, as a JSON list (NULL: it has not claimed yet)
WORKER_QUEUES_COLUMN = "ALTER TABLE workers ADD COLUMN queues TEXT"

SCHEMA = [
    """
    CREATE TABLE tasks (
        id               TEXT PRIMARY KEY,
        type             TEXT NOT NULL,
        queue            TEXT NOT NULL,
        payload          TEXT NOT NULL,
        status           TEXT NOT NULL,
        priority         INTEGER NOT NULL,
        run_at           REAL NOT NULL,
        created_at       REAL NOT NULL,
        started_at       REAL,
        finished_at      REAL,
        attempts         INTEGER NOT NULL DEFAULT 0,
        max_retries      INTEGER NOT NULL,
        timeout          REAL NOT NULL,
        worker_id        TEXT,
        lease_token      TEXT,
        lease_expires_at REAL,
        result           TEXT,
        error            TEXT,
        finished_lease   TEXT,
        expired_failure  INTEGER NOT NULL DEFAULT 0,
        idempotency_key  TEXT UNIQUE
    )
    """,
    # the claim: ready tasks of a queue, highest priority first, then oldest
    "CREATE INDEX tasks_ready ON tasks (queue, priority DESC, run_at) WHERE status = 'pending'",
    PENDING_AGE_INDEX,
    "CREATE INDEX tasks_leased ON tasks (lease_expires_at) WHERE status = 'in_progress'",
    "CREATE INDEX tasks_by_worker ON tasks (worker_id) WHERE status = 'in_progress'",
    "CREATE INDEX tasks_finished ON tasks (finished_at) WHERE finished_at IS NOT NULL",
    # counts for /stats without reading the rows
    "CREATE INDEX tasks_counts ON tasks (status, queue, type)",
    """
    CREATE TABLE attempts (
        id          INTEGER PRIMARY KEY,
        task_id     TEXT NOT NULL,
        attempt     INTEGER NOT NULL,
        lease_token TEXT NOT NULL,
        worker_id   TEXT NOT NULL,
        started_at  REAL NOT NULL,
        finished_at REAL,
        outcome     TEXT,
        error       TEXT
    )
    """,
    "CREATE INDEX attempts_by_task ON attempts (task_id, lease_token)",
    """
    CREATE TABLE workers (
        worker_id      TEXT PRIMARY KEY,
        instance_id    TEXT NOT NULL,
        status         TEXT NOT NULL,
        first_seen     REAL NOT NULL,
        last_heartbeat REAL NOT NULL,
        completed      INTEGER NOT NULL DEFAULT 0,
        failed         INTEGER NOT NULL DEFAULT 0,
        queues         TEXT
    )
    """,
    """
    CREATE TABLE retired_instances (
        instance_id TEXT PRIMARY KEY,
        worker_id   TEXT NOT NULL,
        retired_at  REAL NOT NULL
    )
    """,
]

# Migrations from version N to N + 1, applied in order to an existing file.
MIGRATIONS: dict[int, list[str]] = {
    1: [PENDING_AGE_INDEX],  # version 2: /stats reads the queue's age from an index
    2: [WORKER_QUEUES_COLUMN],  # version 3: the queues a worker claims from (GET /workers)
}

# -- statements, named by the transition they make ------------------------------------

INSERT_TASK = """
INSERT INTO tasks (id, type, queue, payload, status, priority, run_at, created_at,
                   max_retries, timeout, idempotency_key)
VALUES (:id, :type, :queue, :payload, 'pending', :priority, :run_at, :now,
        :max_retries, :timeout, :idempotency_key)
ON CONFLICT (idempotency_key) DO NOTHING
"""

# (nothing) -> pending, many at once: tasks without an idempotency key
INSERT_TASKS = """
INSERT INTO tasks (id, type, queue, payload, status, priority, run_at, created_at,
                   max_retries, timeout)
VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?)
"""

# pending -> in_progress: one more attempt, a fresh random lease token for each task
# By rowid, not id: the subquery is answered from tasks_ready alone (the rowid is in
# every index entry) and the update finds each row without a second B-tree (the id
# index); at 10^6 pending tasks this halves the statement's cost (docs/PERFORMANCE.md).
CLAIM = """
UPDATE tasks
   SET status = 'in_progress', attempts = attempts + 1, worker_id = :worker_id,
       lease_token = lower(hex(randomblob(16))), lease_expires_at = :now + :lease_s,
       started_at = :now, expired_failure = 0
 WHERE rowid IN (SELECT rowid FROM tasks
                  WHERE status = 'pending' AND queue = :queue AND run_at <= :now
                  ORDER BY priority DESC, run_at LIMIT :max_tasks)
RETURNING id, type, payload, attempts, timeout, lease_token, lease_expires_at, priority, run_at
"""

RECORD_ATTEMPT = """
INSERT INTO attempts (task_id, attempt, lease_token, worker_id, started_at)
VALUES (?, ?, ?, ?, ?)
"""

# in_progress -> completed by its current lease: the common case, judged by this
# statement alone. The lease's attempt is the task's only open one (every way out of
# in_progress closes the attempt it leaves), so no other attempt needs closing.
COMPLETE_CURRENT = """
UPDATE tasks
   SET status = 'completed', result = :result, error = NULL, finished_at = :now,
       finished_lease = :lease_token, lease_token = NULL, lease_expires_at = NULL,
       worker_id = :worker_id
 WHERE id = :task_id AND status = 'in_progress' AND lease_token = :lease_token
"""

# pending | in_progress -> completed, by any lease this task issued (first result wins)
COMPLETE = """
UPDATE tasks
   SET status = 'completed', result = :result, error = NULL, finished_at = :now,
       finished_lease = :lease_token, lease_token = NULL, lease_expires_at = NULL,
       worker_id = :worker_id
 WHERE id = :task_id AND status IN ('pending', 'in_progress')
"""

# failed (only by lease expiry) -> completed: a late real result replaces the expiry
COMPLETE_AFTER_EXPIRY = """
UPDATE tasks
   SET status = 'completed', result = :result, error = NULL, finished_at = :now,
       finished_lease = :lease_token, expired_failure = 0, worker_id = :worker_id
 WHERE id = :task_id AND status = 'failed' AND expired_failure = 1
"""

# failed (only by lease expiry) -> failed with the worker's real error
FAIL_AFTER_EXPIRY = """
UPDATE tasks
   SET error = :error, finished_lease = :lease_token, expired_failure = 0,
       worker_id = :worker_id, finished_at = :now
 WHERE id = :task_id AND status = 'failed' AND expired_failure = 1
"""

# in_progress -> pending (retries left, after back-off): only the current lease
FAIL_RETRY = """
UPDATE tasks
   SET status = 'pending', run_at = :run_at, error = :error, lease_token = NULL,
       lease_expires_at = NULL, worker_id = NULL
 WHERE id = :task_id AND status = 'in_progress' AND lease_token = :lease_token
"""

# in_progress -> failed (no retries left): only the current lease
FAIL_FINAL = """
UPDATE tasks
   SET status = 'failed', error = :error, finished_at = :now, finished_lease = :lease_token,
       lease_token = NULL, lease_expires_at = NULL
 WHERE id = :task_id AND status = 'in_progress' AND lease_token = :lease_token
"""

# attempts still running when another lease's result finished the task
CLOSE_SUPERSEDED = """
UPDATE attempts SET finished_at = :now, outcome = 'superseded'
 WHERE task_id = :task_id AND lease_token != :lease_token AND outcome IS NULL
"""

END_ATTEMPT = """
UPDATE attempts SET finished_at = :now, outcome = :outcome, error = :error
 WHERE task_id = :task_id AND lease_token = :lease_token AND outcome IS NULL
"""

# the attempt whose (late) real result finished the task says so, even if the reaper
# had already closed it as expired
END_ATTEMPT_COMPLETED = """
UPDATE attempts SET finished_at = :now, outcome = 'completed', error = NULL
 WHERE task_id = :task_id AND lease_token = :lease_token
"""

# in_progress -> pending, now: the lease expired or its worker died, retries left
EXPIRE_RETRY = """
UPDATE tasks
   SET status = 'pending', run_at = :now, error = :error, lease_token = NULL,
       lease_expires_at = NULL, worker_id = NULL
 WHERE id = :task_id AND status = 'in_progress' AND lease_token = :lease_token
"""

# in_progress -> failed: the lease expired on the last attempt (a later real result may
# still replace this failure)
EXPIRE_FINAL = """
UPDATE tasks
   SET status = 'failed', error = :error, finished_at = :now, expired_failure = 1,
       lease_token = NULL, lease_expires_at = NULL
 WHERE id = :task_id AND status = 'in_progress' AND lease_token = :lease_token
"""

# in_progress -> pending, given back unfinished: the attempt does not count
RELEASE = """
UPDATE tasks
   SET status = 'pending', attempts = attempts - 1, lease_token = NULL,
       lease_expires_at = NULL, worker_id = NULL
 WHERE id = :task_id AND status = 'in_progress' AND lease_token = :lease_token
   AND worker_id = :worker_id
"""

# pending | in_progress -> cancelled
CANCEL = """
UPDATE tasks
   SET status = 'cancelled', finished_at = :now, lease_token = NULL, lease_expires_at = NULL
 WHERE id = :task_id AND status IN ('pending', 'in_progress')
"""

# failed | cancelled -> pending, attempts reset
RETRY = """
UPDATE tasks
   SET status = 'pending', attempts = 0, run_at = :now, result = NULL, error = NULL,
       finished_at = NULL, started_at = NULL, finished_lease = NULL, expired_failure = 0,
       worker_id = NULL
 WHERE id = :task_id AND status IN ('failed', 'cancelled')
"""

EXTEND_ALL = """
UPDATE tasks SET lease_expires_at = :until
 WHERE worker_id = :worker_id AND status = 'in_progress'
"""

# the oldest pending task for /stats: one step down tasks_pending_age. Left to itself the
# planner walks tasks_counts and reads every pending row (0.6 ms at 5,000 pending, where
# peerbench polls /stats every 10 ms while the workers run)
OLDEST_PENDING = """
SELECT min(run_at) FROM tasks INDEXED BY tasks_pending_age WHERE status = 'pending'
"""

TASK_COLUMNS = """id, type, queue, payload, status, result, error, attempts, max_retries,
    priority, worker_id, created_at, started_at, finished_at, timeout, run_at"""


class SqliteStorage:
    # Other processes' commits arrive as LocalWake datagrams; the change counter is only
    # the fallback for a lost one, so it is read slowly.
    change_poll_s = 0.05

    def __init__(self, path: Path, backoff_base: float = 1.0, backoff_cap: float = 300.0):
        self.path = Path(path)
        self._wake = LocalWake(self.path)
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        # Connections are lent per operation, not kept per thread: the server serves each
        # connection in a greenlet, and a thread-local connection would be one per client.
        self._idle: list[sqlite3.Connection] = []
        self._watch_db: sqlite3.Connection | None = None  # change_counter()'s own
        self.refusals = Refusals()  # writes refused for a full disk or a read-only file
        self._lock = threading.Lock()
        # One writer at a time in this process: threads queue here, woken at once,
        # instead of sleeping in SQLite's busy handler.
        self._write_lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._migrate()

    # -- connections --------------------------------------------------------------

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
                    with self._transaction(db):
                        yield db
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

    @contextmanager
    def _transaction(self, db: sqlite3.Connection) -> Iterator[None]:
        _begin_immediate(db)
        try:
            yield
            db.execute("COMMIT")
        except BaseException:
            # a failed COMMIT (a full disk) may have ended the transaction already
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _read(self, sql: str, args=()) -> list[sqlite3.Row]:
        try:
            with self._conn() as db:
                return db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise _unavailable(exc) from exc

    def close(self) -> None:
        self._wake.close()
        with self._lock:
            idle, self._idle = self._idle, []
            if self._watch_db is not None:
                idle.append(self._watch_db)
                self._watch_db = None
        for db in idle:
            try:
                db.close()
            except sqlite3.Error:
                pass

    def _migrate(self) -> None:
        """Create the schema in a new file, or bring an older one up to SCHEMA_VERSION.
        A file already at SCHEMA_VERSION is only read: a full disk does not stop a
        start, and the server processes after the first write nothing here."""
        if self._read("PRAGMA user_version")[0][0] == SCHEMA_VERSION:
            return
        with self._write() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if (
                version == 0
                and not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'tasks'").fetchone()
            ):
                for statement in SCHEMA:
                    db.execute(statement)
                version = SCHEMA_VERSION
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"database schema version {version} is newer than this code's "
                    f"{SCHEMA_VERSION}; upgrade the code"
                )
            while version < SCHEMA_VERSION:
                for statement in MIGRATIONS[version]:
                    db.execute(statement)
                version += 1
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- submission ---------------------------------------------------------------

    def submit(self, tasks: list[NewTask], now: float) -> list[tuple[str, bool]]:
        """Store tasks in one transaction: (task_id, created) each; a known
        idempotency key gives the first task's id and creates nothing."""
        ids = new_ids(len(tasks), now)
        if not any(task.idempotency_key for task in tasks):  # the bulk path: one statement
            rows = [
                (
                    task_id,
                    task.type,
                    task.queue,
                    dumps(task.payload),
                    task.priority,
                    now + task.delay,
                    now,
                    task.max_retries,
                    task.timeout,
                )
                for task_id, task in zip(ids, tasks, strict=True)
            ]
            with self._write() as db:
                db.executemany(INSERT_TASKS, rows)
            return [(task_id, True) for task_id in ids]
        out = []
        with self._write() as db:
            for task_id, task in zip(ids, tasks, strict=True):
                args = {
                    "id": task_id,
                    "type": task.type,
                    "queue": task.queue,
                    "payload": dumps(task.payload),
                    "priority": task.priority,
                    "run_at": now + task.delay,
                    "now": now,
                    "max_retries": task.max_retries,
                    "timeout": task.timeout,
                    "idempotency_key": task.idempotency_key,
                }
                if db.execute(INSERT_TASK, args).rowcount == 1:
                    out.append((task_id, True))
                else:
                    row = db.execute(
                        "SELECT id FROM tasks WHERE idempotency_key = ?", (task.idempotency_key,)
                    ).fetchone()
                    out.append((row["id"], False))
        return out

    # -- claiming -----------------------------------------------------------------

    def claim(
        self,
        worker_id: str,
        instance_id: str,
        queues: tuple[str, ...],
        max_tasks: int,
        now: float,
        lease_s: float,
    ) -> list[dict]:
        """Lease up to max_tasks ready tasks to the worker, queue by queue in order.
        The commit is not fsynced: a claim lost in a power cut only puts its tasks back
        to pending (docs/RELIABILITY.md)."""
        if self._idle_poll(worker_id, instance_id, queues, now):
            return []  # no write: it would collide with the results a worker posts
        claimed: list[dict] = []
        with self._write(fsync=False) as db:
            if self._touch_worker(db, worker_id, instance_id, now, queues=queues) in STOPPING:
                raise WorkerStopping(worker_id)
            for queue in queues:
                left = max_tasks - len(claimed)
                if left <= 0:
                    break
                args = {
                    "worker_id": worker_id,
                    "queue": queue,
                    "now": now,
                    "lease_s": lease_s,
                    "max_tasks": left,
                }
                rows = db.execute(CLAIM, args).fetchall()
                rows.sort(key=lambda r: (-r["priority"], r["run_at"]))
                db.executemany(
                    RECORD_ATTEMPT,
                    [(r["id"], r["attempts"], r["lease_token"], worker_id, now) for r in rows],
                )
                claimed.extend(
                    {
                        "task_id": r["id"],
                        "type": r["type"],
                        "payload": loads(r["payload"]),
                        "attempt": r["attempts"],
                        "timeout": r["timeout"],
                        "lease_token": r["lease_token"],
                        "lease_expires_at": r["lease_expires_at"],
                    }
                    for r in rows
                )
        return claimed

    def _idle_poll(self, worker_id: str, instance_id: str, queues, now: float) -> bool:
        """A claim that would change nothing but its worker's last_heartbeat, refreshed
        less than TOUCH_EVERY_S ago: nothing is ready, and the worker is the live
        instance we know (a new, retired or dead one takes the write path)."""
        if self.has_ready(queues, now):
            return False
        rows = self._read(
            "SELECT instance_id, status, last_heartbeat FROM workers WHERE worker_id = ?",
            (worker_id,),
        )
        if not rows:
            return False
        row = rows[0]
        same = not instance_id or row["instance_id"] == instance_id
        if same and row["status"] in STOPPING:
            raise WorkerStopping(worker_id)
        return row["status"] == "alive" and same and now - row["last_heartbeat"] < TOUCH_EVERY_S

    def has_ready(self, queues: tuple[str, ...], now: float) -> bool:
        marks = ",".join("?" * len(queues))
        sql = (
            f"SELECT 1 FROM tasks WHERE status = 'pending' AND queue IN ({marks}) "
            "AND run_at <= ? LIMIT 1"
        )
        return bool(self._read(sql, (*queues, now)))

    def next_run_at(self, queues: tuple[str, ...]) -> float | None:
        marks = ",".join("?" * len(queues))
        sql = f"SELECT min(run_at) FROM tasks WHERE status = 'pending' AND queue IN ({marks})"
        return self._read(sql, queues)[0][0]

    def _touch_worker(
        self,
        db,
        worker_id: str,
        instance_id: str,
        now: float,
        state: str | None = None,
        queues: tuple[str, ...] | None = None,
    ) -> str:
        """Register or refresh a worker, and return its status; a new instance of a
        known id takes it over and its earlier instance's tasks go back to the queue at
        once. `state` (a heartbeat's: stopping, stopped) sets the status; without one a
        stopping or stopped instance keeps its status and any other is alive."""
        if (
            instance_id
            and db.execute(
                "SELECT 1 FROM retired_instances WHERE instance_id = ?", (instance_id,)
            ).fetchone()
        ):
            raise WorkerTakenOver(worker_id)
        row = db.execute(
            "SELECT instance_id, status FROM workers WHERE worker_id = ?", (worker_id,)
        ).fetchone()
        status = state or "alive"
        listed = None if queues is None else dumps(list(queues))
        if row is None:
            db.execute(
                "INSERT INTO workers (worker_id, instance_id, status, first_seen, last_heartbeat, "
                "queues) VALUES (?, ?, ?, ?, ?, ?)",
                (worker_id, instance_id, status, now, now, listed),
            )
            return status
        if instance_id and row["instance_id"] != instance_id:
            if row["instance_id"]:
                db.execute(
                    "INSERT OR IGNORE INTO retired_instances VALUES (?, ?, ?)",
                    (row["instance_id"], worker_id, now),
                )
            self._rescue_worker_tasks(db, worker_id, now, "worker restarted")
            db.execute(
                "UPDATE workers SET instance_id = ?, status = ?, last_heartbeat = ?, "
                "queues = coalesce(?, queues) WHERE worker_id = ?",
                (instance_id, status, now, listed, worker_id),
            )
            return status
        if state is None and row["status"] in STOPPING:
            status = row["status"]
        db.execute(
            "UPDATE workers SET status = ?, last_heartbeat = ?, queues = coalesce(?, queues) "
            "WHERE worker_id = ?",
            (status, now, listed, worker_id),
        )
        return status

    # -- results ------------------------------------------------------------------

    def finish(self, results: list[Result], now: float) -> list[str | Exception]:
        """Judge each result alone, in order, in one transaction: the task's new status,
        or the error (TaskNotFound, LeaseConflict) that item alone would get."""
        out: list[str | Exception] = []
        counts: Counter[tuple[str, str]] = Counter()  # (worker_id, completed | failed)
        with self._write() as db:
            for item in results:
                try:
                    out.append(self._finish_one(db, item, now, counts))
                except (TaskNotFound, Conflict) as exc:
                    out.append(exc)
            for (worker_id, column), n in counts.items():  # once per worker and batch
                db.execute(
                    f"UPDATE workers SET {column} = {column} + ? WHERE worker_id = ?",
                    (n, worker_id),
                )
        return out

    def _finish_one(self, db, item: Result, now: float, counts: Counter) -> str:
        args = {
            "task_id": item.task_id,
            "lease_token": item.lease_token,
            "worker_id": item.worker_id,
            "now": now,
            "result": dumps(item.result),
            "error": item.error,
        }
        if item.status == "completed" and db.execute(COMPLETE_CURRENT, args).rowcount:
            db.execute(END_ATTEMPT_COMPLETED, args)  # its attempt exists: the claim made it
            counts[item.worker_id, "completed"] += 1
            return "completed"
        row = db.execute(
            "SELECT status, lease_token, finished_lease, expired_failure, attempts, max_retries "
            "FROM tasks WHERE id = ?",
            (item.task_id,),
        ).fetchone()
        if row is None:
            raise TaskNotFound(item.task_id)
        issued = db.execute(
            "SELECT 1 FROM attempts WHERE task_id = ? AND lease_token = ?",
            (item.task_id, item.lease_token),
        ).fetchone()
        if issued is None:
            raise LeaseConflict(f"lease_token was not issued for task {item.task_id}")
        status = row["status"]
        if item.status == "completed":
            if status in ("pending", "in_progress") and db.execute(COMPLETE, args).rowcount:
                self._end_attempt(db, args, "completed", None, counts)
                db.execute(CLOSE_SUPERSEDED, args)
                return "completed"
            if db.execute(COMPLETE_AFTER_EXPIRY, args).rowcount:
                self._end_attempt(db, args, "completed", None, counts)
                return "completed"
        else:
            current = status == "in_progress" and row["lease_token"] == item.lease_token
            if current:
                when = retry_at(
                    row["attempts"],
                    row["max_retries"],
                    now,
                    self.backoff_base,
                    self.backoff_cap,
                )
                if when is not None and db.execute(FAIL_RETRY, {**args, "run_at": when}).rowcount:
                    self._end_attempt(db, args, "failed", item.error, counts)
                    return "pending"
                if when is None and db.execute(FAIL_FINAL, args).rowcount:
                    self._end_attempt(db, args, "failed", item.error, counts)
                    return "failed"
            elif status in ("pending", "in_progress"):
                # a failure reported under an earlier lease: history only, the task
                # belongs to its current lease (or waits for its next claim)
                self._end_attempt(db, args, "failed", item.error, counts)
                return status
            elif db.execute(FAIL_AFTER_EXPIRY, args).rowcount:
                self._end_attempt(db, args, "failed", item.error, counts)
                return "failed"
        if status in FINISHED and row["finished_lease"] == item.lease_token:
            return status  # the same result again: harmless
        raise LeaseConflict(f"task {item.task_id} is already {status} under another lease")

    def _end_attempt(
        self, db, args: dict, outcome: str, error: str | None, counts: Counter
    ) -> None:
        """Close the lease's attempt; the worker's counter moves only when the attempt
        was open (a re-sent failure counts once)."""
        if outcome == "completed":
            closed = db.execute(END_ATTEMPT_COMPLETED, args).rowcount
        else:
            closed = db.execute(END_ATTEMPT, {**args, "outcome": outcome, "error": error}).rowcount
        if closed:
            counts[args["worker_id"], outcome] += 1

    # -- leases -------------------------------------------------------------------

    def heartbeat(
        self,
        worker_id: str,
        instance_id: str,
        task_ids: list[str] | None,
        now: float,
        lease_s: float,
        state: str | None = None,
    ) -> list[str]:
        """Extend the leases of the worker's tasks (the listed ones, or all); returns the
        listed tasks the worker should abandon (cancelled, finished, leased to another).
        `state` stopping or stopped: the worker is shutting down (it claims nothing
        more) or has stopped."""
        until = now + lease_s
        abandon: list[str] = []
        with self._write() as db:
            self._touch_worker(db, worker_id, instance_id, now, state)
            if task_ids is None:
                db.execute(EXTEND_ALL, {"until": until, "worker_id": worker_id})
                return []
            for chunk in _chunks(task_ids):
                marks = ",".join("?" * len(chunk))
                # extend: only tasks still in progress under this worker
                db.execute(
                    f"UPDATE tasks SET lease_expires_at = ? WHERE id IN ({marks}) "
                    "AND worker_id = ? AND status = 'in_progress'",
                    (until, *chunk, worker_id),
                )
                rows = db.execute(
                    f"SELECT id, status, worker_id, expired_failure FROM tasks "
                    f"WHERE id IN ({marks})",
                    chunk,
                ).fetchall()
                found = {r["id"]: (r["status"], r["worker_id"], r["expired_failure"]) for r in rows}
                for task_id in chunk:
                    status, holder, by_expiry = found.get(task_id, ("deleted", None, 0))
                    mine = status == "in_progress" and holder == worker_id
                    # a late result still counts while the task is pending or failed
                    # only by lease expiry: the worker keeps going
                    still_counts = status == "pending" or (status == "failed" and by_expiry)
                    if not mine and not still_counts:
                        abandon.append(task_id)
        return abandon

    def release(self, worker_id: str, tasks: list[tuple[str, str]], now: float) -> int:
        """Give tasks back unfinished: pending at once, the attempt not counted."""
        released = 0
        with self._write() as db:
            for task_id, lease_token in tasks:
                args = {
                    "task_id": task_id,
                    "lease_token": lease_token,
                    "worker_id": worker_id,
                    "now": now,
                    "error": None,
                }
                if db.execute(RELEASE, args).rowcount:
                    db.execute(END_ATTEMPT, {**args, "outcome": "released"})
                    released += 1
        return released

    def reap(
        self, now: float, dead_after: float, retention_s: float, forget_after: float = 86_400.0
    ) -> ReapReport:
        """Declare silent workers dead and rescue their tasks, return expired leases to
        the queue, delete finished tasks past retention. Cheap reads decide first, so an
        idle sweep takes no write lock."""
        report = ReapReport()
        dead = self._read(
            "SELECT worker_id FROM workers WHERE status IN ('alive', 'stopping') "
            "AND last_heartbeat < ?",
            (now - dead_after,),
        )
        gone = self._read(
            "SELECT 1 FROM workers WHERE status IN ('dead', 'stopped') AND last_heartbeat < ? "
            "LIMIT 1",
            (now - forget_after,),
        )
        expired = self._read(
            "SELECT id FROM tasks WHERE status = 'in_progress' AND lease_expires_at < ? LIMIT 1",
            (now,),
        )
        cutoff = now - retention_s
        old = retention_s > 0 and self._read(
            "SELECT 1 FROM tasks WHERE finished_at < ? AND status IN "
            "('completed', 'failed', 'cancelled') LIMIT 1",
            (cutoff,),
        )
        if not (dead or expired or old or gone):
            return report
        with self._write() as db:
            for row in dead:
                # alive | stopping -> dead: no heartbeat for dead_after; its tasks go back
                if db.execute(
                    "UPDATE workers SET status = 'dead' WHERE worker_id = ? "
                    "AND status IN ('alive', 'stopping') AND last_heartbeat < ?",
                    (row["worker_id"], now - dead_after),
                ).rowcount:
                    report.dead_workers.append(row["worker_id"])
                    report.rescued += self._rescue_worker_tasks(
                        db, row["worker_id"], now, "worker dead"
                    )
            rows = db.execute(
                "SELECT id, lease_token, attempts, max_retries FROM tasks "
                "WHERE status = 'in_progress' AND lease_expires_at < ?",
                (now,),
            ).fetchall()
            for r in rows:
                self._expire(db, r, now, "expired")
                report.expired.append(r["id"])
            db.execute(
                "DELETE FROM retired_instances WHERE retired_at < ?",
                (now - RETIRED_INSTANCE_KEEP_S,),
            )
            # dead | stopped -> forgotten: gone longer than forget_after
            report.forgotten = db.execute(
                "DELETE FROM workers WHERE status IN ('dead', 'stopped') AND last_heartbeat < ?",
                (now - forget_after,),
            ).rowcount
        while old:  # retention, in short transactions until the backlog is gone
            with self._write() as db:
                deleted = self._delete_finished(db, cutoff)
            report.deleted += deleted
            old = deleted == DELETE_BATCH
        return report

    def _rescue_worker_tasks(self, db, worker_id: str, now: float, outcome: str) -> list[str]:
        rows = db.execute(
            "SELECT id, lease_token, attempts, max_retries FROM tasks "
            "WHERE worker_id = ? AND status = 'in_progress'",
            (worker_id,),
        ).fetchall()
        for r in rows:
            self._expire(db, r, now, outcome)
        return [r["id"] for r in rows]

    def _expire(self, db, row, now: float, outcome: str) -> None:
        args = {
            "task_id": row["id"],
            "lease_token": row["lease_token"],
            "now": now,
            "error": EXPIRED_ERROR,
        }
        final = row["attempts"] > row["max_retries"]
        db.execute(EXPIRE_FINAL if final else EXPIRE_RETRY, args)
        db.execute(END_ATTEMPT, {**args, "outcome": outcome})

    def _delete_finished(self, db, cutoff: float) -> int:
        ids = [
            r["id"]
            for r in db.execute(
                "SELECT id FROM tasks WHERE finished_at < ? AND status IN "
                "('completed', 'failed', 'cancelled') LIMIT ?",
                (cutoff, DELETE_BATCH),
            )
        ]
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            db.execute(f"DELETE FROM attempts WHERE task_id IN ({marks})", chunk)
            db.execute(f"DELETE FROM tasks WHERE id IN ({marks})", chunk)
        return len(ids)

    # -- operator actions ---------------------------------------------------------

    def cancel(self, task_id: str, now: float) -> str:
        with self._write() as db:
            row = db.execute("SELECT status, lease_token FROM tasks WHERE id = ?", (task_id,))
            row = row.fetchone()
            if row is None:
                raise TaskNotFound(task_id)
            if not db.execute(CANCEL, {"task_id": task_id, "now": now}).rowcount:
                raise Conflict(f"task {task_id} is already {row['status']}; it cannot be cancelled")
            if row["lease_token"]:
                args = {"task_id": task_id, "lease_token": row["lease_token"], "now": now}
                db.execute(END_ATTEMPT, {**args, "outcome": "cancelled", "error": None})
        return "cancelled"

    def retry(self, task_id: str, now: float) -> str:
        with self._write() as db:
            row = db.execute("SELECT status FROM tasks WHERE id = ?", (task_id,)).fetchone()
            if row is None:
                raise TaskNotFound(task_id)
            if not db.execute(RETRY, {"task_id": task_id, "now": now}).rowcount:
                raise Conflict(
                    f"task {task_id} is {row['status']}; only failed or cancelled tasks "
                    "can be retried"
                )
        return "pending"

    # -- reading ------------------------------------------------------------------

    def get(self, task_id: str) -> dict:
        rows = self._read(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?", (task_id,))
        if not rows:
            raise TaskNotFound(task_id)
        task = task_dict(rows[0])
        task["history"] = [
            dict(r)
            for r in self._read(
                "SELECT attempt, worker_id, started_at, finished_at, outcome, error "
                "FROM attempts WHERE task_id = ? ORDER BY id",
                (task_id,),
            )
        ]
        return task

    def status_of(self, task_id: str) -> str:
        rows = self._read("SELECT status FROM tasks WHERE id = ?", (task_id,))
        if not rows:
            raise TaskNotFound(task_id)
        return rows[0]["status"]

    def list_tasks(
        self, status: str | None, type_: str | None, limit: int, offset: int
    ) -> list[dict]:
        where, args = [], []
        if status:
            where.append("status = ?")
            args.append(status)
        if type_:
            where.append("type = ?")
            args.append(type_)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._read(
            f"SELECT {TASK_COLUMNS} FROM tasks {clause} ORDER BY created_at, rowid "
            "LIMIT ? OFFSET ?",
            (*args, limit, offset),
        )
        return [task_dict(r) for r in rows]

    def stats(self, now: float, dead_after: float) -> dict:
        groups = self._read(
            "SELECT status, queue, type, count(*) AS n FROM tasks GROUP BY status, queue, type"
        )
        alive = self._read(
            "SELECT count(*) FROM workers WHERE status IN ('alive', 'stopping') "
            "AND last_heartbeat >= ?",
            (now - dead_after,),
        )[0][0]
        total = self._read("SELECT count(*) FROM workers")[0][0]
        stopped = self._read("SELECT count(*) FROM workers WHERE status = 'stopped'")[0][0]
        recent = self._read(
            "SELECT count(*) FROM tasks WHERE finished_at >= ? AND status = 'completed'",
            (now - 60,),
        )[0][0]
        oldest = self._read(OLDEST_PENDING)[0][0]
        return stats_dict(groups, alive, stopped, total, recent, oldest, now)

    def workers(self, now: float, dead_after: float) -> list[dict]:
        running: dict[str, list[str]] = {}
        for r in self._read(
            "SELECT worker_id, id FROM tasks WHERE status = 'in_progress' ORDER BY started_at"
        ):
            running.setdefault(r["worker_id"], []).append(r["id"])
        return [
            worker_dict(r, running.get(r["worker_id"], []), now, dead_after)
            for r in self._read("SELECT * FROM workers ORDER BY worker_id")
        ]

    def ping(self) -> None:
        self._read("SELECT 1")

    def health(self) -> str | None:
        """None when reads and writes work; why writes are refused when they are not
        (a read that fails raises): a write refused lately, or no byte free."""
        self.ping()
        if _free_bytes(self.path.parent) == 0:
            return str(DiskFull(f"no space left on the filesystem of {self.path}"))
        return self.refusals.recent()

    def change_counter(self) -> int:
        """PRAGMA data_version: it changes whenever another
        connection (in any process) commits. Cheap enough to poll every few ms. Read on
        a connection of its own (the counter is per connection), by one thread."""
        try:
            if self._watch_db is None:
                self._watch_db = self._open()
            return self._watch_db.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.OperationalError as exc:
            raise DatabaseUnavailable(f"database unavailable: {exc}") from exc

    def listen(self, callback: Callable[[], None], stop: threading.Event) -> None:
        """Call back when another process announces a commit (see localwake.py)."""
        self._wake.listen(callback, stop)

    def announce(self) -> None:
        """Tell the other processes on this file that have waiters: we committed."""
        self._wake.announce()

    def set_waiting(self, waiting: bool) -> None:
        """Whether this process has long polls held, for the other processes' announce()."""
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


def _chunks(items: list) -> Iterator[list]:
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]
