"""The worker's on-disk result cache (worker/cache.py)."""

from __future__ import annotations

from worker.cache import ResultCache


def test_a_temp_file_left_by_a_crash_mid_write_is_removed_at_start_up(tmp_path):
    cache = ResultCache(tmp_path)
    cache.put({"task_id": "t1", "lease_token": "l1", "status": "completed"}, now=1.0)
    (tmp_path / ".tmp-abc123.json").write_text('{"task_id": "t2"')  # killed before rename

    reopened = ResultCache(tmp_path)  # the worker starts again

    assert sorted(p.name for p in tmp_path.iterdir()) == ["t1.l1.json"]
    assert [entry["task_id"] for _, entry in reopened.entries()] == ["t1"]
