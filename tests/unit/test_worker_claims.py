"""What the worker does with a claim of a task it already holds or already completed."""

from __future__ import annotations

from common.config import Config
from worker.worker import Worker


def claim(task_id: str, lease: str) -> dict:
    return {
        "task_id": task_id,
        "type": "sleep",
        "payload": {"duration": 0},
        "attempt": 2,
        "timeout": 5.0,
        "lease_token": lease,
    }


def make_worker(tmp_path) -> Worker:
    config = Config(worker_cache_dir=str(tmp_path / "cache"))
    return Worker(config, "w-unit")


def test_a_task_completed_here_and_claimed_again_does_not_run_again(tmp_path):
    """The dispatcher gave up the lease just before the result arrived and leased the
    task to this worker again: the result already sent stands."""
    worker = make_worker(tmp_path)
    worker._report(claim("t1", "lease-1"), {"status": "completed", "result": 1}, 0.1)
    with worker.cv:
        fresh = worker._new_claims([claim("t1", "lease-2"), claim("t2", "lease-3")])
    assert [c["task_id"] for c in fresh] == ["t2"]


def test_a_task_that_failed_here_and_is_claimed_again_runs_again(tmp_path):
    """A failure with retries left comes back as a retry: that one must run."""
    worker = make_worker(tmp_path)
    worker._report(claim("t1", "lease-1"), {"status": "failed", "error": "boom"}, 0.1)
    with worker.cv:
        fresh = worker._new_claims([claim("t1", "lease-2")])
    assert [c["lease_token"] for c in fresh] == ["lease-2"]
