"""A task's dependencies on its dashboard page, in headless Chromium against a real
dispatcher: a chain of three (no worker runs them), the middle task's page lists what it
depends on and what depends on it, each with its status and a link; cancelling the first
from its page cancels the rest, and the middle page then says why. The page is saved as
`task-dependencies.png` in the test's tmp_path (TASKQUEUE_SCREENSHOTS_DIR: there too)."""

from __future__ import annotations

import os

import pytest
from browser_harness import page_text, save_screenshot
from selenium.webdriver.common.by import By

from tests.browser.test_dashboard import click, wait_text

pytestmark = pytest.mark.browser


def test_the_task_page_shows_dependencies_and_dependents(browser, dispatcher, tmp_path):
    task = {"type": "sleep", "payload": {"duration": 1}, "queue": "nobody-serves"}
    first, middle, last = dispatcher.client.submit_tasks(
        [task, {**task, "depends_on": ["#0"]}, {**task, "depends_on": ["#1"]}]
    )
    browser.get(f"{dispatcher.url}/dashboard/task/{middle}")
    wait_text(browser, "Depends on")
    assert browser.find_element(By.CSS_SELECTOR, "h1 .badge").text == "waiting"
    [up] = browser.find_elements(By.CSS_SELECTOR, "#depends-on li")
    [down] = browser.find_elements(By.CSS_SELECTOR, "#dependents li")
    assert first in up.text and "pending" in up.text, up.text
    assert last in down.text and "waiting" in down.text, down.text
    assert "It runs once every one of these has completed." in page_text(browser)
    for directory in filter(None, [tmp_path, os.environ.get("TASKQUEUE_SCREENSHOTS_DIR")]):
        save_screenshot(browser, directory, "task-dependencies")

    browser.get(f"{dispatcher.url}/")  # the overview counts them
    wait_text(browser, "waiting")
    assert browser.find_element(By.ID, "count-waiting").text == "2"
    for directory in filter(None, [tmp_path, os.environ.get("TASKQUEUE_SCREENSHOTS_DIR")]):
        save_screenshot(browser, directory, "overview-waiting")
    browser.get(f"{dispatcher.url}/dashboard/task/{middle}")
    [up] = browser.find_elements(By.CSS_SELECTOR, "#depends-on li")
    up.find_element(By.TAG_NAME, "a").click()  # to the first task's page
    wait_text(browser, "Dependents")
    assert browser.find_element(By.CSS_SELECTOR, "h1 code").text == first
    click(browser, "#cancel")
    wait_text(browser, "task cancelled")
    [down] = browser.find_elements(By.CSS_SELECTOR, "#dependents li")
    assert middle in down.text and "cancelled" in down.text, down.text

    down.find_element(By.TAG_NAME, "a").click()
    wait_text(browser, f"dependency {first} was cancelled")
    assert browser.find_element(By.CSS_SELECTOR, "h1 .badge").text == "cancelled"
    assert dispatcher.task(last)["error"] == f"dependency {middle} was cancelled"
