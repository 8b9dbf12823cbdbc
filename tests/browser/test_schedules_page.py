"""The Schedules page in headless Chromium, against a real dispatcher: reached from the
nav, each schedule's timing, time zone, next and last run (a link to the task its last
tick made), a broken template's error, Pause and Resume (CSRF-checked POSTs) agreeing
with the API; a screenshot of it is saved (schedules.png in the test's tmp_path)."""

from __future__ import annotations

import shutil

import pytest
from browser_harness import page_text, save_screenshot
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.common.by import By

from tests.integration.harness import wait_for

pytestmark = pytest.mark.browser

SLEEP = {"type": "sleep", "payload": {"duration": 0}, "queue": "ticks"}


def text_now(browser) -> str:
    """The page's visible text; empty while a click's navigation has no page yet."""
    try:
        return page_text(browser)
    except (NoSuchElementException, StaleElementReferenceException):
        return ""
    except WebDriverException as exc:  # the body read while a navigation replaces it
        if "does not belong to the document" in str(exc):
            return ""
        raise


def wait_text(browser, text: str, timeout: float = 15) -> None:
    wait_for(
        lambda: text in text_now(browser),
        timeout,
        lambda: f"{text!r} not on {browser.current_url}:\n{text_now(browser)[:2000]}",
    )


def test_the_schedules_page_shows_them_and_pauses_and_resumes(browser, make_dispatcher, tmp_path):
    cluster = make_dispatcher(TASK_MODULES="examples.wordcount")
    client = cluster.client
    words = {"type": "wordcount", "payload": {"text": "to be or not"}}
    client.create_schedule({"name": "word-count", "every": 1, "task": words})
    client.create_schedule({"name": "heartbeat", "every": 1, "task": SLEEP})
    client.create_schedule(
        {
            "name": "nightly-report",
            "cron": "0 3 * * *",
            "timezone": "Europe/Berlin",
            "task": {"type": "primes", "payload": {"limit": 1000}},
            "enabled": False,
        }
    )
    wait_for(lambda: client.schedule("word-count")["last_task_id"], 30, cluster.logs)
    # restarted without the module word-count's task type comes from
    cluster.procs[0].close()
    cluster.start_dispatcher("restarted", TASK_MODULES="")
    wait_for(lambda: client.schedule("word-count")["error"], 30, cluster.logs)
    wait_for(lambda: client.schedule("heartbeat")["last_task_id"], 30, cluster.logs)

    browser.get(cluster.url + "/")
    browser.find_element(By.LINK_TEXT, "Schedules").click()
    wait_text(browser, "nightly-report")
    assert browser.find_element(By.CSS_SELECTOR, "nav a.here").text == "Schedules"
    row = browser.find_element(By.ID, "schedule-nightly-report").text
    assert "0 3 * * *" in row and "Europe/Berlin" in row and "paused" in row and "never" in row
    row = browser.find_element(By.ID, "schedule-word-count").text
    assert "unknown task type 'wordcount'" in row and "every 1 s" in row, row
    beat = browser.find_element(By.ID, "schedule-heartbeat")
    assert "every 1 s" in beat.text and "sleep (ticks)" in beat.text, beat.text
    shot = save_screenshot(browser, tmp_path, "schedules")
    shutil.copy(shot, "/tmp/schedules-page.png")

    # pause, and the API agrees; resume
    beat.find_element(By.CSS_SELECTOR, "button.pause").click()
    wait_text(browser, "schedule heartbeat paused")
    assert client.schedule("heartbeat")["enabled"] is False
    browser.find_element(By.CSS_SELECTOR, "#schedule-heartbeat button.resume").click()
    wait_text(browser, "schedule heartbeat resumed")
    assert client.schedule("heartbeat")["enabled"] is True

    # the last run's link opens the task, which names its schedule and tick
    last = client.schedule("word-count")["last_task_id"]
    browser.find_element(By.CSS_SELECTOR, f'#schedule-word-count a[title="{last}"]').click()
    wait_text(browser, last)
    assert browser.find_element(By.ID, "schedule").text.startswith("word-count, tick ")
