"""Results that cannot be delivered as they are still end in a stored state."""

from __future__ import annotations

from harness import cache_entries

BIG_MODULE = """
from tasks import registry


@registry.task("big_result")
def big_result(payload):
    return {"blob": "x" * payload["size"]}
"""


def test_a_result_too_large_to_deliver_fails_its_task_and_spares_its_batch(make_cluster):
    cluster = make_cluster(MAX_REQUEST_BYTES="50000", WORKER_PREFETCH="10")
    modules = cluster.tmp / "modules"
    modules.mkdir()
    (modules / "bigresult.py").write_text(BIG_MODULE)
    cluster.settings.update(TASK_MODULES="bigresult", PYTHONPATH=str(modules))
    cluster.start_dispatcher()
    ids = cluster.client.submit_tasks(
        [{"type": "compute", "payload": {"operation": "double", "value": i}} for i in range(5)]
        + [{"type": "big_result", "payload": {"size": 200_000}, "max_retries": 0}]
        + [{"type": "compute", "payload": {"operation": "double", "value": 7}}]
    )
    cluster.start_worker("worker-1")

    tasks = cluster.wait_all_finished(ids, timeout=60)
    big = tasks[5]
    assert big["status"] == "failed", big
    assert "refused" in big["error"]
    others = tasks[:5] + tasks[6:]
    assert [t["status"] for t in others] == ["completed"] * 6
    assert [t["result"]["result"] for t in others] == [0, 2, 4, 6, 8, 14]
    assert not cache_entries(cluster.tmp / "cache" / "worker-1")
