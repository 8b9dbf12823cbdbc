"""The dashboard in headless Chromium with a tokens file: a `read` token logs in and sees
the queues and the task pages without a button that changes something (and no Audit
link); the header names who is logged in. A screenshot of the Queues page is saved
(queues-read.png in the test's tmp_path)."""

from __future__ import annotations

import pytest
from browser_harness import page_text, save_screenshot
from selenium.webdriver.common.by import By

from common.client import Client
from tests.browser.test_dashboard import click, wait_text

pytestmark = pytest.mark.browser

READ = "rd-browser-0123456789"
ADMIN = "adm-browser-0123456789"


def test_a_read_token_sees_the_pages_without_their_buttons(browser, make_dispatcher, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"admin ops {ADMIN}\nread grafana {READ}\n")
    dispatcher = make_dispatcher(API_TOKENS_FILE=str(tokens))
    with Client(dispatcher.url, ADMIN) as admin:
        task = {"type": "sleep", "payload": {"duration": 60}, "queue": "nobody-serves"}
        task_id = admin.submit_task(task)
        admin.call("PUT", "/queues/nobody-serves", {"max_in_flight": 3})

    browser.delete_all_cookies()
    browser.get(dispatcher.url + "/dashboard/queues")
    browser.find_element(By.ID, "token").send_keys(READ)
    click(browser, "#login")
    wait_text(browser, "nobody-serves")
    assert browser.find_element(By.ID, "who").text == "grafana · read"
    assert "max in flight 3 · rate —" in page_text(browser)
    assert not browser.find_elements(By.CSS_SELECTOR, "main form, main button")
    assert "Audit" not in [a.text for a in browser.find_elements(By.CSS_SELECTOR, "nav a")]
    save_screenshot(browser, tmp_path, "queues-read")

    browser.get(f"{dispatcher.url}/dashboard/task/{task_id}")
    wait_text(browser, task_id)
    assert not browser.find_elements(By.CSS_SELECTOR, "#cancel, #retry")
    browser.get(f"{dispatcher.url}/dashboard/tasks?status=pending")
    wait_text(browser, task_id[:8])
    assert "Cancel every pending task" not in page_text(browser)
    click(browser, ".logout button")
