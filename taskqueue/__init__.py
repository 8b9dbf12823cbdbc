"""The Python API of the task queue: `from taskqueue import Client` (docs/CLIENT.md)."""

from common.client import ApiError, DispatcherUnreachable
from taskqueue.client import Client
from taskqueue.errors import Conflict, InvalidRequest, NotFound, Unauthorized
from taskqueue.handle import TaskHandle
from tasks.errors import InvalidPayload, TaskCancelled, TaskFailed

__all__ = [
    "ApiError",
    "Client",
    "Conflict",
    "DispatcherUnreachable",
    "InvalidPayload",
    "InvalidRequest",
    "NotFound",
    "TaskCancelled",
    "TaskFailed",
    "TaskHandle",
    "Unauthorized",
]
