"""What storage raises. Neutral: no HTTP here (dispatcher/errors.py maps each to its
status); str(exc) is one sentence a client may read."""

from __future__ import annotations


class StorageError(Exception):
    """The database refused an operation for a reason the caller must know."""


class TaskNotFound(StorageError):
    def __init__(self, task_id: str):
        super().__init__(f"task {task_id} not found")


class ScheduleNotFound(StorageError):
    def __init__(self, name: str):
        super().__init__(f"schedule {name} not found")


class Conflict(StorageError):
    """A state change the task's current state refuses (finished, other lease, taken over)."""


class LeaseConflict(Conflict):
    pass


class WorkerTakenOver(Conflict):
    def __init__(self, worker_id: str):
        super().__init__(
            f"worker id {worker_id} was taken over by a newer instance; this instance must stop"
        )


class WorkerStopping(StorageError):
    """The worker said it is shutting down: it is given no more tasks (its claims are
    answered with none)."""

    def __init__(self, worker_id: str):
        super().__init__(f"worker {worker_id} is stopping: it claims nothing more")


class QueueFull(StorageError):
    """A submission would take the pending count past MAX_PENDING_TASKS: none of it was
    stored; the client tries again later."""

    def __init__(self, pending: int, adding: int, limit: int):
        self.pending, self.adding, self.limit = pending, adding, limit
        held = f"more than {limit}" if pending > limit else str(pending)
        more = "" if pending >= limit else f" and this submission adds {adding}"
        super().__init__(
            f"the queue holds {held} pending tasks{more}, the limit (MAX_PENDING_TASKS) is "
            f"{limit}: try again later"
        )


class UnknownDependency(StorageError):
    """A submission's depends_on names a task that is not stored (never submitted, or
    deleted by retention): nothing of the submission was stored. `index`: the task's
    position in its batch (None: a single submission)."""

    def __init__(self, index: int | None, task_id: str):
        self.index, self.task_id = index, task_id
        where = "" if index is None else f"tasks[{index}]: "
        super().__init__(f"{where}'depends_on': task {task_id} not found")

    def alone(self) -> UnknownDependency:
        """The same refusal for a single submission (no index)."""
        return UnknownDependency(None, self.task_id)


class BadValue(StorageError):
    """A value the database cannot hold (PostgreSQL text and a NUL character)."""


class DatabaseUnavailable(StorageError):
    """The database cannot be used now; nothing was changed."""


class DiskFull(DatabaseUnavailable):
    """The database's disk is full: writes are refused, reads go on."""

    def __init__(self, detail: str):
        super().__init__(
            f"the database's disk is full ({detail}); nothing was stored: "
            "try again once space is freed"
        )


class ReadOnly(DatabaseUnavailable):
    """The database takes no writes (a read-only file, mount or server)."""

    def __init__(self, detail: str):
        super().__init__(
            f"the database is read-only ({detail}); nothing was stored: try again later"
        )
