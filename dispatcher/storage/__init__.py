"""The storage contract: named operations every database module offers.

Routes call these and nothing else; all SQL lives in the module of its database.
Every operation that depends on time takes `now` (UTC epoch seconds) as an argument.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from common.config import Config, ConfigError

FINISHED = ("completed", "failed", "cancelled")
STATUSES = ("pending", "in_progress", *FINISHED)
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


@dataclass(slots=True)
class Result:
    """One result a worker reports for a task it held under `lease_token`."""

    task_id: str
    lease_token: str
    worker_id: str
    status: str  # "completed" | "failed"
    result: Any = None
    error: str | None = None


@dataclass
class ReapReport:
    expired: list[str] = field(default_factory=list)
    dead_workers: list[str] = field(default_factory=list)
    rescued: list[str] = field(default_factory=list)
    deleted: int = 0
    forgotten: int = 0  # workers dead or stopped for longer than forget_after


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
    def submit(self, tasks: list[NewTask], now: float) -> list[tuple[str, bool]]: ...

    def claim(
        self,
        worker_id: str,
        instance_id: str,
        queues: tuple[str, ...],
        max_tasks: int,
        now: float,
        lease_s: float,
    ) -> list[dict]: ...

    def has_ready(self, queues: tuple[str, ...], now: float) -> bool: ...

    def next_run_at(self, queues: tuple[str, ...]) -> float | None: ...

    def finish(self, results: list[Result], now: float) -> list[str | Exception]: ...

    def heartbeat(
        self,
        worker_id: str,
        instance_id: str,
        task_ids: list[str] | None,
        now: float,
        lease_s: float,
        state: str | None = None,
    ) -> list[str]: ...

    def release(self, worker_id: str, tasks: list[tuple[str, str]], now: float) -> int: ...

    def reap(
        self, now: float, dead_after: float, retention_s: float, forget_after: float = 86_400.0
    ) -> ReapReport: ...

    def cancel(self, task_id: str, now: float) -> str: ...

    def retry(self, task_id: str, now: float) -> str: ...

    def get(self, task_id: str) -> dict: ...

    def status_of(self, task_id: str) -> str: ...

    def list_tasks(
        self, status: str | None, type_: str | None, limit: int, offset: int
    ) -> list[dict]: ...

    def stats(self, now: float, dead_after: float) -> dict: ...

    def workers(self, now: float, dead_after: float) -> list[dict]: ...

    def ping(self) -> None: ...

    def health(self) -> str | None:
        """None when the database reads and writes; otherwise why writes are refused
        (a full disk, a read-only database; a refusal is reported for Refusals.HOLD_S
        after the last one). Raises DatabaseUnavailable when it cannot even be read."""
        ...

    def change_counter(self) -> int:
        """A number that moves whenever another connection or process commits a change
        that may wake a held long poll; Wakeup polls it every `change_poll_s` seconds
        (a storage may set that attribute; the default is wakeup.POLL_S) while a request
        waits. A storage that can also push changes offers

            listen(callback: Callable[[], None], stop: threading.Event) -> None

        which blocks, calling callback() at each change (and once when it starts
        listening), until `stop` is set; it raises DatabaseUnavailable when it loses the
        database. PostgreSQL offers both (LISTEN/NOTIFY, the counter as a fallback);
        SQLite only the counter."""
        ...

    def close(self) -> None: ...


def open_storage(config: Config) -> Storage:
    """Open (and create or migrate) the database that DATABASE_URL names.
    PostgreSQL that cannot be reached raises DatabaseUnavailable."""
    if config.database_url.startswith("sqlite:///"):
        from .sqlite import SqliteStorage

        return SqliteStorage(
            config.database_path(),
            backoff_base=config.retry_backoff_base,
            backoff_cap=config.retry_backoff_cap,
        )
    if config.database_url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStorage

        try:
            return PostgresStorage(
                config.database_url,
                pool_size=config.database_pool_size,
                backoff_base=config.retry_backoff_base,
                backoff_cap=config.retry_backoff_cap,
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    raise ConfigError(
        "DATABASE_URL must be sqlite:///relative/path.db, sqlite:////absolute/path.db "
        "or postgresql://..."
    )
