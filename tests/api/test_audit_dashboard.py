"""The dashboard's changes in the audit trail, through Flask's test client on a real
SQLite file: a task's Cancel and Retry, a bulk action (one record however many tasks it
moves), the queue and schedule controls — each one record, none when refused — and the
Audit page that shows them, newest first, a page at a time."""

from __future__ import annotations

import re

from dispatcher.dashboard import audit_page
from dispatcher.storage import AuditEntry, NewTask, Result
from tests.api.test_dashboard_http import ORIGIN, make_app, now_of, storage_of  # noqa: F401
from tests.storage.test_schedule_contract import DEFINITION


def audit_of(app) -> list[dict]:
    return storage_of(app).audit_records(100, 0)


def submit(app, n: int = 1, **options) -> list[str]:
    tasks = [NewTask("sleep", {"duration": 1}, **options) for _ in range(n)]
    return [task_id for task_id, _ in storage_of(app).submit(tasks, now=now_of(app))]


def test_a_bulk_action_writes_one_record_for_all_it_moved(make_app):  # noqa: F811
    app = make_app()
    ids = submit(app, 3, queue="a") + submit(app, 1, queue="b")
    client = app.test_client()
    form = {"action": "cancel", "queue": "a", "type": "sleep"}
    client.post("/dashboard/tasks/bulk", data=form, headers=ORIGIN)  # asks: no change
    assert audit_of(app) == []
    done = client.post("/dashboard/tasks/bulk", data=form | {"confirm": "yes"}, headers=ORIGIN)
    assert done.status_code == 302
    [record] = audit_of(app)
    assert (record["action"], record["target"]) == (
        "tasks.bulk_cancel",
        "pending tasks queue='a' type='sleep'",
    )
    assert record["detail"] == {
        "count": 3,
        "status": "pending",
        "queue": "a",
        "type": "sleep",
        "worker": None,
        "text": None,
        "via": "dashboard",
    }
    assert (record["name"], record["role"], record["client"]) == ("anonymous", "admin", "127.0.0.1")
    assert record["request_id"]
    # a bulk retry of the failed tasks: one more record
    failed = fail(app, 2)
    retry = {"action": "retry", "confirm": "yes"}
    client.post("/dashboard/tasks/bulk", data=retry, headers=ORIGIN)
    newest = audit_of(app)[0]
    assert (newest["action"], newest["target"]) == ("tasks.bulk_retry", "failed tasks")
    assert newest["detail"]["count"] == 2
    statuses = [storage_of(app).get(t)["status"] for t in ids + failed]
    assert statuses == ["cancelled"] * 3 + ["pending"] * 3
    # refused bulk actions (a bad action, a status it does not apply to): no record
    client.post("/dashboard/tasks/bulk", data={"action": "delete"}, headers=ORIGIN)
    refused = {"action": "retry", "status": "cancelled", "confirm": "yes"}
    assert client.post("/dashboard/tasks/bulk", data=refused, headers=ORIGIN).status_code == 400
    assert len(audit_of(app)) == 2


def fail(app, n: int) -> list[str]:
    """n tasks failed for good (no retries), by worker w1."""
    storage = storage_of(app)
    ids = submit(app, n, queue="f", max_retries=0)
    claimed = storage.claim("w1", "i1", ("f",), n, now=now_of(app), lease_s=60)
    results = [Result(c["task_id"], c["lease_token"], "w1", "failed", error="x") for c in claimed]
    storage.finish(results, now=now_of(app))
    return ids


def test_a_task_s_buttons_write_a_record_each_and_none_when_refused(make_app):  # noqa: F811
    app = make_app()
    [task_id] = submit(app)
    client = app.test_client()
    assert client.post(f"/dashboard/task/{task_id}/retry", headers=ORIGIN).status_code == 302
    assert audit_of(app) == []  # refused: a pending task is not retried
    client.post(f"/dashboard/task/{task_id}/cancel", headers=ORIGIN)
    client.post(f"/dashboard/task/{task_id}/cancel", headers=ORIGIN)  # refused: cancelled
    client.post(f"/dashboard/task/{task_id}/retry", headers=ORIGIN)
    client.post("/dashboard/task/nope/cancel", headers=ORIGIN)  # 404
    found = [(r["action"], r["target"], r["detail"]) for r in audit_of(app)]
    assert found == [
        ("task.retry", f"task {task_id}", {"via": "dashboard"}),
        ("task.cancel", f"task {task_id}", {"via": "dashboard"}),
    ]


def test_the_queue_and_schedule_controls_write_a_record_each(make_app):  # noqa: F811
    app = make_app()
    storage_of(app).create_schedule("nightly", DEFINITION, True, now_of(app) + 60, now_of(app))
    client = app.test_client()
    client.post("/dashboard/queues/emails", data={"action": "pause"}, headers=ORIGIN)
    limits = {"action": "limits", "max_in_flight": "3", "rate_count": "", "rate_seconds": ""}
    client.post("/dashboard/queues/emails", data=limits, headers=ORIGIN)
    bad = {"action": "limits", "max_in_flight": "-1"}
    assert client.post("/dashboard/queues/emails", data=bad, headers=ORIGIN).status_code == 400
    client.post("/dashboard/schedules/nightly/pause", headers=ORIGIN)
    assert client.post("/dashboard/schedules/nope/pause", headers=ORIGIN).status_code == 404
    found = [(r["action"], r["target"], r["detail"]) for r in audit_of(app)]
    assert found == [
        ("schedule.update", "schedule nightly", {"enabled": False, "via": "dashboard"}),
        (
            "queue.update",
            "queue emails",
            {"max_in_flight": 3, "rate_limit": None, "via": "dashboard"},
        ),
        ("queue.update", "queue emails", {"paused": True, "via": "dashboard"}),
    ]


def test_the_audit_page_shows_records_newest_first_a_page_at_a_time(make_app, monkeypatch):  # noqa: F811
    monkeypatch.setattr(audit_page, "PAGE_SIZE", 3)
    app = make_app()
    storage = storage_of(app)
    client = app.test_client()
    assert "No changes recorded yet." in client.get("/dashboard/audit").text
    [task_id] = submit(app)
    odd = {"q": "<script>x</script>", "none": None, "count": 2}
    storage.record_audit(
        AuditEntry("bob", "submit", "tasks.bulk_cancel", "pending tasks", "r-1", "10.0.0.9", odd),
        now=now_of(app) - 120,
    )
    for i in range(5):
        storage.record_audit(
            AuditEntry("alice", "admin", "queue.update", f"queue q{i}"), now_of(app)
        )
    client.post(f"/dashboard/task/{task_id}/cancel", headers=ORIGIN)

    page = client.get("/dashboard/audit")
    assert page.status_code == 200 and page.mimetype == "text/html"
    text = page.text
    assert 'class="here">Audit<' in text  # the nav link, marked
    rows = re.findall(r'<tr id="audit-(\d+)">', text)
    assert len(rows) == 3 and rows == sorted(rows, key=int, reverse=True)
    assert f'href="/dashboard/task/{task_id}"' in text and "task.cancel" in text
    assert "count: 2" not in text and "queue q4" in text and "queue q3" in text
    assert 'id="older"' in text and 'id="newer"' not in text and 'id="newest"' not in text

    second = client.get("/dashboard/audit?offset=3").text
    assert "queue q2" in second and "queue q0" in second and 'id="newest"' in second
    last = client.get("/dashboard/audit?offset=6").text
    assert 'id="newer"' in last and 'id="older"' not in last
    assert "<b>bob</b>" in last and "10.0.0.9" in last and "<code>r-1</code>" in last
    # the detail in words, escaped; nulls left out
    assert "q: &#34;&lt;script&gt;x&lt;/script&gt;&#34; · count: 2" in last
    assert "none:" not in last
    assert "No older records." in client.get("/dashboard/audit?offset=99").text
    for bad in ("-1", "x", "1.5"):
        answer = client.get(f"/dashboard/audit?offset={bad}")
        assert answer.status_code == 400 and answer.mimetype == "text/html", bad
