"""Task types for tests/integration/test_flows.py (TASK_MODULES=tests.integration.flow_tasks):
tasks that compute from their dependencies' results.

- `testing_add` {"value": int}: a typed task; returns `value` plus the sum of its
  dependencies' results, read from the TaskContext it declares.
- `testing_sum` {}: a low-level task (`run(payload)`); returns the sum of its
  dependencies' results, read from `tasks.context.current()`, and which they were.
"""

from __future__ import annotations

from typing import Any

from tasks import TaskContext, registry, task
from tasks.context import current


@task("testing_add")
def add(value: int, context: TaskContext) -> int:
    return value + sum(context.dependencies.values())


@registry.task("testing_sum")
def total(payload: dict[str, Any]) -> dict[str, Any]:
    dependencies = current().dependencies
    return {"sum": sum(dependencies.values()), "of": sorted(dependencies)}
