"""PostgreSQL storage: the core's rules (core.py), for several dispatchers on one database.

Every state change states its rule in its WHERE clause and is judged by its row count,
exactly as on SQLite; what differs is how transactions meet, and what PostgreSQL does in
one statement (the claim, a bulk insert, a batch of results):

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
import psycopg.errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from . import STOPPING, NewTask, Result
from .core import SqlStorage, Tx, statements
from .errors import BadValue, DatabaseUnavailable, DiskFull, ReadOnly, WorkerStopping
from .rows import dumps, loads

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

# -- PostgreSQL's own statements ----------------------------------------------------

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

READY = """
SELECT 1 FROM tasks WHERE status = 'pending' AND queue = ANY(%(queues)s) AND run_at <= %(now)s
 LIMIT 1
"""
NEXT_RUN_AT = """
SELECT min(run_at) AS t FROM tasks WHERE status = 'pending' AND queue = ANY(%(queues)s)
"""
# the workers of a batch of results, locked first, as every other path takes them
LOCK_WORKERS = """
SELECT 1 FROM workers WHERE worker_id = ANY(%(ids)s) ORDER BY worker_id COLLATE "C" FOR UPDATE
"""
CHANGES = "SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS n FROM changes"

Q = statements()
T = TypeVar("T")


class _Tx:
    """A transaction on one pooled connection, as the core uses it."""

    def __init__(self, cur: psycopg.Cursor):
        self.cur = cur
        self.notify = False

    def execute(self, sql: str, args: Any = None) -> psycopg.Cursor:
        return self.cur.execute(sql, args)

    def one(self, sql: str, args: Any = None) -> dict | None:
        return self.cur.execute(sql, args).fetchone()

    def all(self, sql: str, args: Any = None) -> list[dict]:
        return self.cur.execute(sql, args).fetchall()


class PostgresStorage(SqlStorage):
    q = Q
    delete_batch = DELETE_BATCH
    change_poll_s = CHANGE_POLL_S
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
        deadlock runs again from the start; nothing of it was kept."""
        for attempt in range(1, TX_ATTEMPTS + 1):
            try:
                with self._connection() as conn, conn.transaction():
                    tx = _Tx(conn.cursor())
                    out = body(tx)
                    if tx.notify:
                        tx.execute(NOTIFY, self._notify_args)
                if tx.notify:
                    self.on_change()
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

    # -- what PostgreSQL does its own way --------------------------------------------

    def _insert_many(self, tx: Tx, ids: list[str], tasks: list[NewTask], now: float) -> None:
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

    def claim(
        self,
        worker_id: str,
        instance_id: str,
        queues: tuple[str, ...],
        max_tasks: int,
        now: float,
        lease_s: float,
    ) -> list[dict]:
        def claim_tasks(tx: Tx) -> list[dict]:
            if self._touch_worker(tx, worker_id, instance_id, now, queues=queues) in STOPPING:
                raise WorkerStopping(worker_id)
            claimed: list[dict] = []
            args = {"worker_id": worker_id, "now": now, "lease_s": lease_s}
            for queue in queues:
                if len(claimed) >= max_tasks:
                    break
                args.update(queue=queue, max_tasks=max_tasks - len(claimed))
                rows = tx.all(CLAIM, args)
                rows.sort(key=lambda r: (-r["priority"], r["run_at"]))
                claimed.extend(_claimed(r) for r in rows)
            return claimed

        return self._transact(claim_tasks)

    def has_ready(self, queues: tuple[str, ...], now: float) -> bool:
        return bool(self._read(READY, {"queues": list(queues), "now": now}))

    def next_run_at(self, queues: tuple[str, ...]) -> float | None:
        return self._read(NEXT_RUN_AT, {"queues": list(queues)})[0]["t"]

    def _finish_batch(self, tx: Tx, results: list[Result], order: list[int], now: float):
        """The workers' rows first (as every other path takes them: no deadlock), then
        FINISH_CURRENT for the first result of each task, from FINISH_CURRENT_MIN tasks
        on; what it did not finish is judged result by result, exactly as if all had been."""
        tx.execute(LOCK_WORKERS, {"ids": sorted({item.worker_id for item in results})})
        fast: list[int] = []
        seen: set[str] = set()
        for i in order:
            item = results[i]
            if item.task_id in seen:
                continue
            seen.add(item.task_id)
            if not any("\x00" in text for text in (item.task_id, item.lease_token, item.worker_id)):
                fast.append(i)
        if len(fast) < FINISH_CURRENT_MIN:
            return set(), set()
        items = [results[i] for i in fast]
        completed = [item.status == "completed" for item in items]
        args = {
            "now": now,
            "task_id": [item.task_id for item in items],
            "lease_token": [item.lease_token for item in items],
            "worker_id": [item.worker_id for item in items],
            "status": [item.status for item in items],
            "result": [
                dumps(it.result) if c else None for it, c in zip(items, completed, strict=True)
            ],
            "error": [
                None if c else self._text(it.error) for it, c in zip(items, completed, strict=True)
            ],
        }
        finished = {row["id"] for row in tx.all(FINISH_CURRENT, args)}
        done = {i for i in fast if results[i].task_id in finished}
        return done, set(fast) - done

    def _complete_current(self, tx: Tx, args: dict) -> bool:
        return tx.one(COMPLETE_CURRENT, args) is not None  # the attempt closed with it

    def _delete_finished(self, tx: Tx, cutoff: float) -> int:
        return tx.one(DELETE_FINISHED, {"cutoff": cutoff, "batch": DELETE_BATCH})["n"]

    def _text(self, value: str | None) -> str | None:
        """An error message PostgreSQL text can hold: a NUL character becomes U+FFFD (a
        task's error message is for people; refusing the result would lose the task's
        outcome over one unprintable character)."""
        if value is None or "\x00" not in value:
            return value
        return value.replace("\x00", "\ufffd")

    def _stats_rows(self, args: dict) -> tuple[list[dict], dict]:
        # Exact counts read every row (an index-only scan of tasks_counts once vacuum
        # has marked the pages all-visible). Counted by this backend alone: from about
        # 10^4 tasks PostgreSQL would plan the scan in parallel, which gives the same
        # counts for twice the CPU or more (docs/SCALING.md, "What to watch").
        with self._connection() as conn, conn.transaction():
            conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
            return conn.execute(Q.STATS_GROUPS).fetchall(), conn.execute(
                Q.STATS_OTHERS, args
            ).fetchone()

    def health(self) -> str | None:
        """A read-only server says so in a read; a full disk by the writes it refused lately."""
        row = self._read("SELECT current_setting('transaction_read_only') AS ro")[0]
        if row["ro"] == "on":
            return str(ReadOnly("transaction_read_only is on"))
        return self.refusals.recent()

    # -- wake-ups -----------------------------------------------------------------

    def change_counter(self) -> int:
        """The sequence every notifying transaction bumps: the polling fallback for a
        notification that was lost (a listener reconnecting). It moves just before the
        commit is visible, so Wakeup wakes waiters once more a poll later."""
        return self._read(CHANGES)[0]["n"]

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

    def set_waiting(self, waiting: bool) -> None:
        """Nothing to do: every dispatcher LISTENs, and NOTIFY reaches them all."""


def _claimed(r: dict) -> dict:
    return {
        "task_id": r["id"],
        "type": r["type"],
        "payload": loads(r["payload"]),
        "attempt": r["attempts"],
        "timeout": r["timeout"],
        "lease_token": r["lease_token"],
        "lease_expires_at": r["lease_expires_at"],
    }


def _reason(exc: BaseException) -> str:
    """The first line of a driver error (libpq's messages run over several lines)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
