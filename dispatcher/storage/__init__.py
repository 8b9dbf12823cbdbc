"""The storage contract: named operations every database module offers.

Routes call these and nothing else; all SQL lives here: core.py states every rule once,
sqlite.py and postgres.py add what their database does its own way.
Every operation that depends on time takes `now` (UTC epoch seconds) as an argument.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from common.config import Config, ConfigError
from common.statuses import FINISHED, STATUSES  # noqa: F401 (the storage's statuses too)

STOPPING = ("stopping", "stopped")  # a worker's status once it said it is shutting down
WORKER_STATES = STOPPING  # what a heartbeat's `state` may say


# Not frozen: NewTask and Result are made once per item of a batch, and a frozen
# dataclass's __init__ costs ~2.5 µs more each (2.5 ms of a 1,000-task submission).
@dataclass(slots=True)
class NewTask:
    """A validated task, ready to be stored."""

    type: str
    payload: dict
    queue: str = "default"
    priority: int = 0
    delay: float = 0.0
    max_retries: int = 3
    timeout: float = 300.0
    idempotency_key: str | None = None
    # the tasks it waits for: ids, and (a batch's) ints, the index of an earlier task of
    # the same submission; None: none
    depends_on: list[str | int] | None = None
    expires_in: float | None = None  # not started within this many seconds: cancelled


@dataclass(slots=True)
class Result:
    """One result a worker reports for a task it held under `lease_token`."""

    task_id: str
    lease_token: str
    worker_id: str
    status: str  # "completed" | "failed"
    result: Any = None
    error: str | None = None


@dataclass(slots=True)
class AuditEntry:
    """One change a person or a script made, for the audit trail (storage/audit.py):
    who (the token's name and role), what (`action`, e.g. task.cancel) to what
    (`target`, e.g. "task <id>"), from which request and client (None outside one), and
    `detail`, anything JSON can hold (None: nothing more to say)."""

    name: str
    role: str
    action: str
    target: str
    request_id: str | None = None
    client: str | None = None
    detail: Any = None


class Moved(str):
    """The status an operation moved a task to (finish, cancel, retry), carrying the
    task's queue and type, which the dispatcher's metrics are labelled with. It is the
    plain status everywhere else (compares, hashes, serialises and formats as one); a
    status that moved nothing (a repeated result, a failure under an earlier lease) is
    a plain str."""

    queue: str
    type: str
    # one instance per (status, queue, type), made once: a result costs a dict lookup
    _made: ClassVar[dict[tuple[str, str, str], Moved]] = {}
    KEEP = 4096  # past this many label sets (queue names are the clients'), no caching

    def __new__(cls, status: str, queue: str, type_: str) -> Moved:
        moved = cls._made.get((status, queue, type_))
        if moved is None:
            moved = super().__new__(cls, status)
            moved.queue, moved.type = queue, type_
            if len(cls._made) < cls.KEEP:
                cls._made[status, queue, type_] = moved
        return moved


@dataclass
class ReapReport:
    expired: list[str] = field(default_factory=list)
    expired_queues: list[str] = field(default_factory=list)  # each expired task's queue
    dead_workers: list[str] = field(default_factory=list)
    rescued: list[str] = field(default_factory=list)
    deleted: int = 0
    forgotten: int = 0  # workers dead or stopped for longer than forget_after
    # (queue, type) of each not-started task past its expiry, now cancelled
    unstarted: list[tuple[str, str]] = field(default_factory=list)
    audit_deleted: int = 0  # audit records older than audit_retention_s


class Refusals:
    """Writes the database refused for a reason that lasts (a full disk, a read-only
    database), for /health: it reports the last one for HOLD_S seconds after it."""

    HOLD_S = 10.0

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._last: tuple[float, str] | None = None

    def seen(self, error: Exception) -> Exception:
        self._last = (self._clock(), str(error))
        return error

    def recent(self) -> str | None:
        last = self._last
        if last is None or self._clock() - last[0] > self.HOLD_S:
            return None
        return last[1]


class Storage(Protocol):
    """The operations routes and the reaper call; core.py implements them once, for
    sqlite.py and postgres.py. `now` is always the caller's clock, in UTC epoch seconds
    (storage never reads a clock: tests move time by passing a number). Every operation
    may raise DatabaseUnavailable (DiskFull and ReadOnly for writes refused for those
    reasons); nothing is changed then. Task statuses move only as the task lifecycle of
    docs/DESIGN.md says, each transition guarded in its statement's WHERE clause."""

    on_change: Callable[[], None]
    """Called after every commit that may wake a held poll here (new or released work,
    a finished task); the app points it at its Wakeup. Other processes hear of the
    commit through `listen`."""
    on_cascade: Callable[[list[Mapping]], None]
    """Called after a commit that cancelled tasks because a dependency failed or was
    cancelled, with their rows (id, queue, type): the app counts them in its metrics."""
    on_expired: Callable[[list[tuple[str, str]]], None]
    """Called after a commit (a claim's, the reaper's) that cancelled not-started tasks
    past their expiry, with their (queue, type): the app counts them in its metrics."""
    change_poll_s: float
    """How often Wakeup reads `change_counter` while a request waits."""
    marks_waiters: bool
    """True when the push reaches only processes marked by `set_waiting`."""
    max_pending: int
    """MAX_PENDING_TASKS: the most pending tasks `submit` lets the queue hold; 0, no
    limit (and no cost)."""

    def submit(self, tasks: list[NewTask], now: float) -> list[tuple[str, bool]]:
        """(nothing) -> pending, all in one transaction: `(task_id, created)` each, in
        order. A task whose idempotency_key is taken gives that task's id and
        `created` False, and stores nothing.

        A task with `depends_on` is stored waiting (a dependency not completed),
        pending (all completed) or cancelled ("dependency <id> failed" / "was
        cancelled": one already ended so); an int in it is the index of an earlier task
        of the same call, standing for that task's id (the existing task's, for a
        repeated idempotency_key). An id of no stored task raises UnknownDependency and
        stores nothing.

        With `max_pending` set, a submission whose created tasks would take the pending
        count past it raises QueueFull and stores nothing (a repeat that creates nothing
        always passes). The count is exact, inside the transaction, and bounded (at most
        max_pending + 1 entries of the pending index); it is made only when this
        process's estimate (its last count, at most ESTIMATE_AGE old, plus what it
        submitted since) says the submission may reach NEAR_LIMIT of the limit.
        SQLite's write lock makes a count exact against concurrent submissions; on
        PostgreSQL, dispatchers submitting at the same moment may each pass the check,
        and so overshoot the limit by what they submit together."""

    def claim(
        self,
        worker_id: str,
        instance_id: str,
        queues: tuple[str, ...],
        max_tasks: int,
        now: float,
        lease_s: float,
    ) -> list[dict]:
        """pending (ready: run_at <= now) -> in_progress for up to `max_tasks` tasks,
        from the queues in order (as each queue's settings allow: none from a paused
        one, no more than its max_in_flight and rate limit leave), each highest
        priority then oldest first; each under a fresh lease_token until now +
        lease_s, one more attempt, its history entry opened. Registers or refreshes
        the worker (a new instance_id takes the worker over: the earlier instance's
        tasks go back to the queue at once). Raises WorkerTakenOver for a retired
        instance, WorkerStopping for one that said it is
        stopping. A claimed task has no progress until its new attempt reports some.
        Not-started tasks past their expiry are cancelled first, never handed out
        (the result's `expired` lists their (queue, type)).
        Returns `{task_id, type, queue, payload, attempt, timeout, lease_token,
        lease_expires_at}` each, and `dependencies` ({task_id: result} of the completed
        ones still stored) for a task that has dependencies."""

    def has_ready(self, queues: tuple[str, ...], now: float) -> bool:
        """Is a task of these queues claimable now (pending, run_at <= now, in a queue
        that is not paused, not at its max_in_flight and not out of its rate limit)?
        Reads: the queues' limiting settings (one lookup), then the ready index."""

    def next_run_at(self, queues: tuple[str, ...], now: float) -> float | None:
        """When a task of these queues becomes claimable, or None (nothing pending, or
        only in paused or full queues: a resume or a finished task notifies). A queue
        out of its rate limit counts from when its window lets one more in. A read."""

    def queues(self, now: float) -> list[dict]:
        """Every known queue (with tasks or settings), by name: `name`, `paused`,
        `max_in_flight`, `rate_limit` ({count, per_seconds} or None), `updated_at`
        (of its settings; None without) and `counts` {status: n}."""

    def queue_settings(self) -> list[dict]:
        """Every queue that has settings, by name, as `queues` gives them without
        `counts`: one read of the (small) settings table."""

    def set_queue(self, name: str, changes: Mapping[str, Any], now: float) -> dict:
        """Create or change a queue's settings (any of paused, max_in_flight,
        rate_limit; left out: kept) and wake held polls; the queue's settings back.
        Enforced by every later claim, inside its transaction (flow.py)."""

    def finish(self, results: list[Result], now: float) -> list[str | Exception]:
        """Judge each result alone, in order, in one transaction (the fencing rules of
        docs/API.md): in_progress -> completed | failed, or -> pending with retries
        left (run_at after back-off); a late real result replaces a failure only lease
        expiry caused. Returns, per result, the task's new status, or the error that
        result alone gets (TaskNotFound, LeaseConflict); a repeat is harmless. A status
        is a `Moved` (with the task's queue and type) when that result moved its task,
        a plain str when it did not (the same result again; a failure under an earlier
        lease, which only closes that attempt). A task completed releases its waiting
        dependents (pending when it was the last they waited for); one failed for good
        cancels them, transitively."""

    def heartbeat(
        self,
        worker_id: str,
        instance_id: str,
        task_ids: list[str] | None,
        now: float,
        lease_s: float,
        state: str | None = None,
        concurrency: int | None = None,
        progress: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> list[str]:
        """Registers or refreshes the worker and extends to now + lease_s the leases of
        the listed tasks it holds in_progress (without a list: all of them). Returns the
        listed tasks it should abandon (cancelled, finished, deleted, leased to
        another). `state`: stopping (give it no more tasks) or stopped (it is gone,
        not dead); `concurrency`, the tasks it runs at once, is kept when given.
        `progress` ({task_id: {"fraction", "message"}}) is stored, with `now` as its
        `updated_at`, for the tasks this worker holds in_progress, in one statement
        (none without it); for any other task it is ignored.
        Raises WorkerTakenOver for a retired instance."""

    def release(self, worker_id: str, tasks: list[tuple[str, str]], now: float) -> int:
        """in_progress -> pending at once for the (task_id, lease_token) pairs this
        worker holds; the attempt does not count. Returns how many were given back."""

    def reap(
        self,
        now: float,
        dead_after: float,
        retention_s: float,
        forget_after: float = 86_400.0,
        audit_retention_s: float = 7_776_000.0,
    ) -> ReapReport:
        """The reaper's sweep: workers silent since now - dead_after -> dead, their
        tasks back to the queue (or failed on their last attempt); expired leases
        likewise; finished tasks older than retention_s deleted with their history (0:
        kept); workers dead or stopped since now - forget_after forgotten; audit
        records older than audit_retention_s (default 90 days) deleted. Safe with
        any number of reapers at once. The report names the tasks whose lease expired
        (`expired`, with `expired_queues`, the queue of each), the workers declared
        dead and the tasks they held (`rescued`), the (queue, type) of the not-started
        tasks it cancelled past their expiry (`unstarted`), and counts the rest
        (`deleted`, `forgotten`, `audit_deleted`)."""

    def cancel(self, task_id: str, now: float) -> Moved:
        """waiting | pending | in_progress -> cancelled, and the tasks waiting on it,
        transitively. TaskNotFound, or Conflict if finished."""

    def retry(self, task_id: str, now: float) -> Moved:
        """failed | cancelled -> pending, attempts reset (-> waiting when some of its
        dependencies are not finished; Conflict when one is failed or cancelled).
        TaskNotFound, or Conflict."""

    def get(self, task_id: str) -> dict:
        """The task with its history (task_dict in rows.py), and `progress`: the last
        {"fraction", "message", "updated_at"} its current or last attempt reported
        (None before any; kept once it finished), and `dependents`: the ids of the
        tasks that depend on it. TaskNotFound."""

    def dependents(self, task_id: str) -> list[str]:
        """The ids of the tasks that depend on this one."""

    def statuses(self, task_ids: list[str]) -> dict[str, str]:
        """{task_id: status} of the stored ones of `task_ids`."""

    def status_of(self, task_id: str) -> str:
        """The task's status alone (one column: held waits read it often)."""

    def finished_among(self, task_ids: list[str]) -> tuple[list[dict], list[str]]:
        """Of `task_ids`: the finished tasks (completed, failed, cancelled) with their
        history, as `get` gives them, in the order given; and the ids of no stored task.
        One status read of them all, then the finished ones' rows (held waits for many
        tasks call it on every wake-up)."""

    def list_tasks(
        self, status: str | None, type_: str | None, limit: int, offset: int
    ) -> list[dict]:
        """Tasks in submission order, filtered when status or type_ is given."""

    def stats(self, now: float, dead_after: float) -> dict:
        """The counts of GET /stats (stats_dict in rows.py)."""

    def active_counts(self) -> list[Mapping]:
        """(queue, status, n) of the pending and in-progress tasks, from index ranges of
        those two statuses only (the dashboard's live numbers)."""

    def finished_since(self, since: float) -> list[Mapping]:
        """Tasks finished since `since` as rows of (queue, status, minute, n), minute
        being floor(finished_at / 60): a range of the finished-tasks index."""

    def oldest_pending(self, queues: Iterable[str]) -> dict[str, float]:
        """Each queue's earliest pending run_at, one index lookup per queue (queues
        without pending tasks left out)."""

    def workers(self, now: float, dead_after: float) -> list[dict]:
        """Every worker not yet forgotten, with the tasks it holds and the progress of
        those that reported some (worker_dict)."""

    # -- periodic tasks (storage/schedules.py; docs/SCHEDULING.md) -------------------

    def create_schedule(
        self, name: str, definition: dict, enabled: bool, next_run_at: float | None, now: float
    ) -> dict:
        """(nothing) -> a schedule: `definition` (JSON: cron, every, timezone, catch_up,
        task, as the dispatcher checked them) stored as given, `next_run_at` its first
        tick (None: none). Conflict when the name is taken. Returns schedule_dict."""

    def update_schedule(
        self,
        name: str,
        definition: dict,
        enabled: bool,
        next_run_at: float | None,
        now: float,
        version: float | None = None,
        error: str | None = None,
    ) -> dict:
        """Replace a schedule's definition, enabled, next_run_at and error (None: none);
        its updated_at (the version a firing is judged by) moves.
        ScheduleNotFound; Conflict when `version` (an updated_at read before) is given
        and no longer the schedule's."""

    def delete_schedule(self, name: str) -> None:
        """The schedule is gone (its tasks stay). ScheduleNotFound."""

    def get_schedule(self, name: str) -> dict:
        """One schedule (schedule_dict: name, definition, enabled, next_run_at,
        last_run_at, last_tick, last_task_id, error, created_at, updated_at).
        ScheduleNotFound."""

    def schedules(self) -> list[dict]:
        """Every schedule, by name."""

    def due_schedules(self, now: float) -> list[dict]:
        """The enabled schedules whose next_run_at <= now, earliest first. A read."""

    def next_schedule_at(self) -> float | None:
        """The earliest next_run_at of the enabled schedules, or None. A read."""

    def fire_schedule(
        self,
        name: str,
        expected: float,
        version: float,
        next_run_at: float | None,
        tasks: list[tuple[float, NewTask]],
        now: float,
        error: str | None = None,
    ) -> list[str] | None:
        """Fire a due schedule, in one transaction: its next_run_at moves from
        `expected` to `next_run_at` only if it still is `expected`, the schedule is
        enabled and its updated_at is `version` (compare-and-set: of any number of
        concurrent firings of one tick, one wins); `error` is stored (None clears it).
        Only the winner inserts `tasks`, one per (tick, task), pending, with the
        idempotency key `schedule:<name>:<tick ISO 8601 UTC>` (a tick already made is
        not made again) and `schedule` {"name", "tick"}; last_run_at, last_tick and
        last_task_id follow the last task created. Returns the ids created, or None
        when another firing (or an edit) moved the schedule first."""

    # -- the audit trail (storage/audit.py; docs/SECURITY.md) --------------------------

    def record_audit(self, entry: AuditEntry, now: float, key: str | None = None) -> bool:
        """(nothing) -> one audit record at `now`, in a transaction of its own. With a
        `key`, a record of that key already stored (another process wrote it) means
        nothing is written. Returns whether a record was written."""

    def audit_records(self, limit: int, offset: int) -> list[dict]:
        """A page of audit records, newest first (by id): `id`, `at` (epoch seconds),
        `name`, `role`, `action`, `target`, `request_id`, `client`, `detail`."""

    def shared_secret(self, name: str) -> bytes:
        """The secret `name` (32 random bytes), made by the first process that asks and
        the same for every process and dispatcher on this database."""

    def ping(self) -> None:
        """A read; raises DatabaseUnavailable when it fails."""

    def health(self) -> str | None:
        """None when the database reads and writes; otherwise why writes are refused
        (a full disk, a read-only database; a refusal is reported for Refusals.HOLD_S
        after the last one). Raises DatabaseUnavailable when it cannot even be read."""

    def change_counter(self) -> int:
        """A number that moves whenever another connection or process commits a change
        that may wake a held poll (SQLite's PRAGMA data_version, a PostgreSQL
        sequence): Wakeup's fallback for a lost push."""

    def listen(self, callback: Callable[[], None], stop: threading.Event) -> None:
        """Block, calling callback() at each commit another process announces (and once
        at the start, for what came before), until `stop` is set. Raises
        DatabaseUnavailable when it loses the database (the caller listens again)."""

    def set_waiting(self, waiting: bool) -> None:
        """Whether this process holds polls (see marks_waiters); may do nothing."""

    def close(self) -> None:
        """Close every connection; the storage is not used again."""


def open_storage(config: Config) -> Storage:
    """Open (and create or migrate) the database that DATABASE_URL names.
    PostgreSQL that cannot be reached raises DatabaseUnavailable."""
    if config.database_url.startswith("sqlite:///"):
        from .sqlite import SqliteStorage

        storage: Storage = SqliteStorage(
            config.database_path(),
            backoff_base=config.retry_backoff_base,
            backoff_cap=config.retry_backoff_cap,
        )
        storage.max_pending = config.max_pending_tasks
        return storage
    if config.database_url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStorage

        try:
            storage = PostgresStorage(
                config.database_url,
                pool_size=config.database_pool_size,
                backoff_base=config.retry_backoff_base,
                backoff_cap=config.retry_backoff_cap,
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        storage.max_pending = config.max_pending_tasks
        return storage
    raise ConfigError(
        "DATABASE_URL must be sqlite:///relative/path.db, sqlite:////absolute/path.db "
        "or postgresql://..."
    )
