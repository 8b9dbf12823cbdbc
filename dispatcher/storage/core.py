"""The queue's rules, once for both databases: every status change, its statement and
the decision around it.

`SqlStorage` implements the operations of the Storage contract (storage/__init__.py)
against a transaction object (`Tx`: execute / one / all, and `notify`), and a backend
(sqlite.py, postgres.py) supplies what truly differs: connections and transactions
(`_transact`, `_read`), the schema and its migrations, the claim, the batch forms of
submit and finish, retention's delete, and wake-ups.

Statements are written once, in PostgreSQL's placeholder style (`%(name)s`); a backend
gets them through `statements(translate, **own)`, which translates each once at import
(SQLite: `:name`, and without the row-lock clauses it does not need, since its write
transaction holds the whole database) and adds or replaces the ones it words its own
way. Each statement states its rule in its WHERE clause and is judged by its row count,
so two dispatchers racing for one transition cannot both win.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType, SimpleNamespace
from typing import Any, TypeVar

from ..retry import retry_at
from . import (
    FINISHED,
    STOPPING,
    Moved,
    NewTask,
    ReapReport,
    Refusals,
    Result,
    audit,
    browse,
    deps,
    flow,
    rows,
    schedules,
    secrets,
)
from .errors import (
    Conflict,
    LeaseConflict,
    QueueFull,
    TaskNotFound,
    WorkerStopping,
    WorkerTakenOver,
)
from .rows import EXPIRED_ERROR, dumps

T = TypeVar("T")
# _complete_current's answer for a task it completed without reading its queue and type:
# finish() reads them afterwards, for all such tasks of the batch at once (LABELS)
UNLABELLED: Mapping[str, str] = MappingProxyType({})
SCHEMA_VERSION = 7  # SQLite's PRAGMA user_version, PostgreSQL's meta.schema_version
RETIRED_INSTANCE_KEEP_S = 86_400.0
DELETE_BATCH = 2000  # finished tasks deleted per retention transaction
TASK_COLUMNS = ", ".join(["id", *rows.TASK_KEYS])

# -- the schema, in PostgreSQL's words (sqlite.py translates it) ----------------------

# version 2's index of the oldest ready task (SQLite's migration 1 -> 2 still makes it)
PENDING_AGE_INDEX = "CREATE INDEX tasks_pending_age ON tasks (run_at) WHERE status = 'pending'"
# version 4's: the oldest ready task of each queue in one index lookup (/stats, /metrics
# and the dashboard show each queue's age)
PENDING_AGE_BY_QUEUE = (
    "CREATE INDEX tasks_pending_age ON tasks (queue, run_at) WHERE status = 'pending'"
)
# the queues a worker last claimed from, a JSON list (NULL: it has not claimed yet)
WORKER_QUEUES_COLUMN = "ALTER TABLE workers ADD COLUMN queues TEXT"
# the tasks a worker runs at once, as its heartbeats say (NULL: not said yet)
WORKER_CONCURRENCY_COLUMN = "ALTER TABLE workers ADD COLUMN concurrency INTEGER"
# version 3 -> 4, on both databases
TO_VERSION_4 = [
    "DROP INDEX tasks_pending_age",
    PENDING_AGE_BY_QUEUE,
    WORKER_CONCURRENCY_COLUMN,
]
# version 4 -> 5, on both databases: the progress its running attempt reported last, JSON
# text {"fraction", "message", "updated_at"} (NULL: none reported)
TO_VERSION_5 = ["ALTER TABLE tasks ADD COLUMN progress TEXT"]
# version 5 -> 6, on both databases (SQLite's in its types: sqlite.schema_for_sqlite)
TO_VERSION_6 = [
    # periodic tasks (storage/schedules.py), and the schedule and tick that created a
    # task (JSON text {"name", "tick"}; NULL: a client did)
    schedules.SCHEDULES_TABLE,
    schedules.TASK_SCHEDULE_COLUMN,
    # dependencies (storage/deps.py): task_dependencies, tasks.waiting_on, depends_on,
    # has_dependents
    *deps.TO_VERSION_6,
    # queue controls and expiry (storage/flow.py): tasks.expires_at, tasks_expiry,
    # queue_settings, queue_claims
    *flow.TO_VERSION_6,
]
# version 6 -> 7, on both databases: the audit trail (storage/audit.py) and the shared
# secrets (storage/secrets.py: the dashboard's session key)
TO_VERSION_7 = [*audit.TO_VERSION_7, *secrets.TO_VERSION_7]
SCHEMA = [
    """
    CREATE TABLE tasks (
        id TEXT PRIMARY KEY, type TEXT NOT NULL, queue TEXT NOT NULL, payload TEXT NOT NULL,
        status TEXT NOT NULL, priority INTEGER NOT NULL, run_at DOUBLE PRECISION NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, started_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION, attempts INTEGER NOT NULL DEFAULT 0,
        max_retries INTEGER NOT NULL, timeout DOUBLE PRECISION NOT NULL,
        worker_id TEXT, lease_token TEXT, lease_expires_at DOUBLE PRECISION,
        result TEXT, error TEXT, finished_lease TEXT,
        expired_failure BOOLEAN NOT NULL DEFAULT FALSE, idempotency_key TEXT UNIQUE,
        progress TEXT, schedule TEXT, waiting_on INTEGER NOT NULL DEFAULT 0, depends_on TEXT,
        has_dependents BOOLEAN NOT NULL DEFAULT FALSE, expires_at DOUBLE PRECISION,
        seq BIGINT GENERATED ALWAYS AS IDENTITY  -- insertion order (SQLite: rowid)
    )
    """,
    # the claim: ready tasks of a queue, highest priority first, then oldest
    "CREATE INDEX tasks_ready ON tasks (queue, priority DESC, run_at) WHERE status = 'pending'",
    PENDING_AGE_BY_QUEUE,  # each queue's oldest ready task in one index lookup
    "CREATE INDEX tasks_leased ON tasks (lease_expires_at) WHERE status = 'in_progress'",
    "CREATE INDEX tasks_by_worker ON tasks (worker_id) WHERE status = 'in_progress'",
    "CREATE INDEX tasks_finished ON tasks (finished_at) WHERE finished_at IS NOT NULL",
    "CREATE INDEX tasks_counts ON tasks (status, queue, type)",  # /stats from the index
    *flow.NEW_OBJECTS,  # queue settings, rate windows, the expiry index
    """
    CREATE TABLE attempts (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, task_id TEXT NOT NULL,
        attempt INTEGER NOT NULL, lease_token TEXT NOT NULL, worker_id TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL, finished_at DOUBLE PRECISION,
        outcome TEXT, error TEXT
    )
    """,
    "CREATE INDEX attempts_by_task ON attempts (task_id, lease_token)",
    """
    CREATE TABLE workers (
        worker_id TEXT PRIMARY KEY, instance_id TEXT NOT NULL, status TEXT NOT NULL,
        first_seen DOUBLE PRECISION NOT NULL, last_heartbeat DOUBLE PRECISION NOT NULL,
        completed INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0, queues TEXT,
        concurrency INTEGER
    )
    """,
    """
    CREATE TABLE retired_instances (
        instance_id TEXT PRIMARY KEY, worker_id TEXT NOT NULL,
        retired_at DOUBLE PRECISION NOT NULL
    )
    """,
    schedules.SCHEDULES_TABLE,
    *deps.SCHEMA,
    *TO_VERSION_7,
]

# -- statements, named by the transition they make ------------------------------------

SHARED = dict(
    # (nothing) -> pending, one task that may carry an idempotency key
    INSERT_TASK="""
INSERT INTO tasks (id, type, queue, payload, status, priority, run_at, created_at,
                   max_retries, timeout, idempotency_key, expires_at)
VALUES (%(id)s, %(type)s, %(queue)s, %(payload)s, 'pending', %(priority)s, %(run_at)s,
        %(now)s, %(max_retries)s, %(timeout)s, %(idempotency_key)s, %(expires_at)s)
ON CONFLICT (idempotency_key) DO NOTHING RETURNING id""",
    TASK_BY_KEY="SELECT id FROM tasks WHERE idempotency_key = %(key)s",
    # (read) pending tasks, counted up to %(cap)s only: at most `cap` entries of a partial
    # index on pending rows, never the whole table (MAX_PENDING_TASKS)
    PENDING_UP_TO="""
SELECT count(*) AS n FROM (SELECT 1 FROM tasks WHERE status = 'pending' LIMIT %(cap)s) AS p""",
    # in_progress -> completed by its current lease: the common case, judged by this
    # statement alone. The lease's attempt is the task's only open one (every way out of
    # in_progress closes the attempt it leaves), so no other attempt needs closing.
    COMPLETE_CURRENT="""
UPDATE tasks SET status = 'completed', result = %(result)s, error = NULL,
       finished_at = %(now)s, finished_lease = %(lease_token)s, lease_token = NULL,
       lease_expires_at = NULL, worker_id = %(worker_id)s
 WHERE id = %(task_id)s AND status = 'in_progress' AND lease_token = %(lease_token)s""",
    # (read) the queue and type of the tasks a batch of results completed by
    # COMPLETE_CURRENT, for the metrics' labels: one read per batch
    # (and whether each has dependents: deps.py)
    LABELS="SELECT id, queue, type, has_dependents FROM tasks WHERE id = ANY(%(ids)s)",
    # pending | in_progress -> completed, by any lease this task issued (first result wins)
    COMPLETE="""
UPDATE tasks SET status = 'completed', result = %(result)s, error = NULL,
       finished_at = %(now)s, finished_lease = %(lease_token)s, lease_token = NULL,
       lease_expires_at = NULL, worker_id = %(worker_id)s
 WHERE id = %(task_id)s AND status IN ('pending', 'in_progress')""",
    # failed (only by lease expiry) -> completed: a late real result replaces the expiry
    COMPLETE_AFTER_EXPIRY="""
UPDATE tasks SET status = 'completed', result = %(result)s, error = NULL,
       finished_at = %(now)s, finished_lease = %(lease_token)s, expired_failure = FALSE,
       worker_id = %(worker_id)s
 WHERE id = %(task_id)s AND status = 'failed' AND expired_failure""",
    # failed (only by lease expiry) -> failed with the worker's real error
    FAIL_AFTER_EXPIRY="""
UPDATE tasks SET error = %(error)s, finished_lease = %(lease_token)s, expired_failure = FALSE,
       worker_id = %(worker_id)s, finished_at = %(now)s
 WHERE id = %(task_id)s AND status = 'failed' AND expired_failure""",
    # in_progress -> pending at run_at, only under the current lease: a failure with
    # retries left (after back-off), or an expired lease or dead worker (at once)
    FAIL_RETRY="""
UPDATE tasks SET status = 'pending', run_at = %(run_at)s, error = %(error)s,
       lease_token = NULL, lease_expires_at = NULL, worker_id = NULL
 WHERE id = %(task_id)s AND status = 'in_progress' AND lease_token = %(lease_token)s""",
    # in_progress -> failed (no retries left): only the current lease
    FAIL_FINAL="""
UPDATE tasks SET status = 'failed', error = %(error)s, finished_at = %(now)s,
       finished_lease = %(lease_token)s, lease_token = NULL, lease_expires_at = NULL
 WHERE id = %(task_id)s AND status = 'in_progress' AND lease_token = %(lease_token)s""",
    # what a result is judged by, when it is not for the current lease
    TASK_FOR_RESULT="""
SELECT status, lease_token, finished_lease, expired_failure, attempts, max_retries, queue,
       type, has_dependents
  FROM tasks WHERE id = %(task_id)s FOR UPDATE""",
    LEASE_ISSUED="""
SELECT 1 FROM attempts WHERE task_id = %(task_id)s AND lease_token = %(lease_token)s""",
    # attempts still running when another lease's result finished the task
    CLOSE_SUPERSEDED="""
UPDATE attempts SET finished_at = %(now)s, outcome = 'superseded'
 WHERE task_id = %(task_id)s AND lease_token <> %(lease_token)s AND outcome IS NULL""",
    END_ATTEMPT="""
UPDATE attempts SET finished_at = %(now)s, outcome = %(outcome)s, error = %(error)s
 WHERE task_id = %(task_id)s AND lease_token = %(lease_token)s AND outcome IS NULL""",
    # the attempt whose (late) real result finished the task says so, even if the reaper
    # had already closed it as expired
    END_ATTEMPT_COMPLETED="""
UPDATE attempts SET finished_at = %(now)s, outcome = 'completed', error = NULL
 WHERE task_id = %(task_id)s AND lease_token = %(lease_token)s""",
    COUNT_RESULTS="""
UPDATE workers SET completed = completed + %(completed)s, failed = failed + %(failed)s
 WHERE worker_id = %(worker_id)s""",
    # in_progress -> failed: the lease expired on the last attempt (a later real result
    # may still replace this failure)
    EXPIRE_FINAL="""
UPDATE tasks SET status = 'failed', error = %(error)s, finished_at = %(now)s,
       expired_failure = TRUE, lease_token = NULL, lease_expires_at = NULL
 WHERE id = %(task_id)s AND status = 'in_progress' AND lease_token = %(lease_token)s""",
    # in_progress -> pending, given back unfinished: the attempt does not count
    RELEASE="""
UPDATE tasks SET status = 'pending', attempts = attempts - 1, lease_token = NULL,
       lease_expires_at = NULL, worker_id = NULL
 WHERE id = %(task_id)s AND status = 'in_progress' AND lease_token = %(lease_token)s
   AND worker_id = %(worker_id)s""",
    # waiting | pending | in_progress -> cancelled
    CANCEL="""
UPDATE tasks SET status = 'cancelled', finished_at = %(now)s, lease_token = NULL,
       lease_expires_at = NULL
 WHERE id = %(task_id)s AND status IN ('waiting', 'pending', 'in_progress')""",
    # failed | cancelled -> pending, attempts reset (and the progress forgotten; an
    # operator's retry no longer expires)
    RETRY="""
UPDATE tasks SET status = 'pending', attempts = 0, run_at = %(now)s, result = NULL,
       error = NULL, finished_at = NULL, started_at = NULL, finished_lease = NULL,
       expired_failure = FALSE, worker_id = NULL, progress = NULL, expires_at = NULL
 WHERE id = %(task_id)s AND status IN ('failed', 'cancelled')""",
    TASK_STATUS_LOCKED="""
SELECT status, lease_token, queue, type, depends_on, has_dependents FROM tasks
 WHERE id = %(task_id)s FOR UPDATE""",
    EXTEND_ALL="""
UPDATE tasks SET lease_expires_at = %(until)s
 WHERE worker_id = %(worker_id)s AND status = 'in_progress'""",
    # extend: only the listed tasks still in progress under this worker
    EXTEND_LISTED="""
UPDATE tasks SET lease_expires_at = %(until)s
 WHERE id = ANY(%(ids)s) AND worker_id = %(worker_id)s AND status = 'in_progress'""",
    # in_progress (progress reported): each task of the JSON object {task_id: progress
    # as JSON text} that this worker holds in progress takes its value; others are left
    # alone
    SET_PROGRESS="""
UPDATE tasks SET progress = p.value
  FROM json_each_text(%(progress)s::json) AS p
 WHERE tasks.id = p.key AND tasks.worker_id = %(worker_id)s AND tasks.status = 'in_progress'""",
    LISTED_STATES="""
SELECT id, status, worker_id, expired_failure FROM tasks WHERE id = ANY(%(ids)s)""",
    # -- workers --
    RETIRED="SELECT 1 FROM retired_instances WHERE instance_id = %(instance_id)s",
    WORKER_LOCKED="""
SELECT instance_id, status FROM workers WHERE worker_id = %(worker_id)s FOR UPDATE""",
    # (nothing) -> a worker, with the status its first call gives it
    REGISTER_WORKER="""
INSERT INTO workers (worker_id, instance_id, status, first_seen, last_heartbeat, queues,
                     concurrency)
VALUES (%(worker_id)s, %(instance_id)s, %(status)s, %(now)s, %(now)s, %(queues)s,
        %(concurrency)s)
ON CONFLICT (worker_id) DO NOTHING RETURNING 1""",
    RETIRE_INSTANCE="""
INSERT INTO retired_instances VALUES (%(old)s, %(worker_id)s, %(now)s) ON CONFLICT DO NOTHING""",
    # a new instance takes the worker id over
    TAKE_OVER="""
UPDATE workers SET instance_id = %(instance_id)s, status = %(status)s,
       last_heartbeat = %(now)s, queues = coalesce(%(queues)s, queues),
       concurrency = coalesce(%(concurrency)s, concurrency)
 WHERE worker_id = %(worker_id)s""",
    TOUCH_WORKER="""
UPDATE workers SET status = %(status)s, last_heartbeat = %(now)s,
       queues = coalesce(%(queues)s, queues), concurrency = coalesce(%(concurrency)s, concurrency)
 WHERE worker_id = %(worker_id)s""",
    WORKER_TASKS="""
SELECT id, lease_token, attempts, max_retries, has_dependents FROM tasks
 WHERE worker_id = %(worker_id)s AND status = 'in_progress' ORDER BY id FOR UPDATE""",
    # -- the reaper --
    SILENT_WORKERS="""
SELECT worker_id FROM workers
 WHERE status IN ('alive', 'stopping') AND last_heartbeat < %(cutoff)s
 ORDER BY worker_id COLLATE "C"
""",
    # alive | stopping -> dead: no heartbeat for dead_after; its tasks go back at once
    DECLARE_DEAD="""
UPDATE workers SET status = 'dead'
 WHERE worker_id = %(worker_id)s AND status IN ('alive', 'stopping')
   AND last_heartbeat < %(cutoff)s""",
    ANY_GONE="""
SELECT 1 FROM workers WHERE status IN ('dead', 'stopped') AND last_heartbeat < %(cutoff)s
 LIMIT 1""",
    # dead | stopped -> forgotten: gone longer than forget_after
    FORGET_WORKERS="""
DELETE FROM workers WHERE status IN ('dead', 'stopped') AND last_heartbeat < %(cutoff)s""",
    ANY_EXPIRED="""
SELECT 1 FROM tasks WHERE status = 'in_progress' AND lease_expires_at < %(now)s LIMIT 1""",
    EXPIRED_TASKS="""
SELECT id, lease_token, attempts, max_retries, queue, has_dependents FROM tasks
 WHERE status = 'in_progress' AND lease_expires_at < %(now)s
 ORDER BY id FOR UPDATE SKIP LOCKED""",
    ANY_PAST_RETENTION="""
SELECT 1 FROM tasks
 WHERE finished_at < %(cutoff)s AND status IN ('completed', 'failed', 'cancelled') LIMIT 1""",
    FORGET_RETIRED="DELETE FROM retired_instances WHERE retired_at < %(cutoff)s",
    # -- reading --
    GET_TASK=f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = %(task_id)s",
    HISTORY="""
SELECT attempt, worker_id, started_at, finished_at, outcome, error
  FROM attempts WHERE task_id = %(task_id)s ORDER BY id""",
    STATUS_OF="SELECT status FROM tasks WHERE id = %(task_id)s",
    # (read) the status of each of many tasks (held waits for many read it often)
    STATUS_AMONG="SELECT id, status FROM tasks WHERE id = ANY(%(ids)s)",
    TASKS_AMONG=f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = ANY(%(ids)s)",
    HISTORY_AMONG="""
SELECT task_id, attempt, worker_id, started_at, finished_at, outcome, error
  FROM attempts WHERE task_id = ANY(%(ids)s) ORDER BY task_id, id""",
    # optional filters, written in SQL: a NULL filter lets every row through
    LIST_TASKS=f"""
SELECT {TASK_COLUMNS} FROM tasks
 WHERE (%(status)s::text IS NULL OR status = %(status)s)
   AND (%(type)s::text IS NULL OR type = %(type)s)
 ORDER BY created_at, seq LIMIT %(limit)s OFFSET %(offset)s""",
    STATS_GROUPS="""
SELECT status, queue, type, count(*) AS n FROM tasks GROUP BY status, queue, type""",
    STATS_OTHERS="""
SELECT (SELECT count(*) FROM workers
         WHERE status IN ('alive', 'stopping') AND last_heartbeat >= %(alive_after)s) AS alive,
       (SELECT count(*) FROM workers WHERE status = 'stopped') AS stopped,
       (SELECT count(*) FROM workers) AS total""",
    # (read) pending and in-progress tasks by queue: two ranges of tasks_counts, not the
    # finished millions
    ACTIVE_COUNTS="""
SELECT queue, status, count(*) AS n FROM tasks
 WHERE status IN ('pending', 'in_progress') GROUP BY queue, status""",
    # the earliest run_at of a queue's pending tasks: one step down tasks_pending_age
    OLDEST_PENDING_IN="""
SELECT min(run_at) AS t FROM tasks WHERE status = 'pending' AND queue = %(queue)s""",
    # tasks finished since %(since)s by queue, status and minute, from tasks_finished
    FINISHED_SINCE="""
SELECT queue, status, floor(finished_at / 60) AS minute, count(*) AS n FROM tasks
 WHERE finished_at >= %(since)s GROUP BY queue, status, minute""",
    RUNNING_BY_WORKER="""
SELECT worker_id, id, progress FROM tasks WHERE status = 'in_progress' ORDER BY started_at""",
    ALL_WORKERS='SELECT * FROM workers ORDER BY worker_id COLLATE "C"',
    PING="SELECT 1 AS one",
    **browse.STATEMENTS,  # the dashboard's finders and bulk moves
    **schedules.STATEMENTS,  # periodic tasks
    **deps.STATEMENTS,  # dependencies: submit, release, cascade, results
    **flow.STATEMENTS,  # queue settings, rate windows, expiry
    **audit.STATEMENTS,  # the audit trail
    **secrets.STATEMENTS,  # shared secrets
)


def statements(translate: Callable[[str], str] = lambda sql: sql, **own: str) -> SimpleNamespace:
    """SHARED in one database's words (translated once, here), and the backend's `own`."""
    return SimpleNamespace(**{**{k: translate(v) for k, v in SHARED.items()}, **own})


class Tx:
    """One open transaction on a DB-API connection or cursor (sqlite3, psycopg)."""

    def __init__(self, handle: Any):
        self.handle = handle
        self.notify = False  # set: the commit may wake held polls (new work, a finished task)
        self.cascaded: list[Mapping] = []  # tasks cancelled by a dependency (deps._cascade)
        # (queue, type) of not-started tasks cancelled past their expiry (flow.py)
        self.expired: list[tuple[str, str]] = []
        # a claim's WORKER_FOR_CLAIM row (limited, expired), when its worker was known
        self.probe: Any = None

    def execute(self, sql: str, args: Any = None) -> Any:
        """Run a statement; the result has `rowcount`."""
        return self.handle.execute(sql) if args is None else self.handle.execute(sql, args)

    def one(self, sql: str, args: Any = None) -> Any:
        return self.execute(sql, args).fetchone()

    def all(self, sql: str, args: Any = None) -> list:
        return self.execute(sql, args).fetchall()


class SqlStorage(
    browse.Browse,
    schedules.Schedules,
    deps.Dependencies,
    flow.QueueControls,
    audit.Audit,
    secrets.Secrets,
):
    """The operations of the Storage contract (the Protocol in __init__.py declares their
    types and documents each); a backend subclasses it."""

    q: SimpleNamespace  # the statements, in the backend's dialect

    def __init__(self, backoff_base: float, backoff_cap: float):
        self.backoff = (backoff_base, backoff_cap)  # retry_at's, for a failure with retries left
        self.refusals = Refusals()  # writes refused for a full disk or a read-only database
        self.on_change: Callable[[], None] = lambda: None  # Storage.on_change
        self.on_cascade: Callable[[list[Mapping]], None] = lambda rows: None  # Storage's
        self.on_expired: Callable[[list[tuple[str, str]]], None] = lambda tasks: None
        self.max_pending = 0  # Storage.max_pending (MAX_PENDING_TASKS); 0: no limit
        # this process's estimate of the pending count: the last exact count, when it
        # was made (`now` of that submission), and what this process submitted since
        self._pending_seen: tuple[int, float] | None = None
        self._pending_added = 0

    def _committed(self, tx: Tx) -> None:
        """After a commit: tell the app what storage itself cancelled in it (metrics)."""
        if tx.cascaded:
            self.on_cascade(tx.cascaded)
        if tx.expired:
            self.on_expired(tx.expired)

    # -- what a backend supplies ----------------------------------------------------

    def _transact(self, body: Callable[[Tx], T], fsync: bool = True) -> T:
        """BEGIN; body(tx); COMMIT, then (with tx.notify) tell the waiters. `fsync`
        False: the commit need not reach the disk at once (a claim)."""
        raise NotImplementedError

    def _read(self, sql: str, args: Mapping[str, Any] | None = None) -> list[Mapping]:
        raise NotImplementedError

    def _ids(self, ids: list[str]) -> Any:
        """A list of ids as the dialect's `ANY(%(ids)s)` wants it."""
        return ids

    def _text(self, value: str | None) -> str | None:
        """An error message as the database can hold it."""
        return value

    def _insert_many(self, tx: Tx, ids: list[str], tasks: list[NewTask], now: float) -> None:
        """(nothing) -> pending, tasks without an idempotency key, in bulk."""
        raise NotImplementedError

    def _finish_batch(
        self, tx: Tx, results: list[Result], order: list[int], now: float
    ) -> tuple[dict[int, Mapping], set[int]]:
        """A backend's set-based finish: (the indices it finished, each with its task's
        queue and type; the indices it found not for the current lease); the rest go
        result by result."""
        return {}, set()

    def _complete_current(self, tx: Tx, args: dict) -> Mapping | None:
        """in_progress -> completed under the current lease, its attempt closed: the
        task's queue and type, or None when the result is not for that lease. Here
        UNLABELLED (SQLite's case): SQLite runs `RETURNING` as a trigger program, ~40,000
        instructions a row, as dear as the update itself, where finish()'s one LABELS
        read for the batch costs ~15,000 a task at 100 results (callgrind, 2026-12-04)."""
        if not tx.execute(self.q.COMPLETE_CURRENT, args).rowcount:
            return None
        tx.execute(self.q.END_ATTEMPT_COMPLETED, args)  # the claim made it
        return UNLABELLED

    def _delete_finished(self, tx: Tx, cutoff: float) -> int:
        """Finished tasks past retention (a batch of them) and their history."""
        raise NotImplementedError

    def set_waiting(self, waiting: bool) -> None:
        """Nothing by default: a backend whose push reaches every process (NOTIFY)."""

    def _stats_rows(self, args: dict) -> tuple[list[Mapping], Mapping]:
        return self._read(self.q.STATS_GROUPS), self._read(self.q.STATS_OTHERS, args)[0]

    # -- submission ---------------------------------------------------------------

    def submit(self, tasks: list[NewTask], now: float) -> list[tuple[str, bool]]:
        ids = rows.new_ids(len(tasks), now)
        if any(task.depends_on for task in tasks):  # deps.py: task by task, statuses read
            return self._submit_dependent(ids, tasks, now)
        limit = self.max_pending  # 0: no limit, and not one instruction more below
        if not any(task.idempotency_key for task in tasks):  # the bulk path

            def insert_all(tx: Tx) -> list[tuple[str, bool]]:
                if limit:
                    self._check_room(tx, len(tasks), len(tasks), now)
                self._insert_many(tx, ids, tasks, now)
                tx.notify = bool(tasks)
                return [(task_id, True) for task_id in ids]

            out = self._transact(insert_all)
            if limit:
                self._pending_added += len(tasks)
            return out

        def insert_each(tx: Tx) -> list[tuple[str, bool]]:
            pending = self._pending_before(tx, len(tasks), now) if limit else None
            out = []
            for task_id, task in zip(ids, tasks, strict=True):
                args = rows.insert_values(task_id, task, now)
                if tx.one(self.q.INSERT_TASK, args) is not None:
                    out.append((task_id, True))
                    tx.notify = True
                else:  # the key is taken (a concurrent insert has committed by now)
                    row = tx.one(self.q.TASK_BY_KEY, {"key": task.idempotency_key})
                    out.append((row["id"], False))
            created = sum(fresh for _, fresh in out)
            if pending is not None and created and pending + created > limit:
                raise QueueFull(pending, created, limit)  # the rollback stores none of it
            return out

        out = self._transact(insert_each)
        if limit:
            self._pending_added += sum(fresh for _, fresh in out)
        return out

    # MAX_PENDING_TASKS: the exact count (bounded) only when it may matter
    NEAR_LIMIT = 0.9  # an estimate past this share of the limit makes every submission count
    ESTIMATE_AGE = 1.0  # seconds an exact count stands in for the pending count, at most

    def _pending_before(self, tx: Tx, adding: int, now: float) -> int | None:
        """The pending count inside the submit transaction, counted (at most limit + 1
        index entries) when this process's estimate is stale or says `adding` tasks may
        come near the limit; None when the estimate says they cannot."""
        limit = self.max_pending
        seen = self._pending_seen
        if (
            seen is not None
            and 0 <= now - seen[1] < self.ESTIMATE_AGE
            and seen[0] + self._pending_added + adding <= limit * self.NEAR_LIMIT
        ):
            return None
        pending = tx.one(self.q.PENDING_UP_TO, {"cap": limit + 1})["n"]
        self._pending_seen, self._pending_added = (pending, now), 0
        return pending

    def _check_room(self, tx: Tx, adding: int, created: int, now: float) -> None:
        pending = self._pending_before(tx, adding, now)
        if pending is not None and pending + created > self.max_pending:
            raise QueueFull(pending, created, self.max_pending)

    # -- results ------------------------------------------------------------------

    def finish(self, results: list[Result], now: float) -> list[str | Exception]:
        # tasks in id order (a stable sort: one task's results keep their order), so two
        # batches that share tasks lock them in the same order
        order = sorted(range(len(results)), key=lambda i: results[i].task_id)

        def finish_all(tx: Tx) -> list[str | Exception]:
            out: list[Any] = [""] * len(results)
            counts: Counter[tuple[str, str]] = Counter()  # (worker_id, completed | failed)
            linked: set[str] = set()  # the batch's tasks that have dependents (deps.py)
            done, tried = self._finish_batch(tx, results, order, now)
            for i, task in done.items():
                out[i] = Moved(results[i].status, task["queue"], task["type"])
                if task["has_dependents"]:
                    linked.add(results[i].task_id)
            unlabelled = []
            for i in order:
                if i in done:
                    continue
                try:
                    out[i] = self._finish_one(tx, results[i], now, counts, i in tried, linked)
                except (TaskNotFound, Conflict) as exc:
                    out[i] = exc
                if out[i] is UNLABELLED:
                    unlabelled.append(i)
            if unlabelled:
                ids = self._ids([results[i].task_id for i in unlabelled])
                labels = {r["id"]: r for r in tx.all(self.q.LABELS, {"ids": ids})}
                for i in unlabelled:
                    task = labels[results[i].task_id]
                    out[i] = Moved("completed", task["queue"], task["type"])
                    if task["has_dependents"]:
                        linked.add(results[i].task_id)
            if linked:  # dependents released or cancelled (deps.py); none: no statement
                self._after_results(tx, results, out, linked, now)
            for worker_id in sorted({w for w, _ in counts}):  # once per worker and batch
                n = {"completed": counts[worker_id, "completed"]}
                n["failed"] = counts[worker_id, "failed"]
                tx.execute(self.q.COUNT_RESULTS, {"worker_id": worker_id, **n})
            tx.notify = any(isinstance(o, str) for o in out)
            return out

        return self._transact(finish_all)

    def _finish_one(
        self,
        tx: Tx,
        item: Result,
        now: float,
        counts: Counter,
        tried_current: bool = False,
        linked: set[str] | None = None,
    ) -> Any:
        """One result, judged alone: a Moved when it moved the task (UNLABELLED, when
        _complete_current did not read its queue and type). `tried_current`:
        the batch statement already found it is not for the task's current lease (or
        a failure with retries left)."""
        _known_id(item.task_id)
        args = dict(task_id=item.task_id, lease_token=item.lease_token, worker_id=item.worker_id)
        args.update(now=now, result=dumps(item.result), error=self._text(item.error))
        if item.status == "completed" and not tried_current:
            if (task := self._complete_current(tx, args)) is not None:
                counts[item.worker_id, "completed"] += 1
                if task is UNLABELLED:
                    return task  # finish() reads its queue and type with the batch's others
                if task["has_dependents"] and linked is not None:
                    linked.add(item.task_id)
                return Moved("completed", task["queue"], task["type"])
        row = tx.one(self.q.TASK_FOR_RESULT, args)
        if row is None:
            raise TaskNotFound(item.task_id)
        if row["has_dependents"] and linked is not None:
            linked.add(item.task_id)
        if tx.one(self.q.LEASE_ISSUED, args) is None:
            raise LeaseConflict(f"lease_token was not issued for task {item.task_id}")
        status, queue, type_ = row["status"], row["queue"], row["type"]
        if item.status == "completed":
            if status in ("pending", "in_progress") and tx.execute(self.q.COMPLETE, args).rowcount:
                self._end_attempt(tx, args, "completed", counts)
                tx.execute(self.q.CLOSE_SUPERSEDED, args)
                return Moved("completed", queue, type_)
            if tx.execute(self.q.COMPLETE_AFTER_EXPIRY, args).rowcount:
                self._end_attempt(tx, args, "completed", counts)
                return Moved("completed", queue, type_)
        elif status == "in_progress" and row["lease_token"] == item.lease_token:
            when = retry_at(row["attempts"], row["max_retries"], now, *self.backoff)
            args["run_at"] = when
            if tx.execute(self.q.FAIL_FINAL if when is None else self.q.FAIL_RETRY, args).rowcount:
                self._end_attempt(tx, args, "failed", counts)
                return Moved("failed" if when is None else "pending", queue, type_)
        elif status in ("pending", "in_progress"):
            # a failure reported under an earlier lease: history only, the task belongs
            # to its current lease (or waits for its next claim)
            self._end_attempt(tx, args, "failed", counts)
            return status
        elif tx.execute(self.q.FAIL_AFTER_EXPIRY, args).rowcount:
            # failed by lease expiry (not counted as finished then) -> failed, its error
            self._end_attempt(tx, args, "failed", counts)
            return Moved("failed", queue, type_)
        if status in FINISHED and row["finished_lease"] == item.lease_token:
            return status  # the same result again: harmless
        raise LeaseConflict(f"task {item.task_id} is already {status} under another lease")

    def _end_attempt(self, tx: Tx, args: dict, outcome: str, counts: Counter) -> None:
        """Close the lease's attempt; the worker's counter moves only when the attempt
        was open (a re-sent failure counts once)."""
        if outcome == "completed":
            closed = tx.execute(self.q.END_ATTEMPT_COMPLETED, args).rowcount
        else:
            closed = tx.execute(self.q.END_ATTEMPT, {**args, "outcome": outcome}).rowcount
        if closed:
            counts[args["worker_id"], outcome] += 1

    # -- workers and leases -------------------------------------------------------

    def claim(self, worker_id, instance_id, queues, max_tasks, now, lease_s) -> list[dict]:
        """The commit need not be fsynced: a claim lost in a power cut only puts its
        tasks back to pending (docs/RELIABILITY.md)."""

        def claim_tasks(tx: Tx) -> list[dict]:
            status = self._touch_worker(tx, worker_id, instance_id, now, queues=queues, claim=True)
            if status in STOPPING:
                raise WorkerStopping(worker_id)
            probe = tx.probe  # None: a worker not known before; look at both
            # not-started tasks past their expiry are never handed out (flow.py)
            if not probe or probe["expired"]:
                self._expire_unstarted(tx, now)
            claimed: list[dict] = []
            dependent: list[tuple[dict, str]] = []  # (claimed task, its depends_on)
            # the claimed queues' limits, locked ({} while no queue is limited)
            limits = self._locked_limits(tx, queues) if not probe or probe["limited"] else {}
            for queue in queues:
                want = max_tasks - len(claimed)
                if want <= 0:
                    break
                limit = limits.get(queue)
                if limit is not None and (want := self._allowance(tx, limit, want, now)) <= 0:
                    continue
                args = {"worker_id": worker_id, "now": now, "lease_s": lease_s, "queue": queue}
                got = self._claim_queue(tx, {**args, "max_tasks": want})
                if limit is not None:
                    self._record_claim(tx, limit, len(got), now)
                got.sort(key=lambda r: (-r["priority"], r["run_at"]))
                for r in got:
                    claimed.append(task := rows.claim_dict(r, queue))
                    if r["depends_on"] is not None:
                        dependent.append((task, r["depends_on"]))
            if dependent:  # one read of their dependencies' results (deps.py)
                self._add_dependencies(tx, dependent)
            return claimed

        return self._transact(claim_tasks, fsync=False)

    def _claim_queue(self, tx: Tx, args: dict) -> list:
        """pending -> in_progress for one queue (CLAIM), the attempts recorded."""
        return tx.all(self.q.CLAIM, args)

    def _touch_worker(
        self,
        tx: Tx,
        worker_id: str,
        instance_id: str,
        now: float,
        state: str | None = None,
        queues: tuple[str, ...] | None = None,
        concurrency: int | None = None,
        claim: bool = False,
    ) -> str:
        """Register or refresh a worker, and return its status; a new instance of a
        known id takes it over and its earlier instance's tasks go back to the queue at
        once. `state` (a heartbeat's: stopping, stopped) sets the status; without one a
        stopping or stopped instance keeps its status and any other is alive. The
        worker's row is locked first (PostgreSQL): its calls take turns. For a `claim`
        it is read with what the claim looks at besides (WORKER_FOR_CLAIM: tx.probe)."""
        if instance_id and tx.one(self.q.RETIRED, {"instance_id": instance_id}):
            raise WorkerTakenOver(worker_id)
        args = dict(worker_id=worker_id, instance_id=instance_id, now=now, status=state or "alive")
        args["queues"] = None if queues is None else dumps(list(queues))
        args["concurrency"] = concurrency
        if claim:
            row = tx.probe = tx.one(self.q.WORKER_FOR_CLAIM, args)
        else:
            row = tx.one(self.q.WORKER_LOCKED, args)
        if row is None:
            if tx.one(self.q.REGISTER_WORKER, args):
                return args["status"]
            row = tx.one(self.q.WORKER_LOCKED, args)  # another dispatcher registered it
        if instance_id and row["instance_id"] != instance_id:
            if row["instance_id"]:
                tx.execute(self.q.RETIRE_INSTANCE, {**args, "old": row["instance_id"]})
            if self._rescue_worker_tasks(tx, worker_id, now, "worker restarted"):
                tx.notify = True
            tx.execute(self.q.TAKE_OVER, args)
            return args["status"]
        if state is None and row["status"] in STOPPING:
            args["status"] = row["status"]
        tx.execute(self.q.TOUCH_WORKER, args)
        return args["status"]

    def heartbeat(
        self,
        worker_id,
        instance_id,
        task_ids,
        now,
        lease_s,
        state=None,
        concurrency=None,
        progress=None,
    ) -> list[str]:
        until = now + lease_s
        # {task_id: its progress as JSON text} as one JSON object, for SET_PROGRESS (none:
        # no statement). Text inside text: whatever a message holds (a NUL, a lone
        # surrogate) stays escaped, which PostgreSQL's json type requires
        reported = None
        if progress:
            reported = dumps(
                {
                    task_id: dumps(
                        {"fraction": p["fraction"], "message": p["message"], "updated_at": now}
                    )
                    for task_id, p in progress.items()
                }
            )

        def beat(tx: Tx) -> list[str]:
            self._touch_worker(tx, worker_id, instance_id, now, state, concurrency=concurrency)
            if reported:
                tx.execute(self.q.SET_PROGRESS, {"progress": reported, "worker_id": worker_id})
            if task_ids is None:
                tx.execute(self.q.EXTEND_ALL, {"until": until, "worker_id": worker_id})
                return []
            args = {"until": until, "ids": self._ids(list(task_ids)), "worker_id": worker_id}
            tx.execute(self.q.EXTEND_LISTED, args)
            # keep going: a task still its own, or one a late result still counts for
            # (pending again, or failed only by lease expiry)
            keep = {
                r["id"]
                for r in tx.all(self.q.LISTED_STATES, args)
                if (r["status"] == "in_progress" and r["worker_id"] == worker_id)
                or r["status"] == "pending"
                or (r["status"] == "failed" and r["expired_failure"])
            }
            return [task_id for task_id in task_ids if task_id not in keep]

        return self._transact(beat)

    def release(self, worker_id: str, tasks: list[tuple[str, str]], now: float) -> int:
        def give_back(tx: Tx) -> int:
            released = 0
            for task_id, lease_token in sorted(tasks):
                args = dict(task_id=task_id, lease_token=lease_token, now=now, worker_id=worker_id)
                args["error"] = None
                if tx.execute(self.q.RELEASE, args).rowcount:
                    tx.execute(self.q.END_ATTEMPT, {**args, "outcome": "released"})
                    released += 1
            tx.notify = released > 0
            return released

        return self._transact(give_back)

    # -- the reaper -----------------------------------------------------------------

    def reap(
        self,
        now: float,
        dead_after: float,
        retention_s: float,
        forget_after: float = 86_400.0,
        audit_retention_s: float = audit.DEFAULT_RETENTION_S,
    ) -> ReapReport:
        report = ReapReport()
        cutoff_alive = now - dead_after
        dead = self._read(self.q.SILENT_WORKERS, {"cutoff": cutoff_alive})
        gone = self._read(self.q.ANY_GONE, {"cutoff": now - forget_after})
        expired = self._read(self.q.ANY_EXPIRED, {"now": now})
        unstarted = self._read(self.q.ANY_EXPIRED_UNSTARTED, {"now": now})
        cutoff = now - retention_s
        old = retention_s > 0 and self._read(self.q.ANY_PAST_RETENTION, {"cutoff": cutoff})
        if dead or expired or gone or unstarted:

            def sweep(tx: Tx) -> ReapReport:  # may run again (a deadlock): its own report
                found = ReapReport()
                for worker_id in (row["worker_id"] for row in dead):
                    args = {"worker_id": worker_id, "cutoff": cutoff_alive}
                    if tx.execute(self.q.DECLARE_DEAD, args).rowcount:
                        found.dead_workers.append(worker_id)
                        found.rescued += self._rescue_worker_tasks(
                            tx, worker_id, now, "worker dead"
                        )
                for r in tx.all(self.q.EXPIRED_TASKS, {"now": now}):
                    if self._expire(tx, r, now, "expired"):
                        found.expired.append(r["id"])
                        found.expired_queues.append(r["queue"])
                tx.execute(self.q.FORGET_RETIRED, {"cutoff": now - RETIRED_INSTANCE_KEEP_S})
                args = {"cutoff": now - forget_after}
                found.forgotten = tx.execute(self.q.FORGET_WORKERS, args).rowcount
                found.unstarted = self._expire_unstarted(tx, now)
                tx.notify = bool(found.rescued or found.expired or found.unstarted)
                return found

            report = self._transact(sweep)
            more = len(report.unstarted) == flow.EXPIRE_BATCH
            while more:  # a backlog of expired tasks, a batch per transaction
                batch = self._transact(lambda tx: self._expire_unstarted(tx, now))
                report.unstarted += batch
                more = len(batch) == flow.EXPIRE_BATCH
        while old:  # retention, in short transactions until the backlog is gone
            deleted = self._transact(lambda tx: self._delete_finished(tx, cutoff))
            report.deleted += deleted
            old = deleted == DELETE_BATCH
        report.audit_deleted = self._reap_audit(now - audit_retention_s)
        return report

    def _rescue_worker_tasks(self, tx: Tx, worker_id: str, now: float, outcome: str) -> list[str]:
        held = tx.all(self.q.WORKER_TASKS, {"worker_id": worker_id})
        return [r["id"] for r in held if self._expire(tx, r, now, outcome)]

    def _expire(self, tx: Tx, row: Mapping, now: float, outcome: str) -> bool:
        args = dict(task_id=row["id"], lease_token=row["lease_token"], now=now, run_at=now)
        args["error"] = EXPIRED_ERROR
        final = row["attempts"] > row["max_retries"]
        if not tx.execute(self.q.EXPIRE_FINAL if final else self.q.FAIL_RETRY, args).rowcount:
            return False
        tx.execute(self.q.END_ATTEMPT, {**args, "outcome": outcome})
        if final and row["has_dependents"]:  # failed for good: its dependents cancelled
            self._cascade(tx, [row["id"]], now)
        return True

    # -- operator actions ---------------------------------------------------------

    def cancel(self, task_id: str, now: float) -> Moved:
        refusal = "already {}; it cannot be cancelled"
        return self._operator_move(task_id, now, self.q.CANCEL, "cancelled", refusal)

    def retry(self, task_id: str, now: float) -> Moved:
        refusal = "{}; only failed or cancelled tasks can be retried"
        return self._operator_move(task_id, now, self.q.RETRY, "pending", refusal)

    def _operator_move(
        self, task_id: str, now: float, statement: str, to: str, refusal: str
    ) -> Moved:
        """cancel or retry: one guarded UPDATE; a cancelled task's running attempt closed."""
        _known_id(task_id)

        def move(tx: Tx) -> Moved:
            args = {"task_id": task_id, "now": now}
            row = tx.one(self.q.TASK_STATUS_LOCKED, args)
            if row is None:
                raise TaskNotFound(task_id)
            sql, status = statement, to
            if to == "pending" and row["depends_on"] and row["status"] in ("failed", "cancelled"):
                sql, status, more = self._retry_dependent(tx, task_id, row)
                args.update(more)
            if not tx.execute(sql, args).rowcount:
                raise Conflict(f"task {task_id} is " + refusal.format(row["status"]))
            if row["lease_token"]:  # only an in_progress task has one
                args.update(lease_token=row["lease_token"], outcome=to, error=None)
                tx.execute(self.q.END_ATTEMPT, args)
            if to == "cancelled" and row["has_dependents"]:  # those waiting on it (deps.py)
                self._cascade(tx, [task_id], now)
            tx.notify = True  # new work, or a finished task (GET /task?wait)
            return Moved(status, row["queue"], row["type"])

        return self._transact(move)

    # -- reading ------------------------------------------------------------------

    def get(self, task_id: str) -> dict:
        _known_id(task_id)
        found = self._read(self.q.GET_TASK, {"task_id": task_id})
        if not found:
            raise TaskNotFound(task_id)
        task = rows.task_dict(found[0])
        task["history"] = [dict(r) for r in self._read(self.q.HISTORY, {"task_id": task_id})]
        task["dependents"] = self.dependents(task_id)
        return task

    def status_of(self, task_id: str) -> str:
        _known_id(task_id)
        found = self._read(self.q.STATUS_OF, {"task_id": task_id})
        if not found:
            raise TaskNotFound(task_id)
        return found[0]["status"]

    def finished_among(self, task_ids: list[str]) -> tuple[list[dict], list[str]]:
        ids = [t for t in task_ids if "\x00" not in t]  # as _known_id: no such task
        found = self._read(self.q.STATUS_AMONG, {"ids": self._ids(ids)}) if ids else []
        status = {r["id"]: r["status"] for r in found}
        done = [t for t in dict.fromkeys(task_ids) if status.get(t) in FINISHED]
        missing = [t for t in task_ids if t not in status]
        if not done:
            return [], missing
        args = {"ids": self._ids(done)}
        tasks = {r["id"]: rows.task_dict(r) for r in self._read(self.q.TASKS_AMONG, args)}
        for task in tasks.values():
            task["history"] = []
            task["dependents"] = []
        for r in self._read(self.q.DEPENDENTS_AMONG, args):
            if r["depends_on"] in tasks:  # (one deleted since it was read: left out)
                tasks[r["depends_on"]]["dependents"].append(r["task_id"])
        for r in self._read(self.q.HISTORY_AMONG, args):
            attempt = dict(r)
            tasks[attempt.pop("task_id")]["history"].append(attempt)
        return [tasks[t] for t in done if t in tasks], missing

    def list_tasks(
        self, status: str | None, type_: str | None, limit: int, offset: int
    ) -> list[dict]:
        args = {"status": status, "type": type_, "limit": limit, "offset": offset}
        return [rows.task_dict(r) for r in self._read(self.q.LIST_TASKS, args)]

    def stats(self, now: float, dead_after: float) -> dict:
        groups, row = self._stats_rows({"alive_after": now - dead_after})
        pending = sorted({r["queue"] for r in groups if r["status"] == "pending"})
        recent = self.finished_since(now - 60)
        return rows.stats_dict(groups, row, now, recent, self.oldest_pending(pending))

    def active_counts(self) -> list[Mapping]:
        """(queue, status, n) of the pending and in-progress tasks: index ranges only."""
        return self._read(self.q.ACTIVE_COUNTS)

    def finished_since(self, since: float) -> list[Mapping]:
        """(queue, status, minute, n): the tasks finished since `since`, counted by queue,
        status and minute (floor(finished_at / 60)). A range of tasks_finished."""
        return self._read(self.q.FINISHED_SINCE, {"since": since})

    def oldest_pending(self, queues: Iterable[str]) -> dict[str, float]:
        """Each queue's earliest pending run_at (queues without a pending task left out):
        one index lookup per queue."""
        out = {}
        for queue in queues:
            t = self._read(self.q.OLDEST_PENDING_IN, {"queue": queue})[0]["t"]
            if t is not None:
                out[queue] = t
        return out

    def workers(self, now: float, dead_after: float) -> list[dict]:
        running: dict[str, list[str]] = {}
        progress: dict[str, dict[str, dict]] = {}  # worker -> task -> its progress
        for r in self._read(self.q.RUNNING_BY_WORKER):
            running.setdefault(r["worker_id"], []).append(r["id"])
            if r["progress"] is not None:
                progress.setdefault(r["worker_id"], {})[r["id"]] = rows.loads(r["progress"])
        return [
            rows.worker_dict(
                r, running.get(r["worker_id"], []), now, dead_after, progress.get(r["worker_id"])
            )
            for r in self._read(self.q.ALL_WORKERS)
        ]

    def ping(self) -> None:
        self._read(self.q.PING)

    def health(self) -> str | None:
        self.ping()
        return self.refusals.recent()


def upgrade(tx: Tx, version: int, migrations: dict[int, list[str]]) -> int:
    """Bring a schema at `version` up to SCHEMA_VERSION (migrations[n] takes n to n + 1)."""
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"database schema version {version} is newer than this code's "
            f"{SCHEMA_VERSION}; upgrade the code"
        )
    for v in range(version, SCHEMA_VERSION):
        for statement in migrations[v]:
            tx.execute(statement)
    return SCHEMA_VERSION


def _known_id(task_id: str) -> None:
    """Task ids are hex: one holding a NUL (which PostgreSQL text cannot even hold) is
    simply unknown, on both databases."""
    if "\x00" in task_id:
        raise TaskNotFound(task_id)
