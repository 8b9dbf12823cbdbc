"""Screenshots of every dashboard page, from a seeded database: a busy last hour in four
queues, a task that failed three times, workers alive and dead, a day of audit records.
They are taken in every run (into the test's tmp_path) and checked for what each page
must show; with TASKQUEUE_SCREENSHOTS_DIR set (docs/img) they are written there too, for
docs/DASHBOARD.md and the README:

    TASKQUEUE_SCREENSHOTS_DIR=docs/img ./run_tests.sh tests/browser/test_screenshots.py
"""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path

import pytest
from browser_harness import page_text, save_screenshot
from selenium.webdriver.common.by import By

from common.config import Config
from dispatcher.storage import AuditEntry, NewTask, Result, open_storage

pytestmark = pytest.mark.browser

QUEUES = {"default": "compute", "emails": "sleep", "reports": "primes", "images": "sleep"}
TRACEBACK = """Traceback (most recent call last):
  File "tasks/reports.py", line 42, in run
    totals = fetch_totals(payload["account"])
  File "tasks/reports.py", line 17, in fetch_totals
    raise ConnectionError("ledger service refused the connection")
ConnectionError: ledger service refused the connection"""


def payload_of(type_: str, i: int) -> dict:
    if type_ == "compute":
        return {"operation": "fibonacci", "value": 20 + i % 50}
    if type_ == "primes":
        return {"limit": 10_000 * (1 + i % 20)}
    return {"duration": round(0.1 + (i % 7) / 10, 1)}


def seed(db_url: str, now: float) -> str:
    """The last hour of a small system; returns the id of the task that failed thrice."""
    rng = random.Random(16)
    storage = open_storage(Config(database_url=db_url))
    try:
        for minute in range(60, 0, -1):
            at = now - minute * 60
            for queue, type_ in QUEUES.items():
                n = rng.randint(2, 9) if queue != "images" else rng.randint(0, 3)
                tasks = [NewTask(type_, payload_of(type_, i), queue=queue) for i in range(n)]
                storage.submit(tasks, now=at)
                worker = rng.choice(["worker-alpha", "worker-beta"])
                claimed = storage.claim(worker, worker, (queue,), n, now=at + 1, lease_s=300)
                storage.finish(
                    [
                        Result(c["task_id"], c["lease_token"], worker, "failed", error="timeout")
                        if rng.random() < 0.08
                        else Result(c["task_id"], c["lease_token"], worker, "completed", result=1)
                        for c in claimed
                    ],
                    now=at + rng.uniform(2, 50),
                )
        # one report that failed on every attempt: the Task page's timeline
        [(failing, _)] = storage.submit(
            [NewTask("primes", {"limit": 5000}, queue="reports", max_retries=2)], now=now - 400
        )
        for attempt, worker in enumerate(["worker-alpha", "worker-beta", "worker-alpha"]):
            at = now - 390 + attempt * 60
            [c] = storage.claim(worker, worker, ("reports",), 1, now=at, lease_s=300)
            error = TRACEBACK if attempt == 2 else "ConnectionError: ledger service refused"
            storage.finish(
                [Result(failing, c["lease_token"], worker, "failed", error=error)], at + 3
            )
        # what waits now: pending work in three queues, some of it for a while
        for queue, count, age in (("emails", 40, 95), ("reports", 12, 30), ("default", 6, 4)):
            type_ = QUEUES[queue]
            storage.submit(
                [NewTask(type_, payload_of(type_, i), queue=queue) for i in range(count)],
                now=now - age,
            )
        storage.heartbeat("worker-beta", "worker-beta", [], now=now - 900, lease_s=1, concurrency=4)
        seed_schedules(storage, now)
        seed_audit(storage, now, failing)
        return failing
    finally:
        storage.close()


def seed_schedules(storage, now: float) -> None:
    """Three schedules: one that fired at the hour, one paused, one whose type is gone."""

    def definition(task: dict, cron=None, every=None, zone="UTC") -> dict:
        return {"cron": cron, "every": every, "timezone": zone, "catch_up": "one", "task": task}

    hourly = now - now % 3600
    digest = {"type": "sleep", "payload": {"duration": 1}, "queue": "emails"}
    hourly_digest = definition(digest, every=3600)
    storage.create_schedule("email-digest", hourly_digest, True, hourly, now - 7200)
    storage.fire_schedule(
        "email-digest", hourly, now - 7200, hourly + 3600, [(hourly, NewTask("sleep", {}))], hourly
    )
    report = {"type": "primes", "payload": {"limit": 5000}, "queue": "reports"}
    nightly = definition(report, cron="0 3 * * *", zone="Europe/Berlin")
    storage.create_schedule("nightly-report", nightly, False, None, now - 86_400)
    words = {"type": "wordcount", "payload": {"text": "to be or not to be"}}
    every_5 = definition(words, cron="*/5 * * * *")
    tick = now - now % 300
    storage.create_schedule("word-count", every_5, True, tick, now - 600)
    error = "task: unknown task type 'wordcount'; known types: compute, fail, http_request, ..."
    storage.fire_schedule("word-count", tick, now - 600, tick + 300, [], tick, error=error)


def seed_audit(storage, now: float, failing: str) -> None:
    """A day of changes: the system's at start, an operator's and a script's since."""
    path = "/etc/taskqueue/schedules.json"
    changes = [
        (86_000, "system", "schedule.create", "schedule nightly-report", None, None,
         {"file": path, "cron": "0 3 * * *", "timezone": "Europe/Berlin", "enabled": True}),
        (85_990, "system", "schedule.create", "schedule email-digest", None, None,
         {"file": path, "every": 3600, "timezone": "UTC", "enabled": True}),
        (40_000, "alice", "schedule.update", "schedule nightly-report", "9c1e0f3a5b7d4e21",
         "10.20.0.14", {"enabled": False, "via": "dashboard"}),
        (7_200, "deploy-bot", "queue.update", "queue emails", "deploy-2291", "10.20.3.7",
         {"max_in_flight": 20, "rate_limit": {"count": 100, "per_seconds": 60}}),
        (1_800, "alice", "tasks.bulk_retry", "failed tasks queue='reports'", "5f0a8e2c71d94b6a",
         "10.20.0.14", {"count": 7, "status": "failed", "queue": "reports", "via": "dashboard"}),
        (900, "alice", "queue.update", "queue images", "b3d47c9e02a1f865", "10.20.0.14",
         {"paused": True, "via": "dashboard"}),
        (600, "ops-cli", "task.cancel", "task 01a31f5e8c0047d2a1b0c9e7d6f5a4b3", "ops-4711",
         "10.20.1.2", None),
        (120, "alice", "task.retry", f"task {failing}", "e81f2a9c4b6d3075", "10.20.0.14",
         {"via": "dashboard"}),
    ]  # fmt: skip
    roles = {"system": "admin", "alice": "admin", "deploy-bot": "admin", "ops-cli": "admin"}
    for ago_s, name, action, target, request_id, client, detail in changes:
        entry = AuditEntry(name, roles[name], action, target, request_id, client, detail)
        storage.record_audit(entry, now=now - ago_s)


def full_page(browser, take) -> None:
    """`take` a screenshot with the window as tall as the page (at most 2,000 px)."""
    width, height = browser.get_window_size().values()
    tall = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(width, min(2000, max(height, tall + 100)))
    try:
        take()
    finally:
        browser.set_window_size(width, height)


def test_screenshots_of_every_page(browser, tmp_path, make_dispatcher):
    db = tmp_path / "seeded.db"
    failing = seed(f"sqlite:///{db}", time.time())
    dispatcher = make_dispatcher(DATABASE_URL=f"sqlite:///{db}", WORKER_DEAD_AFTER="60")
    long = [dispatcher.submit("sleep", {"duration": 60}, queue="images") for _ in range(2)]
    worker = dispatcher.start_worker("worker-gamma", "--queues", "images", "--concurrency", "2")
    dispatcher.wait_worker_alive(worker)
    for task_id in long:  # running while the pictures are taken
        dispatcher.wait_status(task_id, "in_progress")
    shots = tmp_path / "shots"
    pages = {
        "overview": ("/", ["emails", "Throughput, last hour", "completed"]),
        "tasks": ("/dashboard/tasks?queue=reports", ["Retry every failed task", "pending"]),
        "task": (f"/dashboard/task/{failing}", ["ConnectionError", "attempt 3", "Retry"]),
        "workers": ("/dashboard/workers", ["worker-gamma", "alive", "dead"]),
        "schedules": ("/dashboard/schedules", ["email-digest", "paused", "unknown task type"]),
        "audit": ("/dashboard/audit", ["tasks.bulk_retry", "deploy-2291", "system"]),
    }
    for name, (path, must_show) in pages.items():
        browser.get(dispatcher.url + path)
        text = page_text(browser)
        missing = [words for words in must_show if words not in text]
        assert not missing, f"{name} lacks {missing}:\n{text[:1500]}"
        full_page(browser, lambda name=name: save_screenshot(browser, shots, name))
    browser.get(dispatcher.url + "/")
    bars = browser.find_elements(By.CSS_SELECTOR, ".chart rect.done")
    assert len(bars) >= 55, f"{len(bars)} minutes with completed tasks in the chart"
    target = os.environ.get("TASKQUEUE_SCREENSHOTS_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for png in shots.glob("*.png"):
            shutil.copy(png, Path(target) / f"dashboard-{png.name}")
