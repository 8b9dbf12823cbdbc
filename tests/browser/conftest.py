"""Fixtures of the browser tests: one headless Chromium for the whole test session
(browser_harness.py), and the real dispatcher, started by ./start_dispatcher.sh on a free
port with a fresh SQLite file (tests/integration/harness.py's Cluster).

    pytestmark = pytest.mark.browser

    def test_the_page(browser, dispatcher):
        dispatcher.submit("sleep", {"duration": 0})
        browser.get(dispatcher.url + "/tasks")
        assert "sleep" in page_text(browser)

The browser is shared: each test opens the pages it needs (every dispatcher has its own
port, so its own origin: nothing of one test's pages is seen by the next). When a test
fails, the page it showed is saved as `failure.png` in its tmp_path, named in the report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from browser_harness import save_screenshot, start_chromium
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.remote.webdriver import WebDriver

from tests.integration.harness import Cluster


@pytest.fixture(scope="session")
def browser() -> Iterator[WebDriver]:
    """Headless Chromium, 1280x900, started once per test session."""
    driver = start_chromium()
    yield driver
    driver.quit()


@pytest.fixture
def make_dispatcher(tmp_path) -> Iterator[Callable[..., Cluster]]:
    """make_dispatcher(**settings) -> a Cluster whose dispatcher is up (GET /health
    answers), with its own port and SQLite file under tmp_path; settings override the
    harness's short timings (make_dispatcher(API_TOKEN="t")). Stopped after the test."""
    made: list[Cluster] = []

    def make(**settings: str) -> Cluster:
        cluster = Cluster(tmp_path / f"dispatcher-{len(made)}", **settings)
        cluster.tmp.mkdir(parents=True)
        made.append(cluster)
        cluster.start_dispatcher()
        return cluster

    yield make
    for cluster in made:
        cluster.close()


@pytest.fixture
def dispatcher(make_dispatcher) -> Cluster:
    """A running dispatcher: `.url`, `.submit(type, payload)`, `.client`, `.start_worker(id)`."""
    return make_dispatcher()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed browser test's page, as a screenshot in its tmp_path."""
    report = yield
    browser, tmp_path = item.funcargs.get("browser"), item.funcargs.get("tmp_path")
    if report.when == "call" and report.failed and browser and tmp_path:
        try:
            where = f"the page at the failure: {save_screenshot(browser, tmp_path, 'failure')}"
        except (WebDriverException, pytest.fail.Exception) as exc:
            where = f"no screenshot of the failure: {exc}"
        report.sections.append(("browser", where))
    return report
