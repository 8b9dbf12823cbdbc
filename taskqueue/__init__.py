"""The Python API of the task queue (docs/CLIENT.md, docs/TASKS.md):

from taskqueue import Client, TaskContext, TaskFailed, TaskCancelled, task
"""

from common.client import ApiError, DispatcherUnreachable
from taskqueue.client import Client
from taskqueue.errors import Conflict, Forbidden, InvalidRequest, NotFound, Unauthorized
from taskqueue.handle import TaskHandle
from tasks.context import TaskContext
from tasks.errors import InvalidPayload, TaskCancelled, TaskFailed
from tasks.typed import Task, task

__all__ = [
    "ApiError",
    "Client",
    "Conflict",
    "DispatcherUnreachable",
    "InvalidPayload",
    "Forbidden",
    "InvalidRequest",
    "NotFound",
    "Task",
    "TaskCancelled",
    "TaskContext",
    "TaskFailed",
    "TaskHandle",
    "Unauthorized",
    "task",
]
