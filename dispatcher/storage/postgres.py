"""PostgreSQL storage: the same named operations as sqlite.py, for several dispatchers.

Every state change states its rule in its WHERE clause and is judged by its row count,
exactly as on SQLite; the differences are how transactions meet:

- Connections come from a `psycopg_pool.ConnectionPool` (at most DATABASE_POOL_SIZE per
  dispatcher process, plus one for LISTEN), run in autocommit, and every write is one
  short `BEGIN ... COMMIT` (`_transact`) at READ COMMITTED. A guarded UPDATE that meets a
  row another transaction changed re-reads it and re-checks its WHERE before it writes,
  so two dispatchers racing for one transition cannot both win.
- A claim is ONE statement: `UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED
  LIMIT n)`, with the attempts it opens recorded in the same statement. Claimers skip
  the rows others are taking instead of queueing behind them.
- Locks are taken in one order, a worker's row before its tasks, so the usual paths
  cannot deadlock; a deadlock or serialization failure PostgreSQL still reports rolls
  the whole transaction back and it runs again (TX_ATTEMPTS).
- Database unreachable (connect refused, connection lost, no pooled connection within
  POOL_WAIT_S): DatabaseUnavailable, which the routes answer with 503. The pool keeps
  reconnecting in the background, so the dispatcher recovers without a restart.

Clock. Operations take `now` (UTC epoch seconds) like every storage; the dispatcher
passes its own clock (time.time). We do not read `now()` from the database: tests must
stay in control of time (STYLE.md 9), and one clock per operation keeps lease, delay
and history times comparable with what the dispatcher logs and returns. The cost is
that dispatchers on several machines must keep their clocks in sync (NTP, as every
host running a job queue should): a dispatcher whose clock runs ahead by d expires
leases d seconds early and starts delayed tasks d seconds early. Leases are minutes
long and NTP keeps hosts within milliseconds, so this is safe; a host with a broken
clock is the one thing it does not survive (docs/SCALING.md says so).

Payloads and results are JSON *text*, written by the same codec as SQLite. Not jsonb:
jsonb would keep big integers exact (it stores numbers as `numeric`), but it rewrites
the document (key order, duplicate keys, 1e300 comes back as a 301-digit integer, a
float as an int) and refuses the string "\\u0000"; text gives back what was stored.

Schema: created or migrated in one transaction under `pg_advisory_xact_lock`, so
dispatchers starting together migrate once. A one-row table `meta` holds the schema
version, numbered as SQLite's `PRAGMA user_version` (a new database starts at the
current SCHEMA_VERSION; MIGRATIONS[n] takes version n to n + 1).

Wake-ups: every transaction that makes work available or finishes a task (submit,
release, a failure with retries left, rescue and expiry, retry, cancel, finish) ends
with `pg_notify(CHANNEL, <schema>)` and bumps the sequence `changes`. `listen()` hands
the notifications to the dispatcher's Wakeup, at once, on every dispatcher;
`change_counter()` reads the sequence, the polling fallback for a lost notification.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
import psycopg.errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from ..errors import (
    BadRequest,
    Conflict,
    DatabaseUnavailable,
    DiskFull,
    LeaseConflict,
    ReadOnly,
    TaskNotFound,
    WorkerStopping,
    WorkerTakenOver,
)
from ..retry import retry_at
from . import FINISHED, STOPPING, NewTask, ReapReport, Refusals, Result
from .rows import EXPIRED_ERROR, dumps, loads, new_ids, stats_dict, task_dict, worker_dict

log = logging.getLogger("dispatcher")

SCHEMA_VERSION = 3  # the SQLite numbering: a new PostgreSQL schema starts at version 2
CHANNEL = "taskqueue"  # NOTIFY channel; the payload names the schema that changed
CONNECT_TIMEOUT_S = 5  # libpq connect_timeout unless DATABASE_URL sets one
POOL_WAIT_S = 5.0  # longest wait for a pooled connection before the client sees a 503
# The pool retries a lost connection with a doubling back-off (1, 2, 4 s...) and gives
# up after this long; the next request then starts a fresh attempt at once. Short, so
# that after a long outage the database's return is noticed within seconds.
RECONNECT_TIMEOUT_S = 10.0
LISTEN_TICK_S = 0.5  # how often a listener looks at its stop event
CHANGE_POLL_S = 0.5  # the polling fallback's period (Wakeup reads it from the storage)
TX_ATTEMPTS = 3  # a transaction PostgreSQL rolled back (deadlock) runs again this often
RETIRED_INSTANCE_KEEP_S = 86_400.0
DELETE_BATCH = 2000  # finished tasks deleted per retention transaction
# finish() takes the set-based FINISH_CURRENT from this many tasks in one batch; below
# it, one statement per result is cheaper (FINISH_CURRENT costs ~0.5 ms to plan; the
# two cost about the same at 4 results, measured 2026-11-23)
FINISH_CURRENT_MIN = 5

SCHEMA = [
    """
    CREATE TABLE meta (
        singleton      BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
        schema_version INTEGER NOT NULL
    )
    """,
    """
    CREATE TABLE tasks (
        id               TEXT PRIMARY KEY,
        type             TEXT NOT NULL,
        queue            TEXT NOT NULL,
        payload          TEXT NOT NULL,
        status           TEXT NOT NULL,
        priority         INTEGER NOT NULL,
        run_at           DOUBLE PRECISION NOT NULL,
        created_at       DOUBLE PRECISION NOT NULL,
        started_at       DOUBLE PRECISION,
        finished_at      DOUBLE PRECISION,
        attempts         INTEGER NOT NULL DEFAULT 0,
        max_retries      INTEGER NOT NULL,
        timeout          DOUBLE PRECISION NOT NULL,
        worker_id        TEXT,
        lease_token      TEXT,
        lease_expires_at DOUBLE PRECISION,
        result           TEXT,
        error            TEXT,
        finished_lease   TEXT,
        expired_failure  BOOLEAN NOT NULL DEFAULT FALSE,
        idempotency_key  TEXT UNIQUE,
        seq              BIGINT GENERATED ALWAYS AS IDENTITY  -- insertion order (SQLite's rowid)
    )
    """,
    # the claim: ready tasks of a queue, highest priority first, then oldest
    "CREATE INDEX tasks_ready ON tasks (queue, priority DESC, run_at) WHERE status = 'pending'",
    "CREATE INDEX tasks_pending_age ON tasks (run_at) WHERE status = 'pending'",
    "CREATE INDEX tasks_leased ON tasks (lease_expires_at) WHERE status = 'in_progress'",
    "CREATE INDEX tasks_by_worker ON tasks (worker_id) WHERE status = 'in_progress'",
    "CREATE INDEX tasks_finished ON tasks (finished_at) WHERE finished_at IS NOT NULL",
    "CREATE INDEX tasks_counts ON tasks (status, queue, type)",
    """
    CREATE TABLE attempts (
        id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        task_id     TEXT NOT NULL,
        attempt     INTEGER NOT NULL,
        lease_token TEXT NOT NULL,
        worker_id   TEXT NOT NULL,
        started_at  DOUBLE PRECISION NOT NULL,
        finished_at DOUBLE PRECISION,
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
        first_seen     DOUBLE PRECISION NOT NULL,
        last_heartbeat DOUBLE PRECISION NOT NULL,
        completed      INTEGER NOT NULL DEFAULT 0,
        failed         INTEGER NOT NULL DEFAULT 0,
        queues         TEXT
    )
    """,
    """
    CREATE TABLE retired_instances (
        instance_id TEXT PRIMARY KEY,
        worker_id   TEXT NOT NULL,
        retired_at  DOUBLE PRECISION NOT NULL
    )
    """,
    # bumped by every transaction that notifies: the polling fallback's change counter
    "CREATE SEQUENCE changes",
]

# Migrations from version N to N + 1, applied in order (none yet on PostgreSQL: its
# first schema is version 2).
MIGRATIONS: dict[int, list[str]] = {
    # version 3: the queues a worker last claimed from, a JSON list (GET /workers)
    2: ["ALTER TABLE workers ADD COLUMN queues TEXT"],
}

# one lock per schema: dispatchers sharing a schema migrate one after the other
MIGRATION_LOCK = "SELECT pg_advisory_xact_lock(hashtext('taskqueue migrate ' || %s))"

# -- statements, named by the transition they make ------------------------------------

# (nothing) -> pending, one task that may carry an idempotency key
INSERT_TASK = """
INSERT INTO tasks (id, type, queue, payload, status, priority, run_at, created_at,
                   max_retries, timeout, idempotency_key)
VALUES (%(id)s, %(type)s, %(queue)s, %(payload)s, 'pending', %(priority)s, %(run_at)s,
        %(now)s, %(max_retries)s, %(timeout)s, %(idempotency_key)s)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING id
"""

# (nothing) -> pending, many at once in one statement: tasks without an idempotency key
INSERT_TASKS = """
INSERT INTO tasks (id, type, queue, payload, status, priority, run_at, created_at,
                   max_retries, timeout)
SELECT id, type, queue, payload, 'pending', priority, run_at, %(now)s, max_retries, timeout
  FROM unnest(%(id)s::text[], %(type)s::text[], %(queue)s::text[], %(payload)s::text[],
              %(priority)s::int[], %(run_at)s::float8[], %(max_retries)s::int[],
              %(timeout)s::float8[])
       AS t (id, type, queue, payload, priority, run_at, max_retries, timeout)
"""

# pending -> in_progress: one more attempt, a fresh random lease token for each task,
# and the attempt recorded, in one statement. SKIP LOCKED: rows another claim is taking
# are passed over, not waited for. The pick is MATERIALIZED: run once, so the LIMIT
# holds (as a plain `id IN (SELECT ... LIMIT n)` the planner may re-run the sub-select
# and lease more than n); the UPDATE re-checks `pending` on each row it locked.
CLAIM = """
WITH picked AS MATERIALIZED (
    SELECT id FROM tasks
     WHERE status = 'pending' AND queue = %(queue)s AND run_at <= %(now)s
     ORDER BY priority DESC, run_at
     LIMIT %(max_tasks)s
       FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE tasks
       SET status = 'in_progress', attempts = tasks.attempts + 1, worker_id = %(worker_id)s,
           lease_token = replace(gen_random_uuid()::text, '-', ''),
           lease_expires_at = %(now)s + %(lease_s)s, started_at = %(now)s,
           expired_failure = FALSE
      FROM picked
     WHERE tasks.id = picked.id AND tasks.status = 'pending'
    RETURNING tasks.id, tasks.type, tasks.payload, tasks.attempts, tasks.timeout,
              tasks.lease_token, tasks.lease_expires_at, tasks.priority, tasks.run_at
), recorded AS (
    INSERT INTO attempts (task_id, attempt, lease_token, worker_id, started_at)
    SELECT id, attempts, lease_token, %(worker_id)s, %(now)s FROM claimed
)
SELECT * FROM claimed
"""

# in_progress -> completed by its current lease, and its attempt closed: the common
# case, judged by this statement alone (a row back means done)
COMPLETE_CURRENT = """
WITH done AS (
    UPDATE tasks
       SET status = 'completed', result = %(result)s, error = NULL, finished_at = %(now)s,
           finished_lease = %(lease_token)s, lease_token = NULL, lease_expires_at = NULL,
           worker_id = %(worker_id)s
     WHERE id = %(task_id)s AND status = 'in_progress' AND lease_token = %(lease_token)s
    RETURNING id
)
UPDATE attempts SET finished_at = %(now)s, outcome = 'completed', error = NULL
 WHERE task_id IN (SELECT id FROM done) AND lease_token = %(lease_token)s
RETURNING 1
"""

# The same transitions for a whole batch in one statement: in_progress -> completed,
# and in_progress -> failed when no retries are left, for each result under its task's
# current lease (the common case), with the attempts closed and the workers' counters
# moved. One row of `r` per task (the batch's first result for it). `locked` takes the
# rows in id order, as the per-result path does, so two batches sharing tasks cannot
# deadlock: the UPDATE touches only rows `locked` has already handed it. A task not
# returned (stale lease, finished, retries left, unknown) is judged by the per-result
# statements below, in the same transaction.
FINISH_CURRENT = """
WITH r AS (
    SELECT * FROM unnest(%(task_id)s::text[], %(lease_token)s::text[], %(worker_id)s::text[],
                         %(status)s::text[], %(result)s::text[], %(error)s::text[])
           AS r (task_id, lease_token, worker_id, status, result, error)
), locked AS MATERIALIZED (
    SELECT r.* FROM (SELECT * FROM r ORDER BY task_id COLLATE "C") r,
           LATERAL (SELECT FROM tasks WHERE tasks.id = r.task_id FOR UPDATE) l
), done AS (
    UPDATE tasks t
       SET status = r.status,
           result = CASE WHEN r.status = 'completed' THEN r.result ELSE t.result END,
           error = r.error, finished_at = %(now)s, finished_lease = r.lease_token,
           lease_token = NULL, lease_expires_at = NULL,
           worker_id = CASE WHEN r.status = 'completed' THEN r.worker_id ELSE t.worker_id END
      FROM locked r
     WHERE t.id = r.task_id AND t.status = 'in_progress' AND t.lease_token = r.lease_token
       AND (r.status = 'completed' OR t.attempts > t.max_retries)
    RETURNING t.id, t.status, t.error, r.lease_token, r.worker_id
), closed AS (
    UPDATE attempts a SET finished_at = %(now)s, outcome = done.status, error = done.error
      FROM done
     WHERE a.task_id = done.id AND a.lease_token = done.lease_token
       AND (done.status = 'completed' OR a.outcome IS NULL)
    RETURNING done.worker_id, done.status
), counted AS (
    UPDATE workers w SET completed = w.completed + n.completed, failed = w.failed + n.failed
      FROM (SELECT worker_id, count(*) FILTER (WHERE status = 'completed') AS completed,
                   count(*) FILTER (WHERE status = 'failed') AS failed
              FROM closed GROUP BY worker_id) n
     WHERE w.worker_id = n.worker_id
)
SELECT id FROM done
"""

# pending | in_progress -> completed, by any lease this task issued (first result wins)
COMPLETE = """
UPDATE tasks
   SET status = 'completed', result = %(result)s, error = NULL, finished_at = %(now)s,
       finished_lease = %(lease_token)s, lease_token = NULL, lease_expires_at = NULL,
       worker_id = %(worker_id)s
 WHERE id = %(task_id)s AND status IN ('pending', 'in_progress')
"""

# failed (only by lease expiry) -> completed: a late real result replaces the expiry
COMPLETE_AFTER_EXPIRY = """
UPDATE tasks
   SET status = 'completed', result = %(result)s, error = NULL, finished_at = %(now)s,
       finished_lease = %(lease_token)s, expired_failure = FALSE, worker_id = %(worker_id)s
 WHERE id = %(task_id)s AND status = 'failed' AND expired_failure
"""

# failed (only by lease expiry) -> failed with the worker's real error
FAIL_AFTER_EXPIRY = """
UPDATE tasks
   SET error = %(error)s, finished_lease = %(lease_token)s, expired_failure = FALSE,
       worker_id = %(worker_id)s, finished_at = %(now)s
 WHERE id = %(task_id)s AND status = 'failed' AND expired_failure
"""

# in_progress -> pending (retries left, after back-off): only the current lease
FAIL_RETRY = """
UPDATE tasks
   SET status = 'pending', run_at = %(run_at)s, error = %(error)s, lease_token = NULL,
       lease_expires_at = NULL, worker_id = NULL
 WHERE id = %(task_id)s AND status = 'in_progress' AND lease_token = %(lease_token)s
"""

# in_progress -> failed (no retries left): only the current lease
FAIL_FINAL = """
UPDATE tasks
   SET status = 'failed', error = %(error)s, finished_at = %(now)s,
       finished_lease = %(lease_token)s, lease_token = NULL, lease_expires_at = NULL
 WHERE id = %(task_id)s AND status = 'in_progress' AND lease_token = %(lease_token)s
"""

# attempts still running when another lease's result finished the task
CLOSE_SUPERSEDED = """
UPDATE attempts SET finished_at = %(now)s, outcome = 'superseded'
 WHERE task_id = %(task_id)s AND lease_token <> %(lease_token)s AND outcome IS NULL
"""

END_ATTEMPT = """
UPDATE attempts SET finished_at = %(now)s, outcome = %(outcome)s, error = %(error)s
 WHERE task_id = %(task_id)s AND lease_token = %(lease_token)s AND outcome IS NULL
"""

# the attempt whose (late) real result finished the task says so, even if the reaper
# had already closed it as expired
END_ATTEMPT_COMPLETED = """
UPDATE attempts SET finished_at = %(now)s, outcome = 'completed', error = NULL
 WHERE task_id = %(task_id)s AND lease_token = %(lease_token)s
"""

# in_progress -> pending, now: the lease expired or its worker died, retries left
EXPIRE_RETRY = """
UPDATE tasks
   SET status = 'pending', run_at = %(now)s, error = %(error)s, lease_token = NULL,
       lease_expires_at = NULL, worker_id = NULL
 WHERE id = %(task_id)s AND status = 'in_progress' AND lease_token = %(lease_token)s
"""

# in_progress -> failed: the lease expired on the last attempt (a later real result may
# still replace this failure)
EXPIRE_FINAL = """
UPDATE tasks
   SET status = 'failed', error = %(error)s, finished_at = %(now)s, expired_failure = TRUE,
       lease_token = NULL, lease_expires_at = NULL
 WHERE id = %(task_id)s AND status = 'in_progress' AND lease_token = %(lease_token)s
"""

# in_progress -> pending, given back unfinished: the attempt does not count
RELEASE = """
UPDATE tasks
   SET status = 'pending', attempts = attempts - 1, lease_token = NULL,
       lease_expires_at = NULL, worker_id = NULL
 WHERE id = %(task_id)s AND status = 'in_progress' AND lease_token = %(lease_token)s
   AND worker_id = %(worker_id)s
"""

# pending | in_progress -> cancelled
CANCEL = """
UPDATE tasks
   SET status = 'cancelled', finished_at = %(now)s, lease_token = NULL,
       lease_expires_at = NULL
 WHERE id = %(task_id)s AND status IN ('pending', 'in_progress')
"""

# failed | cancelled -> pending, attempts reset
RETRY = """
UPDATE tasks
   SET status = 'pending', attempts = 0, run_at = %(now)s, result = NULL, error = NULL,
       finished_at = NULL, started_at = NULL, finished_lease = NULL,
       expired_failure = FALSE, worker_id = NULL
 WHERE id = %(task_id)s AND status IN ('failed', 'cancelled')
"""

EXTEND_ALL = """
UPDATE tasks SET lease_expires_at = %(until)s
 WHERE worker_id = %(worker_id)s AND status = 'in_progress'
"""

# extend: only the listed tasks still in progress under this worker
EXTEND_LISTED = """
UPDATE tasks SET lease_expires_at = %(until)s
 WHERE id = ANY(%(ids)s) AND worker_id = %(worker_id)s AND status = 'in_progress'
"""

# alive | stopping -> dead: no heartbeat for dead_after; its tasks go back at once
DECLARE_DEAD = """
UPDATE workers SET status = 'dead'
 WHERE worker_id = %(worker_id)s AND status IN ('alive', 'stopping')
   AND last_heartbeat < %(cutoff)s
"""

# dead | stopped -> forgotten: gone longer than forget_after
FORGET_WORKERS = """
DELETE FROM workers WHERE status IN ('dead', 'stopped') AND last_heartbeat < %(cutoff)s
"""

# finished tasks past retention, with their history; rows another reaper is deleting
# are skipped
DELETE_FINISHED = """
WITH picked AS MATERIALIZED (
    SELECT id FROM tasks
     WHERE finished_at < %(cutoff)s AND status IN ('completed', 'failed', 'cancelled')
     LIMIT %(batch)s
       FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM tasks USING picked WHERE tasks.id = picked.id RETURNING tasks.id
), history AS (
    DELETE FROM attempts WHERE task_id IN (SELECT id FROM gone)
)
SELECT count(*) AS n FROM gone
"""

# the dispatchers' wake-up: delivered to every LISTENer when the transaction commits
NOTIFY = "SELECT pg_notify(%(channel)s, %(schema)s), nextval('changes')"

STATS_GROUPS = "SELECT status, queue, type, count(*) AS n FROM tasks GROUP BY status, queue, type"

STATS_OTHERS = """
SELECT (SELECT count(*) FROM workers
         WHERE status IN ('alive', 'stopping') AND last_heartbeat >= %(alive_after)s) AS alive,
       (SELECT count(*) FROM workers WHERE status = 'stopped') AS stopped,
       (SELECT count(*) FROM workers) AS total,
       (SELECT count(*) FROM tasks
         WHERE finished_at >= %(minute_ago)s AND status = 'completed') AS recent,
       (SELECT min(run_at) FROM tasks WHERE status = 'pending') AS oldest
"""

TASK_COLUMNS = """id, type, queue, payload, status, result, error, attempts, max_retries,
    priority, worker_id, created_at, started_at, finished_at, timeout, run_at"""

T = TypeVar("T")


class _Tx:
    """One transaction: its cursor, and whether it must wake the dispatchers."""

    __slots__ = ("cur", "notify")

    def __init__(self, cur: psycopg.Cursor):
        self.cur = cur
        self.notify = False

    def execute(self, sql: str, args: Any = None) -> psycopg.Cursor:
        return self.cur.execute(sql, args)

    def one(self, sql: str, args: Any = None) -> dict | None:
        return self.cur.execute(sql, args).fetchone()

    def all(self, sql: str, args: Any = None) -> list[dict]:
        return self.cur.execute(sql, args).fetchall()


class PostgresStorage:
    change_poll_s = CHANGE_POLL_S

    def __init__(
        self,
        url: str,
        pool_size: int = 10,
        backoff_base: float = 1.0,
        backoff_cap: float = 300.0,
    ):
        self.url = url
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.created_schema = False  # did this instance create the schema (tests read it)
        try:
            params = conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise ValueError(f"DATABASE_URL is not a valid PostgreSQL URL: {exc}") from None
        # libpq reads the URL; these fill in only what it does not say
        self._connect_kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in params:
            self._connect_kwargs["connect_timeout"] = CONNECT_TIMEOUT_S
        if "application_name" not in params:
            self._connect_kwargs["application_name"] = "taskqueue-dispatcher"
        self._pool = ConnectionPool(
            url,
            kwargs={**self._connect_kwargs, "row_factory": dict_row},
            min_size=1,
            max_size=max(1, pool_size),
            timeout=POOL_WAIT_S,
            reconnect_timeout=RECONNECT_TIMEOUT_S,
            open=False,
            name="taskqueue",
        )
        self._checking = threading.Lock()
        self.refusals = Refusals()  # writes refused for a full disk or a read-only database
        self._listeners: set[psycopg.Connection] = set()
        self._listeners_lock = threading.Lock()
        try:
            # one plain connection first: when the server refuses (no such database,
            # bad password), its own words are the error, not the pool's time-out
            psycopg.connect(url, **self._connect_kwargs).close()
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_S + 1)
        except psycopg.OperationalError as exc:
            self._pool.close()
            raise DatabaseUnavailable(f"database unavailable: {_reason(exc)}") from exc
        try:
            self.schema = self._read("SELECT current_schema() AS s")[0]["s"]
            if self.schema is None:
                raise RuntimeError(
                    "DATABASE_URL: no schema of the search_path exists in this database"
                )
            self._notify_args = {"channel": CHANNEL, "schema": self.schema}
            self._transact(self._migrate)
        except BaseException:
            self._pool.close()
            raise

    # -- connections --------------------------------------------------------------

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection; a lost database becomes DatabaseUnavailable (503)."""
        try:
            with self._pool.connection() as conn:
                yield conn
        except psycopg.errors.TransactionRollback:
            raise  # deadlock or serialization failure: _transact runs it again
        except psycopg.errors.DiskFull as exc:  # 53100, e.g. "could not extend file"
            raise self.refusals.seen(DiskFull(_reason(exc))) from exc
        except psycopg.errors.ReadOnlySqlTransaction as exc:  # 25006
            raise self.refusals.seen(ReadOnly(_reason(exc))) from exc
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self._check_pool_soon()
            raise DatabaseUnavailable(f"database unavailable: {_reason(exc)}") from exc
        except psycopg.DataError as exc:  # e.g. a NUL character, which text cannot hold
            raise BadRequest(f"invalid value: {exc}") from exc

    def _check_pool_soon(self) -> None:
        """After a connection failed, test the idle ones in the background, so the
        broken connections a database restart left are replaced before they are used."""
        if self._checking.acquire(blocking=False):

            def check():
                try:
                    self._pool.check()
                except Exception as exc:  # the pool is closed or the database away
                    log.debug("pool check failed: %s", exc)
                finally:
                    self._checking.release()

            threading.Thread(target=check, name="pool-check", daemon=True).start()

    def _transact(self, body: Callable[[_Tx], T]) -> T:
        """BEGIN; body; (NOTIFY;) COMMIT. A transaction PostgreSQL rolled back to break a
        deadlock runs again from the start; nothing of it was kept."""
        for attempt in range(1, TX_ATTEMPTS + 1):
            try:
                with self._connection() as conn, conn.transaction():
                    tx = _Tx(conn.cursor())
                    out = body(tx)
                    if tx.notify:
                        tx.execute(NOTIFY, self._notify_args)
                return out
            except psycopg.errors.TransactionRollback as exc:
                if attempt == TX_ATTEMPTS:
                    raise DatabaseUnavailable(f"database busy: {_reason(exc)}") from exc
                log.info("transaction rolled back (%s); running it again", _reason(exc))
        raise AssertionError("unreachable")

    def _read(self, sql: str, args: Any = None) -> list[dict]:
        with self._connection() as conn:
            return conn.execute(sql, args).fetchall()

    def close(self) -> None:
        with self._listeners_lock:
            listeners = list(self._listeners)
        for conn in listeners:
            try:
                conn.close()  # its listen() ends with an error its Wakeup logs
            except psycopg.Error:
                pass
        self._pool.close()

    def _migrate(self, tx: _Tx) -> None:
        """Create the schema, or bring an older one up to SCHEMA_VERSION, under an
        advisory lock: dispatchers starting together do it once, one after the other."""
        tx.execute(MIGRATION_LOCK, (self.schema,))
        if tx.one("SELECT to_regclass('meta') AS t")["t"] is None:
            if tx.one("SELECT to_regclass('tasks') AS t")["t"] is not None:
                raise RuntimeError(
                    f"schema {self.schema} has a tasks table but no meta table; "
                    "it was not made by this program"
                )
            for statement in SCHEMA:
                tx.execute(statement)
            tx.execute("INSERT INTO meta (schema_version) VALUES (%s)", (SCHEMA_VERSION,))
            self.created_schema = True
            log.info("created schema version %d in %s", SCHEMA_VERSION, self.schema)
            return
        version = tx.one("SELECT schema_version FROM meta")["schema_version"]
        if version == SCHEMA_VERSION:
            return  # nothing written: a read-only or full database still starts
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"database schema version {version} is newer than this code's "
                f"{SCHEMA_VERSION}; upgrade the code"
            )
        while version < SCHEMA_VERSION:
            for statement in MIGRATIONS[version]:
                tx.execute(statement)
            version += 1
            log.info("migrated schema %s to version %d", self.schema, version)
        tx.execute("UPDATE meta SET schema_version = %s", (version,))

    # -- submission ---------------------------------------------------------------

    def submit(self, tasks: list[NewTask], now: float) -> list[tuple[str, bool]]:
        """Store tasks in one transaction: (task_id, created) each; a known
        idempotency key gives the first task's id and creates nothing."""
        ids = new_ids(len(tasks), now)
        if not any(task.idempotency_key for task in tasks):  # the bulk path: one statement

            def insert_all(tx: _Tx) -> list[tuple[str, bool]]:
                tx.execute(
                    INSERT_TASKS,
                    {
                        "now": now,
                        "id": ids,
                        "type": [t.type for t in tasks],
                        "queue": [t.queue for t in tasks],
                        "payload": [dumps(t.payload) for t in tasks],
                        "priority": [t.priority for t in tasks],
                        "run_at": [now + t.delay for t in tasks],
                        "max_retries": [t.max_retries for t in tasks],
                        "timeout": [float(t.timeout) for t in tasks],
                    },
                )
                tx.notify = bool(tasks)
                return [(task_id, True) for task_id in ids]

            return self._transact(insert_all)

        def insert_each(tx: _Tx) -> list[tuple[str, bool]]:
            out = []
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
                    "timeout": float(task.timeout),
                    "idempotency_key": task.idempotency_key,
                }
                if tx.one(INSERT_TASK, args) is not None:
                    out.append((task_id, True))
                    tx.notify = True
                else:  # the key is taken (a concurrent insert has committed by now)
                    row = tx.one(
                        "SELECT id FROM tasks WHERE idempotency_key = %s",
                        (task.idempotency_key,),
                    )
                    out.append((row["id"], False))
            return out

        return self._transact(insert_each)

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
        """Lease up to max_tasks ready tasks to the worker, queue by queue in order."""

        def claim_tasks(tx: _Tx) -> list[dict]:
            claimed: list[dict] = []
            if self._touch_worker(tx, worker_id, instance_id, now, queues=queues) in STOPPING:
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
                rows = tx.all(CLAIM, args)
                rows.sort(key=lambda r: (-r["priority"], r["run_at"]))
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

        return self._transact(claim_tasks)

    def has_ready(self, queues: tuple[str, ...], now: float) -> bool:
        return bool(
            self._read(
                "SELECT 1 FROM tasks WHERE status = 'pending' AND queue = ANY(%s) "
                "AND run_at <= %s LIMIT 1",
                (list(queues), now),
            )
        )

    def next_run_at(self, queues: tuple[str, ...]) -> float | None:
        return self._read(
            "SELECT min(run_at) AS t FROM tasks WHERE status = 'pending' AND queue = ANY(%s)",
            (list(queues),),
        )[0]["t"]

    def _touch_worker(
        self,
        tx: _Tx,
        worker_id: str,
        instance_id: str,
        now: float,
        state: str | None = None,
        queues: tuple[str, ...] | None = None,
    ) -> str:
        """Register or refresh a worker, and return its status; a new instance of a
        known id takes it over and its earlier instance's tasks go back to the queue at
        once. `state` (a heartbeat's: stopping, stopped) sets the status; without one a
        stopping or stopped instance keeps its status and any other is alive. The
        worker's row is locked first: its calls from several dispatchers take turns."""
        if instance_id and tx.one(
            "SELECT 1 FROM retired_instances WHERE instance_id = %s", (instance_id,)
        ):
            raise WorkerTakenOver(worker_id)
        row = tx.one(
            "SELECT instance_id, status FROM workers WHERE worker_id = %s FOR UPDATE",
            (worker_id,),
        )
        status = state or "alive"
        listed = None if queues is None else dumps(list(queues))
        if row is None:
            if tx.one(
                "INSERT INTO workers (worker_id, instance_id, status, first_seen, last_heartbeat, "
                "queues) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (worker_id) DO NOTHING "
                "RETURNING 1",
                (worker_id, instance_id, status, now, now, listed),
            ):
                return status
            # another dispatcher registered it a moment ago: lock its row and go on
            row = tx.one(
                "SELECT instance_id, status FROM workers WHERE worker_id = %s FOR UPDATE",
                (worker_id,),
            )
        if instance_id and row["instance_id"] != instance_id:
            if row["instance_id"]:
                tx.execute(
                    "INSERT INTO retired_instances VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                    (row["instance_id"], worker_id, now),
                )
            if self._rescue_worker_tasks(tx, worker_id, now, "worker restarted"):
                tx.notify = True
            tx.execute(
                "UPDATE workers SET instance_id = %s, status = %s, last_heartbeat = %s, "
                "queues = coalesce(%s, queues) WHERE worker_id = %s",
                (instance_id, status, now, listed, worker_id),
            )
            return status
        if state is None and row["status"] in STOPPING:
            status = row["status"]
        tx.execute(
            "UPDATE workers SET status = %s, last_heartbeat = %s, queues = coalesce(%s, queues) "
            "WHERE worker_id = %s",
            (status, now, listed, worker_id),
        )
        return status

    # -- results ------------------------------------------------------------------

    def finish(self, results: list[Result], now: float) -> list[str | Exception]:
        """Judge each result alone, in order, in one transaction: the task's new status,
        or the error (TaskNotFound, LeaseConflict) that item alone would get.

        The first result of each task goes to FINISH_CURRENT, one statement for all of
        them (from FINISH_CURRENT_MIN tasks on); what it did not finish is judged result
        by result, each task's results in their order, exactly as if all had been."""
        # tasks in id order (a stable sort: one task's items keep their order), so two
        # batches that share tasks lock them in the same order
        order = sorted(range(len(results)), key=lambda i: results[i].task_id)
        worker_ids = sorted({item.worker_id for item in results})
        fast: list[int] = []  # the first result of each task, if the fast path can take it
        seen: set[str] = set()
        for i in order:
            item = results[i]
            if item.task_id in seen:
                continue
            seen.add(item.task_id)
            if item.status in ("completed", "failed") and not any(
                "\x00" in text for text in (item.task_id, item.lease_token, item.worker_id)
            ):
                fast.append(i)

        def finish_all(tx: _Tx) -> list[str | Exception]:
            out: list[str | Exception] = [""] * len(results)
            counts: Counter[tuple[str, str]] = Counter()  # (worker_id, completed | failed)
            # the workers' rows first, as every other path takes them: no deadlock
            tx.execute(
                "SELECT 1 FROM workers WHERE worker_id = ANY(%s) "
                'ORDER BY worker_id COLLATE "C" FOR UPDATE',
                (worker_ids,),
            )
            tried: set[int] = set()
            if len(fast) >= FINISH_CURRENT_MIN:
                done = self._finish_current(tx, [results[i] for i in fast], now)
                for i in fast:
                    if results[i].task_id in done:
                        out[i] = results[i].status
                    else:
                        tried.add(i)
            for i in order:
                if out[i]:
                    continue
                try:
                    out[i] = self._finish_one(tx, results[i], now, counts, i in tried)
                except (TaskNotFound, Conflict) as exc:
                    out[i] = exc
            for (worker_id, column), n in sorted(counts.items()):  # once per worker and batch
                tx.execute(
                    f"UPDATE workers SET {column} = {column} + %s WHERE worker_id = %s",
                    (n, worker_id),
                )
            tx.notify = any(isinstance(o, str) for o in out)
            return out

        return self._transact(finish_all)

    def _finish_current(self, tx: _Tx, items: list[Result], now: float) -> set[str]:
        """FINISH_CURRENT for these results (one per task): the ids it finished."""
        completed = [item.status == "completed" for item in items]
        args = {
            "now": now,
            "task_id": [item.task_id for item in items],
            "lease_token": [item.lease_token for item in items],
            "worker_id": [item.worker_id for item in items],
            "status": [item.status for item in items],
            "result": [
                dumps(item.result) if c else None for item, c in zip(items, completed, strict=True)
            ],
            "error": [
                None if c else _text(item.error) for item, c in zip(items, completed, strict=True)
            ],
        }
        return {row["id"] for row in tx.all(FINISH_CURRENT, args)}

    def _finish_one(
        self, tx: _Tx, item: Result, now: float, counts: Counter, tried_current: bool = False
    ) -> str:
        """One result; `tried_current`: FINISH_CURRENT already found it is not for the
        task's current lease (or a failure with retries left), so COMPLETE_CURRENT
        would find the same."""
        _known_id(item.task_id)
        args = {
            "task_id": item.task_id,
            "lease_token": item.lease_token,
            "worker_id": item.worker_id,
            "now": now,
            "result": dumps(item.result),
            "error": _text(item.error),
        }
        if item.status == "completed" and not tried_current and tx.one(COMPLETE_CURRENT, args):
            counts[item.worker_id, "completed"] += 1
            return "completed"
        row = tx.one(
            "SELECT status, lease_token, finished_lease, expired_failure, attempts, "
            "max_retries FROM tasks WHERE id = %s FOR UPDATE",
            (item.task_id,),
        )
        if row is None:
            raise TaskNotFound(item.task_id)
        issued = tx.one(
            "SELECT 1 FROM attempts WHERE task_id = %s AND lease_token = %s",
            (item.task_id, item.lease_token),
        )
        if issued is None:
            raise LeaseConflict(f"lease_token was not issued for task {item.task_id}")
        status = row["status"]
        if item.status == "completed":
            if status in ("pending", "in_progress") and tx.execute(COMPLETE, args).rowcount:
                self._end_attempt(tx, args, "completed", None, counts)
                tx.execute(CLOSE_SUPERSEDED, args)
                return "completed"
            if tx.execute(COMPLETE_AFTER_EXPIRY, args).rowcount:
                self._end_attempt(tx, args, "completed", None, counts)
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
                if when is not None and tx.execute(FAIL_RETRY, {**args, "run_at": when}).rowcount:
                    self._end_attempt(tx, args, "failed", args["error"], counts)
                    return "pending"
                if when is None and tx.execute(FAIL_FINAL, args).rowcount:
                    self._end_attempt(tx, args, "failed", args["error"], counts)
                    return "failed"
            elif status in ("pending", "in_progress"):
                # a failure reported under an earlier lease: history only, the task
                # belongs to its current lease (or waits for its next claim)
                self._end_attempt(tx, args, "failed", args["error"], counts)
                return status
            elif tx.execute(FAIL_AFTER_EXPIRY, args).rowcount:
                self._end_attempt(tx, args, "failed", args["error"], counts)
                return "failed"
        if status in FINISHED and row["finished_lease"] == item.lease_token:
            return status  # the same result again: harmless
        raise LeaseConflict(f"task {item.task_id} is already {status} under another lease")

    def _end_attempt(
        self, tx: _Tx, args: dict, outcome: str, error: str | None, counts: Counter
    ) -> None:
        """Close the lease's attempt; the worker's counter moves only when the attempt
        was open (a re-sent failure counts once)."""
        if outcome == "completed":
            closed = tx.execute(END_ATTEMPT_COMPLETED, args).rowcount
        else:
            closed = tx.execute(END_ATTEMPT, {**args, "outcome": outcome, "error": error}).rowcount
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

        def beat(tx: _Tx) -> list[str]:
            self._touch_worker(tx, worker_id, instance_id, now, state)
            if task_ids is None:
                tx.execute(EXTEND_ALL, {"until": until, "worker_id": worker_id})
                return []
            ids = list(task_ids)
            tx.execute(EXTEND_LISTED, {"until": until, "ids": ids, "worker_id": worker_id})
            rows = tx.all(
                "SELECT id, status, worker_id, expired_failure FROM tasks WHERE id = ANY(%s)",
                (ids,),
            )
            found = {r["id"]: (r["status"], r["worker_id"], r["expired_failure"]) for r in rows}
            abandon = []
            for task_id in ids:
                status, holder, by_expiry = found.get(task_id, ("deleted", None, False))
                mine = status == "in_progress" and holder == worker_id
                # a late result still counts while the task is pending or failed only by
                # lease expiry: the worker keeps going
                still_counts = status == "pending" or (status == "failed" and by_expiry)
                if not mine and not still_counts:
                    abandon.append(task_id)
            return abandon

        return self._transact(beat)

    def release(self, worker_id: str, tasks: list[tuple[str, str]], now: float) -> int:
        """Give tasks back unfinished: pending at once, the attempt not counted."""

        def give_back(tx: _Tx) -> int:
            released = 0
            for task_id, lease_token in sorted(tasks):
                args = {
                    "task_id": task_id,
                    "lease_token": lease_token,
                    "worker_id": worker_id,
                    "now": now,
                    "error": None,
                }
                if tx.execute(RELEASE, args).rowcount:
                    tx.execute(END_ATTEMPT, {**args, "outcome": "released"})
                    released += 1
            tx.notify = released > 0
            return released

        return self._transact(give_back)

    def reap(
        self, now: float, dead_after: float, retention_s: float, forget_after: float = 86_400.0
    ) -> ReapReport:
        """Declare silent workers dead and rescue their tasks, return expired leases to
        the queue, delete finished tasks past retention. Cheap reads decide first, so an
        idle sweep writes nothing. Any number of dispatchers may reap at once: each
        transition is guarded, and expired rows another reaper holds are skipped."""
        report = ReapReport()
        cutoff_alive = now - dead_after
        dead = self._read(
            "SELECT worker_id FROM workers WHERE status IN ('alive', 'stopping') "
            'AND last_heartbeat < %s ORDER BY worker_id COLLATE "C"',
            (cutoff_alive,),
        )
        gone = self._read(
            "SELECT 1 FROM workers WHERE status IN ('dead', 'stopped') AND last_heartbeat < %s "
            "LIMIT 1",
            (now - forget_after,),
        )
        expired = self._read(
            "SELECT 1 FROM tasks WHERE status = 'in_progress' AND lease_expires_at < %s LIMIT 1",
            (now,),
        )
        cutoff = now - retention_s
        old = retention_s > 0 and self._read(
            "SELECT 1 FROM tasks WHERE finished_at < %s AND status IN "
            "('completed', 'failed', 'cancelled') LIMIT 1",
            (cutoff,),
        )
        if dead or expired or gone:

            def sweep(tx: _Tx) -> ReapReport:
                found = ReapReport()
                for row in dead:
                    args = {"worker_id": row["worker_id"], "cutoff": cutoff_alive}
                    if tx.execute(DECLARE_DEAD, args).rowcount:
                        found.dead_workers.append(row["worker_id"])
                        found.rescued += self._rescue_worker_tasks(
                            tx, row["worker_id"], now, "worker dead"
                        )
                rows = tx.all(
                    "SELECT id, lease_token, attempts, max_retries FROM tasks "
                    "WHERE status = 'in_progress' AND lease_expires_at < %s "
                    "ORDER BY id FOR UPDATE SKIP LOCKED",
                    (now,),
                )
                for r in rows:
                    if self._expire(tx, r, now, "expired"):
                        found.expired.append(r["id"])
                tx.execute(
                    "DELETE FROM retired_instances WHERE retired_at < %s",
                    (now - RETIRED_INSTANCE_KEEP_S,),
                )
                found.forgotten = tx.execute(
                    FORGET_WORKERS, {"cutoff": now - forget_after}
                ).rowcount
                tx.notify = bool(found.rescued or found.expired)
                return found

            found = self._transact(sweep)
            report.dead_workers, report.rescued = found.dead_workers, found.rescued
            report.expired, report.forgotten = found.expired, found.forgotten
        while old:  # retention, in short transactions until the backlog is gone
            deleted = self._transact(
                lambda tx: tx.one(DELETE_FINISHED, {"cutoff": cutoff, "batch": DELETE_BATCH})["n"]
            )
            report.deleted += deleted
            old = deleted == DELETE_BATCH
        return report

    def _rescue_worker_tasks(self, tx: _Tx, worker_id: str, now: float, outcome: str) -> list:
        rows = tx.all(
            "SELECT id, lease_token, attempts, max_retries FROM tasks "
            "WHERE worker_id = %s AND status = 'in_progress' ORDER BY id FOR UPDATE",
            (worker_id,),
        )
        return [r["id"] for r in rows if self._expire(tx, r, now, outcome)]

    def _expire(self, tx: _Tx, row: dict, now: float, outcome: str) -> bool:
        args = {
            "task_id": row["id"],
            "lease_token": row["lease_token"],
            "now": now,
            "error": EXPIRED_ERROR,
        }
        final = row["attempts"] > row["max_retries"]
        if not tx.execute(EXPIRE_FINAL if final else EXPIRE_RETRY, args).rowcount:
            return False
        tx.execute(END_ATTEMPT, {**args, "outcome": outcome})
        return True

    # -- operator actions ---------------------------------------------------------

    def cancel(self, task_id: str, now: float) -> str:
        _known_id(task_id)

        def cancel_one(tx: _Tx) -> str:
            row = tx.one(
                "SELECT status, lease_token FROM tasks WHERE id = %s FOR UPDATE", (task_id,)
            )
            if row is None:
                raise TaskNotFound(task_id)
            if not tx.execute(CANCEL, {"task_id": task_id, "now": now}).rowcount:
                raise Conflict(f"task {task_id} is already {row['status']}; it cannot be cancelled")
            if row["lease_token"]:
                args = {"task_id": task_id, "lease_token": row["lease_token"], "now": now}
                tx.execute(END_ATTEMPT, {**args, "outcome": "cancelled", "error": None})
            tx.notify = True  # wakes GET /task?wait
            return "cancelled"

        return self._transact(cancel_one)

    def retry(self, task_id: str, now: float) -> str:
        _known_id(task_id)

        def retry_one(tx: _Tx) -> str:
            row = tx.one("SELECT status FROM tasks WHERE id = %s FOR UPDATE", (task_id,))
            if row is None:
                raise TaskNotFound(task_id)
            if not tx.execute(RETRY, {"task_id": task_id, "now": now}).rowcount:
                raise Conflict(
                    f"task {task_id} is {row['status']}; only failed or cancelled tasks "
                    "can be retried"
                )
            tx.notify = True
            return "pending"

        return self._transact(retry_one)

    # -- reading ------------------------------------------------------------------

    def get(self, task_id: str) -> dict:
        _known_id(task_id)
        rows = self._read(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = %s", (task_id,))
        if not rows:
            raise TaskNotFound(task_id)
        task = task_dict(rows[0])
        task["history"] = self._read(
            "SELECT attempt, worker_id, started_at, finished_at, outcome, error "
            "FROM attempts WHERE task_id = %s ORDER BY id",
            (task_id,),
        )
        return task

    def status_of(self, task_id: str) -> str:
        _known_id(task_id)
        rows = self._read("SELECT status FROM tasks WHERE id = %s", (task_id,))
        if not rows:
            raise TaskNotFound(task_id)
        return rows[0]["status"]

    def list_tasks(
        self, status: str | None, type_: str | None, limit: int, offset: int
    ) -> list[dict]:
        where, args = [], []
        if status:
            where.append("status = %s")
            args.append(status)
        if type_:
            where.append("type = %s")
            args.append(type_)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._read(
            f"SELECT {TASK_COLUMNS} FROM tasks {clause} ORDER BY created_at, seq "
            "LIMIT %s OFFSET %s",
            (*args, limit, offset),
        )
        return [task_dict(r) for r in rows]

    def stats(self, now: float, dead_after: float) -> dict:
        # Exact counts read every row (an index-only scan of tasks_counts once vacuum
        # has marked the pages all-visible). Counted by this backend alone: from about
        # 10^4 tasks PostgreSQL would plan the scan in parallel, which gives the same
        # counts for twice the CPU or more (docs/SCALING.md, "What to watch").
        with self._connection() as conn, conn.transaction():
            conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
            groups = conn.execute(STATS_GROUPS).fetchall()
            row = conn.execute(
                STATS_OTHERS, {"alive_after": now - dead_after, "minute_ago": now - 60}
            ).fetchone()
        return stats_dict(
            groups, row["alive"], row["stopped"], row["total"], row["recent"], row["oldest"], now
        )

    def workers(self, now: float, dead_after: float) -> list[dict]:
        running: dict[str, list[str]] = {}
        for r in self._read(
            "SELECT worker_id, id FROM tasks WHERE status = 'in_progress' ORDER BY started_at"
        ):
            running.setdefault(r["worker_id"], []).append(r["id"])
        return [
            worker_dict(r, running.get(r["worker_id"], []), now, dead_after)
            for r in self._read('SELECT * FROM workers ORDER BY worker_id COLLATE "C"')
        ]

    def ping(self) -> None:
        self._read("SELECT 1")

    def health(self) -> str | None:
        """None when reads and writes work; why writes are refused when they are not
        (a read that fails raises): a read-only server says so in a read, a full disk
        by the writes it refused lately."""
        row = self._read("SELECT current_setting('transaction_read_only') AS ro")[0]
        if row["ro"] == "on":
            return str(ReadOnly("transaction_read_only is on"))
        return self.refusals.recent()

    # -- wake-ups -----------------------------------------------------------------

    def change_counter(self) -> int:
        """The sequence every notifying transaction bumps: the polling fallback for a
        notification that was lost (a listener reconnecting). It moves just before the
        commit is visible, so Wakeup wakes waiters once more a poll later."""
        return self._read(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS n FROM changes"
        )[0]["n"]

    def listen(self, callback: Callable[[], None], stop: threading.Event) -> None:
        """Call `callback()` for every notification on this schema until `stop` is set,
        on a connection of its own (not from the pool). Calls it once as soon as it
        listens, for what was committed before. Raises DatabaseUnavailable when the
        connection fails or is lost; the caller logs and listens again."""
        try:
            conn = psycopg.connect(self.url, **self._connect_kwargs)
        except psycopg.Error as exc:
            raise DatabaseUnavailable(f"database unavailable: {_reason(exc)}") from exc
        with self._listeners_lock:
            self._listeners.add(conn)
        try:
            with conn:
                conn.execute(f"LISTEN {CHANNEL}")
                callback()
                while not stop.is_set():
                    for note in conn.notifies(timeout=LISTEN_TICK_S):
                        if note.payload == self.schema:
                            callback()
        except psycopg.Error as exc:
            if stop.is_set():
                return
            raise DatabaseUnavailable(f"listener lost the database: {_reason(exc)}") from exc
        finally:
            with self._listeners_lock:
                self._listeners.discard(conn)


def _known_id(task_id: str) -> None:
    """Task ids are hex: one PostgreSQL text cannot even hold (a NUL) is simply unknown,
    as on SQLite."""
    if "\x00" in task_id:
        raise TaskNotFound(task_id)


def _text(value: str | None) -> str | None:
    """An error message PostgreSQL text can hold: a NUL character becomes U+FFFD (a
    task's error message is for people; refusing the result would lose the task's
    outcome over one unprintable character)."""
    if value is None or "\x00" not in value:
        return value
    return value.replace("\x00", "\ufffd")


def _reason(exc: BaseException) -> str:
    """The first line of a driver error (libpq's messages run over several lines)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
