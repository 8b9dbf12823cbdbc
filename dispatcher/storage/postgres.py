"""PostgreSQL storage: the core's rules (core.py), for several dispatchers on one database.

What differs from SQLite (docs/DESIGN.md, "Storage"): a `psycopg_pool` of autocommit
connections (DATABASE_POOL_SIZE per process, plus one to LISTEN), each write one short
READ COMMITTED transaction, run again after a deadlock (TX_ATTEMPTS); the claim in one
statement with FOR UPDATE SKIP LOCKED; bulk inserts and result batches set-based; the
schema version in a table `meta`, migrated under an advisory lock; wake-ups by
`pg_notify` inside the transaction, with the sequence `changes` as the polling fallback.
Times are the dispatcher's clock, not `now()` (tests control time; hosts run NTP).
Payloads and results are JSON text, not jsonb (jsonb rewrites what it stores).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

import psycopg
import psycopg.errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from . import NewTask, Result, core, flow
from .core import SCHEMA_VERSION, SqlStorage, Tx, statements, upgrade
from .errors import BadValue, DatabaseUnavailable, DiskFull, ReadOnly
from .rows import dumps

log = logging.getLogger("dispatcher")

CHANNEL = "taskqueue"  # NOTIFY channel; the payload names the schema that changed
CONNECT_TIMEOUT_S = 5  # libpq connect_timeout unless DATABASE_URL sets one
POOL_WAIT_S = 5.0  # longest wait for a pooled connection before the client sees a 503
# The pool retries a lost connection (1, 2, 4 s...) this long, then the next request
# starts afresh: short, so that a database back after an outage is seen within seconds.
RECONNECT_TIMEOUT_S = 10.0
LISTEN_TICK_S = 0.5  # how often a listener looks at its stop event
TX_ATTEMPTS = 3  # a transaction PostgreSQL rolled back (deadlock) runs again this often
# finish() takes FINISH_CURRENT from this many tasks in a batch; below, one statement per
# result is cheaper (FINISH_CURRENT takes ~0.5 ms to plan: even at 4, 2026-11-23)
FINISH_CURRENT_MIN = 5

SCHEMA = [
    """CREATE TABLE meta (singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
                          schema_version INTEGER NOT NULL)""",
    *core.SCHEMA,
    # bumped by every transaction that notifies: the polling fallback's change counter
    "CREATE SEQUENCE changes",
]
# Migrations from version N to N + 1, applied in order (the first PostgreSQL schema was 2)
MIGRATIONS: dict[int, list[str]] = {
    2: [core.WORKER_QUEUES_COLUMN],
    3: core.TO_VERSION_4,
    4: core.TO_VERSION_5,
    5: core.TO_VERSION_6,
    6: core.TO_VERSION_7,
}

# one lock per schema: dispatchers sharing a schema migrate one after the other
MIGRATION_LOCK = "SELECT pg_advisory_xact_lock(hashtext('taskqueue migrate ' || %s))"
TABLES = "SELECT to_regclass('meta') AS meta, to_regclass('tasks') AS tasks"
META_VERSION = "SELECT schema_version AS v FROM meta"
SET_VERSION = """INSERT INTO meta (schema_version) VALUES (%(v)s)
ON CONFLICT (singleton) DO UPDATE SET schema_version = excluded.schema_version"""
CURRENT_SCHEMA = "SELECT current_schema() AS s"
READ_ONLY = "SELECT current_setting('transaction_read_only') = 'on' AS ro"
NO_PARALLEL_SCAN = "SET LOCAL max_parallel_workers_per_gather = 0"
ASYNC_COMMIT = "SET LOCAL synchronous_commit = off"  # a claim's commit: no WAL flush wait

# -- PostgreSQL's own statements ----------------------------------------------------

# (nothing) -> pending, many at once in one statement: tasks without an idempotency key
INSERT_TASKS = """
INSERT INTO tasks (id, type, queue, payload, status, priority, run_at, created_at,
                   max_retries, timeout)
SELECT id, type, queue, payload, 'pending', priority, run_at, %(now)s, max_retries, timeout
  FROM unnest(%(id)s::text[], %(type)s::text[], %(queue)s::text[], %(payload)s::text[],
              %(priority)s::int[], %(run_at)s::float8[], %(max_retries)s::int[],
              %(timeout)s::float8[])
       AS t (id, type, queue, payload, priority, run_at, max_retries, timeout)"""
# the same for a batch where some task has an expiry (the others pay nothing for it)
INSERT_EXPIRING_TASKS = """
INSERT INTO tasks (id, type, queue, payload, status, priority, run_at, created_at,
                   max_retries, timeout, expires_at)
SELECT id, type, queue, payload, 'pending', priority, run_at, %(now)s, max_retries, timeout,
       expires_at
  FROM unnest(%(id)s::text[], %(type)s::text[], %(queue)s::text[], %(payload)s::text[],
              %(priority)s::int[], %(run_at)s::float8[], %(max_retries)s::int[],
              %(timeout)s::float8[], %(expires_at)s::float8[])
       AS t (id, type, queue, payload, priority, run_at, max_retries, timeout, expires_at)"""

INSERT_KEYS = ("type", "queue", "priority", "max_retries")  # as they are in NewTask
RESULT_KEYS = ("task_id", "lease_token", "worker_id", "status")  # as they are in Result

# pending -> in_progress: one more attempt, a fresh random lease token for each task, no
# progress yet (an earlier attempt's is forgotten), and the attempt recorded, in one
# statement. SKIP LOCKED: rows another claim is taking
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
           expired_failure = FALSE, progress = NULL
      FROM picked
     WHERE tasks.id = picked.id AND tasks.status = 'pending'
       AND (tasks.expires_at IS NULL OR tasks.attempts > 0 OR tasks.expires_at > %(now)s)
    RETURNING tasks.id, tasks.type, tasks.payload, tasks.attempts, tasks.timeout,
              tasks.lease_token, tasks.lease_expires_at, tasks.priority, tasks.run_at,
              tasks.depends_on
), recorded AS (
    INSERT INTO attempts (task_id, attempt, lease_token, worker_id, started_at)
    SELECT id, attempts, lease_token, %(worker_id)s, %(now)s FROM claimed
)
SELECT * FROM claimed"""

# in_progress -> completed by its current lease, and its attempt closed: the common
# case, judged by this statement alone (a row back, the task's queue and type, means done)
COMPLETE_CURRENT = """
WITH done AS (
    UPDATE tasks
       SET status = 'completed', result = %(result)s, error = NULL, finished_at = %(now)s,
           finished_lease = %(lease_token)s, lease_token = NULL, lease_expires_at = NULL,
           worker_id = %(worker_id)s
     WHERE id = %(task_id)s AND status = 'in_progress' AND lease_token = %(lease_token)s
    RETURNING id, queue, type, has_dependents
)
UPDATE attempts SET finished_at = %(now)s, outcome = 'completed', error = NULL
  FROM done
 WHERE attempts.task_id = done.id AND attempts.lease_token = %(lease_token)s
RETURNING done.queue, done.type, done.has_dependents"""

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
    RETURNING t.id, t.status, t.error, t.queue, t.type, t.has_dependents, r.lease_token,
              r.worker_id
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
SELECT id, queue, type, has_dependents FROM done"""

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
), edges AS (
    DELETE FROM task_dependencies WHERE task_id IN (SELECT id FROM gone)
)
SELECT count(*) AS n FROM gone"""

# the dispatchers' wake-up: delivered to every LISTENer when the transaction commits
NOTIFY = "SELECT pg_notify(%(channel)s, %(schema)s), nextval('changes')"

READY = """
SELECT 1 FROM tasks WHERE status = 'pending' AND queue = ANY(%(queues)s) AND run_at <= %(now)s
 LIMIT 1"""
# READY, and whether any queue's settings limit anything (flow.py), in one round trip
READY_PROBE = f"""
SELECT EXISTS ({READY}) AS ready,
       EXISTS (SELECT 1 FROM queue_settings WHERE {flow.LIMITING}) AS limited"""
NEXT_RUN_AT = """
SELECT min(run_at) AS t FROM tasks WHERE status = 'pending' AND queue = ANY(%(queues)s)"""
# the workers of a batch of results, locked first, as every other path takes them
LOCK_WORKERS = """
SELECT 1 FROM workers WHERE worker_id = ANY(%(ids)s) ORDER BY worker_id COLLATE "C" FOR UPDATE"""
CHANGES = "SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS n FROM changes"

Q = statements(CLAIM=CLAIM)
T = TypeVar("T")


class PostgresStorage(SqlStorage):
    q = Q
    change_poll_s = 0.5  # the polling fallback's period (Wakeup reads it)
    marks_waiters = False  # NOTIFY reaches every listener

    def __init__(
        self,
        url: str,
        pool_size: int = 10,
        backoff_base: float = 1.0,
        backoff_cap: float = 300.0,
    ):
        super().__init__(backoff_base, backoff_cap)
        self.url = url
        self.created_schema = False  # did this instance create the schema (tests read it)
        try:
            params = conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise ValueError(f"DATABASE_URL is not a valid PostgreSQL URL: {exc}") from None
        # libpq reads the URL; these fill in only what it does not say
        unsaid = {"connect_timeout": CONNECT_TIMEOUT_S, "application_name": "taskqueue-dispatcher"}
        self._connect_kwargs = {k: v for k, v in unsaid.items() if k not in params}
        self._connect_kwargs["autocommit"] = True
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
            self.schema = self._read(CURRENT_SCHEMA)[0]["s"]
            if self.schema is None:
                raise RuntimeError(
                    "DATABASE_URL: no schema of the search_path exists in this database"
                )
            self._notify_args = {"channel": CHANNEL, "schema": self.schema}
            self._transact(self._migrate)
        except BaseException:
            self._pool.close()
            raise

    # -- connections and transactions ------------------------------------------------

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
            raise BadValue(f"invalid value: {exc}") from exc

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

    def _transact(self, body: Callable[[Tx], T], fsync: bool = True) -> T:
        """BEGIN; body; (NOTIFY;) COMMIT. A transaction PostgreSQL rolled back to break a
        deadlock runs again from the start; nothing of it was kept. With fsync=False
        (claims only) the commit does not wait for its WAL flush (`synchronous_commit =
        off` for this transaction alone): docs/RELIABILITY.md argues why that is safe."""
        for attempt in range(1, TX_ATTEMPTS + 1):
            try:
                with self._connection() as conn, conn.transaction():
                    tx = Tx(conn.cursor())
                    if not fsync:
                        tx.execute(ASYNC_COMMIT)
                    out = body(tx)
                    if tx.notify:
                        tx.execute(NOTIFY, self._notify_args)
                if tx.notify:
                    self.on_change()
                self._committed(tx)
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
            with suppress(psycopg.Error):
                conn.close()  # its listen() ends with an error its Wakeup logs
        self._pool.close()

    def _migrate(self, tx: Tx) -> None:
        """Create the schema, or bring an older one up to SCHEMA_VERSION, under an
        advisory lock: dispatchers starting together do it once, one after the other."""
        tx.execute(MIGRATION_LOCK, (self.schema,))
        tables = tx.one(TABLES)
        if tables["meta"] is None:
            if tables["tasks"] is not None:
                raise RuntimeError(
                    f"schema {self.schema} has a tasks table but no meta table; "
                    "it was not made by this program"
                )
            for statement in SCHEMA:
                tx.execute(statement)
            tx.execute(SET_VERSION, {"v": SCHEMA_VERSION})
            self.created_schema = True
            log.info("created schema version %d in %s", SCHEMA_VERSION, self.schema)
            return
        version = tx.one(META_VERSION)["v"]
        if version != SCHEMA_VERSION:  # else nothing written: a read-only database starts
            tx.execute(SET_VERSION, {"v": upgrade(tx, version, MIGRATIONS)})
            log.info(
                "migrated schema %s from version %d to %d", self.schema, version, SCHEMA_VERSION
            )

    # -- what PostgreSQL does its own way --------------------------------------------

    def _insert_many(self, tx: Tx, ids: list[str], tasks: list[NewTask], now: float) -> None:
        args = {key: [getattr(t, key) for t in tasks] for key in INSERT_KEYS}
        args.update(now=now, id=ids, payload=[dumps(t.payload) for t in tasks])
        args.update(
            run_at=[now + t.delay for t in tasks], timeout=[float(t.timeout) for t in tasks]
        )
        if any(t.expires_in is not None for t in tasks):
            expiry = [None if t.expires_in is None else now + t.expires_in for t in tasks]
            args["expires_at"] = expiry
            tx.execute(INSERT_EXPIRING_TASKS, args)
            return
        tx.execute(INSERT_TASKS, args)

    def _ready_in(self, queues: tuple[str, ...], now: float) -> bool:
        return bool(self._read(READY, {"queues": list(queues), "now": now}))

    def _ready_probe(self, queues: tuple[str, ...], now: float) -> tuple[bool, bool]:
        row = self._read(READY_PROBE, {"queues": list(queues), "now": now})[0]
        return row["ready"], row["limited"]

    def _next_run_in(self, queues: tuple[str, ...]) -> float | None:
        return self._read(NEXT_RUN_AT, {"queues": list(queues)})[0]["t"]

    def _finish_batch(
        self, tx: Tx, results: list[Result], order: list[int], now: float
    ) -> tuple[dict[int, dict], set[int]]:
        """The workers' rows first (as every other path takes them: no deadlock), then
        FINISH_CURRENT for the first result of each task, from FINISH_CURRENT_MIN tasks
        on; what it did not finish is judged result by result, exactly as if all had been."""
        tx.execute(LOCK_WORKERS, {"ids": sorted({item.worker_id for item in results})})
        fast, seen = [], set()
        for i in order:  # each task's first result, when text can hold its strings
            r = results[i]
            if r.task_id not in seen and "\x00" not in r.task_id + r.lease_token + r.worker_id:
                fast.append(i)
            seen.add(r.task_id)
        if len(fast) < FINISH_CURRENT_MIN:
            return {}, set()
        items = [results[i] for i in fast]
        args = {key: [getattr(it, key) for it in items] for key in RESULT_KEYS}
        args["now"] = now
        args["result"] = [dumps(it.result) if it.status == "completed" else None for it in items]
        args["error"] = [None if it.status == "completed" else self._text(it.error) for it in items]
        finished = {row["id"]: row for row in tx.all(FINISH_CURRENT, args)}
        done = {i: finished[results[i].task_id] for i in fast if results[i].task_id in finished}
        return done, set(fast) - done.keys()

    def _complete_current(self, tx: Tx, args: dict) -> dict | None:
        return tx.one(COMPLETE_CURRENT, args)  # the attempt closed with it

    def _delete_finished(self, tx: Tx, cutoff: float) -> int:
        return tx.one(DELETE_FINISHED, {"cutoff": cutoff, "batch": core.DELETE_BATCH})["n"]

    def _text(self, value: str | None) -> str | None:
        """NUL becomes U+FFFD: text cannot hold it, and an error message is for people."""
        if value is None or "\x00" not in value:
            return value
        return value.replace("\x00", "\ufffd")

    def _stats_rows(self, args: dict) -> tuple[list[dict], dict]:
        # by this backend alone: a parallel scan gives the same counts for twice the CPU
        # or more from about 10^4 tasks (docs/SCALING.md, "What to watch")
        with self._connection() as conn, conn.transaction():
            conn.execute(NO_PARALLEL_SCAN)
            return conn.execute(Q.STATS_GROUPS).fetchall(), conn.execute(
                Q.STATS_OTHERS, args
            ).fetchone()

    def health(self) -> str | None:
        """A read-only server says so in a read; a full disk by the writes it refused lately."""
        if self._read(READ_ONLY)[0]["ro"]:
            return str(ReadOnly("transaction_read_only is on"))
        return self.refusals.recent()

    # -- wake-ups -----------------------------------------------------------------

    def change_counter(self) -> int:
        """The sequence every notifying transaction bumps (just before its commit shows)."""
        return self._read(CHANGES)[0]["n"]

    def listen(self, callback: Callable[[], None], stop: threading.Event) -> None:
        """NOTIFY on this schema, on a connection of its own (not from the pool)."""
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


def _reason(exc: BaseException) -> str:
    """The first line of a driver error (libpq's messages run over several lines)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
