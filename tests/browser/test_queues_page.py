"""The Queues page clicked through in headless Chromium, against a real dispatcher and a
real worker: pause (the worker leaves the queue's task alone), limits saved and a bad
one refused naming its field, resume (the task runs); the API agrees at each step.
A screenshot of the page is saved in the test's tmp_path (and, with
TASKQUEUE_SCREENSHOTS_DIR, there too)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests
from browser_harness import save_screenshot
from selenium.webdriver.common.by import By

from tests.browser.test_dashboard import click, wait_text

pytestmark = pytest.mark.browser


def row(browser, name: str):
    return browser.find_element(By.CSS_SELECTOR, f'tr[data-queue="{name}"]')


def settings(dispatcher, name: str) -> dict:
    [queue] = [q for q in dispatcher.client.call("GET", "/queues")["queues"] if q["name"] == name]
    return queue


def test_pause_limits_and_resume_from_the_queues_page(browser, dispatcher, tmp_path):
    double = {"operation": "double", "value": 21}
    dispatcher.submit("compute", double, queue="mail")
    browser.get(dispatcher.url + "/dashboard/queues")
    assert "Queues" in browser.find_element(By.CSS_SELECTOR, "nav a.here").text
    assert "active" in row(browser, "mail").text
    click(browser, 'tr[data-queue="mail"] button.pause')
    wait_text(browser, "queue paused")
    assert "paused" in row(browser, "mail").text
    assert settings(dispatcher, "mail")["paused"] is True

    # a worker of the queue is up, and the queue's task stays pending
    worker = dispatcher.start_worker("w-mail", "--queues", "mail,default")
    marker = dispatcher.submit("compute", double)
    dispatcher.wait_status(marker, "completed")
    held = dispatcher.submit("compute", double, queue="mail")
    assert dispatcher.task(held)["status"] == "pending"

    # limits: saved, then a bad one refused with the field it is about
    form = 'tr[data-queue="mail"] form.limits'
    for field, value in (("max_in_flight", "2"), ("rate_count", "10"), ("rate_seconds", "1.5")):
        box = browser.find_element(By.CSS_SELECTOR, f'{form} input[name="{field}"]')
        box.clear()
        box.send_keys(value)
    click(browser, f"{form} button.save")
    wait_text(browser, "limits saved")
    got = settings(dispatcher, "mail")
    assert (got["max_in_flight"], got["rate_limit"]) == (2, {"count": 10, "per_seconds": 1.5})
    shot = save_screenshot(browser, tmp_path, "dashboard-queues")
    if os.environ.get("TASKQUEUE_SCREENSHOTS_DIR"):
        save_screenshot(browser, Path(os.environ["TASKQUEUE_SCREENSHOTS_DIR"]), "dashboard-queues")
    assert shot.stat().st_size > 0
    box = browser.find_element(By.CSS_SELECTOR, f'{form} input[name="max_in_flight"]')
    box.clear()
    box.send_keys("0")
    click(browser, f"{form} button.save")
    wait_text(browser, "'max_in_flight' must be between 1 and")
    assert settings(dispatcher, "mail")["max_in_flight"] == 2  # nothing changed

    # resume: the worker's held poll gets the queue's tasks
    browser.get(dispatcher.url + "/dashboard/queues")
    click(browser, 'tr[data-queue="mail"] button.resume')
    wait_text(browser, "queue resumed")
    assert dispatcher.wait_status(held, "completed")["result"]["result"] == 42
    assert "active" in row(browser, "mail").text
    assert settings(dispatcher, "mail")["paused"] is False
    worker.close()


def test_a_post_to_the_queues_page_from_another_site_changes_nothing(browser, dispatcher):
    """The task page's rule: a form POST must come from this origin."""
    dispatcher.client.call("PUT", "/queues/mail", {"paused": True})
    answer = requests.post(
        dispatcher.url + "/dashboard/queues/mail",
        data={"action": "resume"},
        headers={"Origin": "https://evil.example"},
        timeout=10,
    )
    assert answer.status_code == 403, answer.status_code
    assert settings(dispatcher, "mail")["paused"] is True
