"""The task queue for Python code: task types from typed functions, and (soon) a client.

from taskqueue import task, TaskContext, TaskFailed, TaskCancelled
"""

from tasks.context import TaskContext
from tasks.errors import InvalidPayload, TaskCancelled, TaskFailed
from tasks.typed import Task, task

__all__ = ["InvalidPayload", "Task", "TaskCancelled", "TaskContext", "TaskFailed", "task"]
