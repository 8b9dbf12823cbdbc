"""Dependencies end to end with real processes (a dispatcher, a worker and its pool
processes, on SQLite and on PostgreSQL), submitted with the Python client: a chain whose
every task adds to the result of the one before (TaskContext.dependencies), a group
whose fan-in task sums its group's results (tasks.context.current() in a low-level
task), and a chain whose first task fails: the rest end cancelled without running."""

from __future__ import annotations

import pytest

from taskqueue import Client

pytestmark = pytest.mark.integration

MODULES = "tests.integration.flow_tasks"


def test_chain_group_and_cascade_with_a_real_worker(database, make_cluster):
    cluster = make_cluster(TASK_MODULES=MODULES, **database)
    cluster.start_dispatcher()
    with Client(cluster.url, token="") as client:
        # submitted before any worker runs: the waiting tasks are there, not claimed
        steps = client.chain(
            ("testing_add", {"value": 1}),
            ("testing_add", {"value": 10}),
            {"type": "testing_add", "payload": {"value": 100}},
        )
        group = client.group(*(("testing_add", {"value": v}) for v in (1, 2, 3)))
        fanned = group.then("testing_sum", {})
        failing = client.chain(
            {"type": "fail", "payload": {"error_message": "no"}, "max_retries": 0},
            ("testing_add", {"value": 1}),
        )
        assert [h.status() for h in steps] == ["pending", "waiting", "waiting"]
        assert fanned[-1].status() == "waiting"
        assert cluster.task(fanned[-1].id)["depends_on"] == [h.id for h in fanned[:-1]]

        worker = cluster.start_worker("flow-worker")
        cluster.wait_worker_alive(worker)
        done = cluster.wait_all_finished([h.id for h in steps + fanned + failing], 60)
        by_id = {t["task_id"]: t for t in done}
        assert [by_id[h.id]["result"] for h in steps] == [1, 11, 111]
        assert [by_id[h.id]["result"] for h in fanned[:-1]] == [1, 2, 3]
        assert by_id[fanned[-1].id]["result"] == {
            "sum": 6,
            "of": sorted(h.id for h in fanned[:-1]),
        }
        first, second = (by_id[h.id] for h in failing)
        assert first["status"] == "failed"
        assert (second["status"], second["error"], second["attempts"]) == (
            "cancelled",
            f"dependency {first['task_id']} failed",
            0,
        )
        assert second["history"] == []
