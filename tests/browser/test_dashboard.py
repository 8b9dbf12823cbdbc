"""The dashboard clicked through in headless Chromium, against a real dispatcher and real
workers: a submitted task appears, opens, is cancelled; retry-every-failed after its
confirmation; the overview refreshes itself and pauses; login with a token (and a wrong
one refused); the session cookie's attributes."""

from __future__ import annotations

import pytest
import requests
from browser_harness import page_text
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.integration.harness import wait_for

pytestmark = pytest.mark.browser


def text_now(browser) -> str:
    """The page's visible text; empty while a click's navigation has no page yet (the
    element read may belong to the page being left: chromedriver then says "Node with
    given id does not belong to the document")."""
    try:
        return page_text(browser)
    except (NoSuchElementException, StaleElementReferenceException):
        return ""
    except WebDriverException as exc:
        if "does not belong to the document" in str(exc):
            return ""
        raise


def wait_text(browser, text: str, timeout: float = 15) -> str:
    """Until the page's visible text holds `text`; fail with what it shows."""
    return wait_for(
        lambda: text in (shown := text_now(browser)) and shown,
        timeout,
        lambda: f"{text!r} not on {browser.current_url}:\n{text_now(browser)[:2000]}",
    )


def click(browser, css: str) -> None:
    browser.find_element(By.CSS_SELECTOR, css).click()


def test_a_submitted_task_appears_opens_and_is_cancelled(browser, dispatcher):
    task_id = dispatcher.submit("sleep", {"duration": 1}, queue="nobody-serves")
    browser.get(dispatcher.url + "/dashboard/tasks")
    link = browser.find_element(By.CSS_SELECTOR, f'a[title="{task_id}"]')
    row = link.find_element(By.XPATH, "ancestor::tr").text
    assert "sleep" in row and "nobody-serves" in row and "pending" in row, row
    link.click()
    wait_text(browser, task_id)
    assert '"duration": 1' in page_text(browser)
    click(browser, "#cancel")
    wait_text(browser, "task cancelled")
    assert browser.find_element(By.CSS_SELECTOR, "h1 .badge").text == "cancelled"
    assert dispatcher.task(task_id)["status"] == "cancelled"  # the API agrees
    assert not browser.find_elements(By.CSS_SELECTOR, "#cancel")
    click(browser, "#retry")  # and back
    wait_text(browser, "task pending")
    assert dispatcher.task(task_id)["status"] == "pending"


def test_retry_every_failed_task_moves_them_back_to_pending(browser, dispatcher):
    failed = [
        dispatcher.submit("fail", {"error_message": f"boom {i}"}, max_retries=0, queue="q")
        for i in range(3)
    ]
    done = dispatcher.submit("compute", {"operation": "double", "value": 2}, queue="q")
    worker = dispatcher.start_worker("w-fail", "--queues", "q")
    for task_id in failed:
        assert dispatcher.wait_status(task_id, "failed")["error"].startswith("boom")
    dispatcher.wait_status(done, "completed")
    worker.close()  # kill -9: nothing runs them again before the test looks
    wait_for(  # and its held claim (at most WORKER_POLL_INTERVAL) has ended with it
        lambda: [w["status"] for w in dispatcher.client.workers()] == ["dead"],
        20,
        lambda: f"w-fail not dead: {dispatcher.client.workers()}",
    )

    browser.get(dispatcher.url + "/dashboard/tasks?status=failed")
    rows = browser.find_elements(By.CSS_SELECTOR, "table.tasks tbody tr")
    assert len(rows) == 3, [r.text for r in rows]
    click(browser, ".bulk button")
    wait_text(browser, "Retry 3 failed tasks?")
    click(browser, "#confirm")
    wait_text(browser, "3 failed tasks retried")
    assert {dispatcher.task(t)["status"] for t in failed} == {"pending"}
    assert dispatcher.task(done)["status"] == "completed"  # not failed: untouched


def live_text(browser, element_id: str) -> str:
    """An element of the overview's refreshing part (replaced every few seconds)."""
    for _ in range(10):
        try:
            return browser.find_element(By.ID, element_id).text
        except StaleElementReferenceException:
            continue
    raise AssertionError(f"#{element_id} kept being replaced")


def test_the_overview_refreshes_itself_until_paused(browser, dispatcher):
    browser.get(dispatcher.url + "/")
    assert live_text(browser, "count-pending") == "0"
    dispatcher.submit("sleep", {"duration": 1}, queue="later")
    WebDriverWait(browser, 20).until(
        lambda b: live_text(b, "count-pending") == "1",
        "the overview did not show the new pending task by itself",
    )
    assert "later" in live_text(browser, "live")
    click(browser, "#pause")
    assert browser.find_element(By.ID, "refresh-state").text == "paused"
    browser.refresh()  # remembered in this browser
    assert browser.find_element(By.ID, "refresh-state").text == "paused"
    click(browser, "#pause")
    assert browser.find_element(By.ID, "refresh-state").text.startswith("refreshing every")


def test_the_workers_page_shows_a_live_worker(browser, dispatcher):
    worker = dispatcher.start_worker("w-page", "--queues", "default,emails")
    dispatcher.wait_worker_alive(worker)
    task_id = dispatcher.submit("compute", {"operation": "double", "value": 2}, queue="emails")
    dispatcher.wait_status(task_id, "completed")  # it claimed: its queues are known

    def row() -> str:
        browser.get(dispatcher.url + "/dashboard/workers")
        return browser.find_element(By.XPATH, "//td[text()='w-page']/ancestor::tr").text

    shown = wait_for(
        lambda: "default, emails" in row() and row(), 15, lambda: f"the row shows {row()!r}"
    )
    assert "alive" in shown and " 1 " in f" {shown} ", shown  # concurrency 1, 1 completed


def test_with_a_token_the_dashboard_wants_a_login_and_refuses_a_wrong_token(
    browser, make_dispatcher
):
    token = "s3cret-dashboard-token"
    dispatcher = make_dispatcher(API_TOKEN=token)
    browser.get(dispatcher.url + "/dashboard/workers")
    assert "/login" in browser.current_url
    browser.find_element(By.ID, "token").send_keys("not the token")
    click(browser, "#login")
    wait_text(browser, "wrong token")
    assert browser.find_element(By.ID, "login-error").text == "wrong token"
    assert browser.get_cookie("taskqueue_session") is None
    browser.find_element(By.ID, "token").send_keys(token)
    click(browser, "#login")
    wait_text(browser, "Workers")
    assert browser.current_url.endswith("/dashboard/workers")  # where it was going
    cookie = browser.get_cookie("taskqueue_session")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict", cookie
    assert token not in browser.current_url and token not in browser.page_source
    assert token not in cookie["value"]
    # logged in, a state change works (its form carries the CSRF token)
    submitted = requests.post(
        dispatcher.url + "/submit-task",
        json={"type": "sleep", "payload": {"duration": 1}, "queue": "nobody-serves"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert submitted.status_code == 201, submitted.text
    task_id = submitted.json()["task_id"]
    browser.get(f"{dispatcher.url}/dashboard/task/{task_id}")
    click(browser, "#cancel")
    wait_text(browser, "task cancelled")
    click(browser, ".logout button")
    WebDriverWait(browser, 15).until(lambda b: "/login" in b.current_url, "not logged out")
    browser.get(dispatcher.url + "/")
    assert "/login" in browser.current_url
