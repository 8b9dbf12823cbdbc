"""The audit trail's storage operations, on both backends (the fixtures of
test_contract.py): a record written and read back as written, one record per key
whoever writes it, newest-first pages, and deletion past retention by the reaper."""

from __future__ import annotations

import threading

from dispatcher.storage import AuditEntry
from tests.storage.test_contract import T0, config, storage  # noqa: F401 (fixtures)

DAY = 86_400.0


def entry(action: str = "task.cancel", target: str = "task t1", **more) -> AuditEntry:
    return AuditEntry("alice", "admin", action, target, **more)


def test_a_record_is_read_back_as_written(storage):  # noqa: F811
    written = entry(request_id="req-1", client="10.0.0.7", detail={"count": 3, "ids": ["a"]})
    assert storage.record_audit(written, now=T0) is True
    assert storage.audit_records(limit=10, offset=0) == [
        {
            "id": storage.audit_records(1, 0)[0]["id"],
            "at": T0,
            "name": "alice",
            "role": "admin",
            "action": "task.cancel",
            "target": "task t1",
            "request_id": "req-1",
            "client": "10.0.0.7",
            "detail": {"count": 3, "ids": ["a"]},
        }
    ]
    storage.record_audit(entry("task.retry"), now=T0 + 1)  # no request, no detail
    newest = storage.audit_records(limit=1, offset=0)[0]
    assert (newest["request_id"], newest["client"], newest["detail"]) == (None, None, None)


def test_a_key_is_written_once_whoever_writes_it(storage):  # noqa: F811
    reload = AuditEntry("system", "admin", "tokens.reload", "tokens file")
    assert storage.record_audit(reload, now=T0, key="tokens:abc") is True
    assert storage.record_audit(reload, now=T0 + 1, key="tokens:abc") is False
    assert storage.record_audit(reload, now=T0 + 2, key="tokens:def") is True
    assert storage.record_audit(entry(), now=T0 + 3) is True  # without a key: each one
    assert storage.record_audit(entry(), now=T0 + 3) is True
    actions = [r["action"] for r in storage.audit_records(10, 0)]
    assert actions == ["task.cancel", "task.cancel", "tokens.reload", "tokens.reload"]


def test_processes_racing_on_one_key_write_one_record(storage):  # noqa: F811
    start = threading.Barrier(8)
    written = []

    def write():
        start.wait()
        reload = AuditEntry("system", "admin", "tokens.reload", "tokens file")
        written.append(storage.record_audit(reload, now=T0, key="tokens:same"))

    threads = [threading.Thread(target=write) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(written) == [False] * 7 + [True]
    assert len(storage.audit_records(10, 0)) == 1


def test_records_are_paged_newest_first(storage):  # noqa: F811
    for i in range(7):
        # the clock may go back (another dispatcher's): the order is the order written
        storage.record_audit(entry(target=f"task {i}"), now=T0 + (i % 3))
    pages = [storage.audit_records(limit=3, offset=o) for o in (0, 3, 6, 9)]
    assert [[r["target"] for r in page] for page in pages] == [
        ["task 6", "task 5", "task 4"],
        ["task 3", "task 2", "task 1"],
        ["task 0"],
        [],
    ]
    ids = [r["id"] for page in pages for r in page]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 7


def test_the_reaper_deletes_records_past_retention(storage):  # noqa: F811
    storage.record_audit(entry(target="task old"), now=T0)
    storage.record_audit(entry(target="task new"), now=T0 + 10 * DAY)
    kept = storage.reap(now=T0 + 90 * DAY, dead_after=60, retention_s=0)  # 90 days: default
    assert kept.audit_deleted == 0
    report = storage.reap(now=T0 + 90 * DAY + 1, dead_after=60, retention_s=0)
    assert report.audit_deleted == 1
    assert [r["target"] for r in storage.audit_records(10, 0)] == ["task new"]
    report = storage.reap(
        now=T0 + 10 * DAY + 31, dead_after=60, retention_s=0, audit_retention_s=30
    )
    assert report.audit_deleted == 1 and storage.audit_records(10, 0) == []
    # ids are never given again, even once the newest record is gone
    storage.record_audit(entry(target="task later"), now=T0 + 11 * DAY)
    [later] = storage.audit_records(10, 0)
    assert later["id"] > 2


def test_a_backlog_past_retention_goes_in_batches(storage, monkeypatch):  # noqa: F811
    monkeypatch.setattr("dispatcher.storage.audit.DELETE_BATCH", 4)
    for i in range(10):
        storage.record_audit(entry(target=f"task {i}"), now=T0 + i)
    report = storage.reap(now=T0 + 100, dead_after=60, retention_s=0, audit_retention_s=91.5)
    assert report.audit_deleted == 9  # at T0 .. T0 + 8: three transactions
    assert [r["target"] for r in storage.audit_records(10, 0)] == ["task 9"]


def test_text_a_database_cannot_hold_is_kept_readable(storage):  # noqa: F811
    odd = AuditEntry("bob\x00", "admin", "tasks.bulk_cancel", "tasks q=\x00", detail={"q": "\x00"})
    assert storage.record_audit(odd, now=T0, key="k\x00")
    [r] = storage.audit_records(1, 0)
    assert r["name"].startswith("bob") and r["detail"] == {"q": "\x00"}


def test_a_shared_secret_is_made_once_and_read_back(storage):  # noqa: F811
    first = storage.shared_secret("dashboard-session")
    assert len(first) == 32
    assert storage.shared_secret("dashboard-session") == first  # read, not made again
    assert storage.shared_secret("another") != first
