"""The Audit page in headless Chromium, against a real dispatcher started with a
SCHEDULES_FILE: the schedule the file made (by the system, no request), a cancel and
a queue setting made through the API (with the request id the client sent), and a
cancel clicked on the dashboard, newest first, reached from the nav; the request id
shown is the one GET /audit gives. A screenshot is saved (audit.png in the test's
tmp_path); docs/img/dashboard-audit.png comes from test_screenshots.py."""

from __future__ import annotations

import json

import pytest
import requests
from browser_harness import page_text, save_screenshot
from selenium.webdriver.common.by import By

from tests.browser.test_dashboard import click, wait_text

pytestmark = pytest.mark.browser

SCHEDULE = {
    "name": "nightly-report",
    "cron": "0 3 * * *",
    "task": {"type": "primes", "payload": {"limit": 1000}},
}


def test_the_audit_page_shows_who_changed_what(browser, make_dispatcher, tmp_path):
    schedules = tmp_path / "schedules.json"
    schedules.write_text(json.dumps({"schedules": [SCHEDULE]}))
    dispatcher = make_dispatcher(SCHEDULES_FILE=str(schedules))
    by_api = dispatcher.submit("sleep", {"duration": 60}, queue="nobody-serves")
    cancelled = requests.post(
        f"{dispatcher.url}/task/{by_api}/cancel",
        headers={"X-Request-ID": "ops-ticket-4711"},
        timeout=10,
    )
    assert cancelled.status_code == 200, cancelled.text
    dispatcher.client.call("PUT", "/queues/emails", {"paused": True, "max_in_flight": 4})
    by_page = dispatcher.submit("sleep", {"duration": 60}, queue="nobody-serves")
    browser.get(f"{dispatcher.url}/dashboard/task/{by_page}")
    click(browser, "#cancel")
    wait_text(browser, "task cancelled")

    browser.find_element(By.LINK_TEXT, "Audit").click()
    wait_text(browser, "schedule nightly-report")
    assert browser.find_element(By.CSS_SELECTOR, "nav a.here").text == "Audit"
    rows = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "table.audit tbody tr")]
    assert len(rows) == 4, rows
    newest, queue, api_cancel, from_file = rows
    assert "task.cancel" in newest and by_page[:8] in newest and 'via: "dashboard"' in newest
    assert "queue.update" in queue and "queue emails" in queue and "max_in_flight: 4" in queue
    assert (
        "ops-ticket-4711" in api_cancel and "127.0.0.1" in api_cancel and "anonymous" in api_cancel
    )
    assert "system" in from_file and "schedule.create" in from_file and "0 3 * * *" in from_file
    # the page shows what GET /audit gives
    records = dispatcher.client.call("GET", "/audit")["records"]
    assert [r["action"] for r in records] == [
        "task.cancel",
        "queue.update",
        "task.cancel",
        "schedule.create",
    ]
    assert records[0]["request_id"] in newest
    assert records[3]["request_id"] is None and records[3]["client"] is None
    # the task link opens the task
    browser.find_element(By.CSS_SELECTOR, f'a[title="{by_page}"]').click()
    wait_text(browser, by_page)
    assert "cancelled" in page_text(browser)

    browser.get(f"{dispatcher.url}/dashboard/audit")
    wait_text(browser, "schedule nightly-report")
    save_screenshot(browser, tmp_path, "audit")
