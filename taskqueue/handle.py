"""TaskHandle: one submitted task, by id, and the ways to wait for it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from common.statuses import FINISHED
from tasks.errors import TaskCancelled, TaskFailed

if TYPE_CHECKING:
    from taskqueue.client import Client


class TaskHandle:
    """A task the dispatcher stored. `id` is its task id; `record` the task as last read
    (GET /task/<id>: status, result, error, attempts, history, ...), or None before the
    first read. Handles compare equal when their ids are."""

    __slots__ = ("client", "id", "record")

    def __init__(self, client: Client, task_id: str, record: dict | None = None) -> None:
        self.client = client
        self.id = task_id
        self.record = record

    def __repr__(self) -> str:
        status = self.record["status"] if self.record else "?"
        return f"<TaskHandle {self.id} {status}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaskHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def refresh(self) -> dict:
        """The task as the dispatcher has it now (GET /task/<id>)."""
        self.record = self.client._task(self.id)
        return self.record

    def status(self) -> str:
        """waiting, pending, in_progress, completed, failed or cancelled, as of now."""
        return self.refresh()["status"]

    def done(self) -> bool:
        """Is the task finished (completed, failed or cancelled)? Asks the dispatcher
        unless the last record read says so already."""
        if self.record is not None and self.record["status"] in FINISHED:
            return True
        return self.refresh()["status"] in FINISHED

    def wait(self, timeout: float | None = None) -> dict:
        """The task's record once it is finished, whatever its outcome; TimeoutError if it
        is not within `timeout` seconds (None: no limit). Long-polls GET /task/<id>?wait=,
        so the answer comes the moment the result is stored."""
        if self.record is None or self.record["status"] not in FINISHED:
            self.record = self.client._wait(self.id, timeout)
        return self.record

    def result(self, timeout: float | None = None) -> Any:
        """What the task returned. Raises TaskFailed (`.error`: the task's error,
        `.history`: its attempts) if it failed, TaskCancelled if it was cancelled, and
        TimeoutError if it has not finished within `timeout` seconds (None: no limit)."""
        return outcome(self.wait(timeout))

    def cancel(self) -> str:
        """Cancel the task (pending or running): its new status, `cancelled`. A finished
        task raises taskqueue.Conflict."""
        self.record = None
        return self.client._conn().cancel(self.id)

    def retry(self) -> str:
        """Run a failed or cancelled task again, attempts from 1: its new status,
        `pending`. Any other raises taskqueue.Conflict."""
        self.record = None
        return self.client._conn().retry(self.id)


def outcome(record: dict) -> Any:
    """A finished task's result, or the exception that says why there is none."""
    status = record["status"]
    if status == "completed":
        return record["result"]
    if status == "failed":
        error = record.get("error") or "task failed"
        raise TaskFailed(error, task_id=record["task_id"], history=record.get("history"))
    if status == "cancelled":
        raise TaskCancelled(record["task_id"], record.get("error"))
    raise ValueError(f"task {record['task_id']} is {status}, not finished")
