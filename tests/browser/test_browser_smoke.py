"""The browser chain works: Chromium, chromedriver and selenium against a real dispatcher."""

from __future__ import annotations

import pytest
from browser_harness import WINDOW, page_text, save_screenshot

pytestmark = pytest.mark.browser


def test_the_browser_shows_the_dispatchers_health(browser, dispatcher, tmp_path):
    browser.get(dispatcher.url + "/health")
    text = page_text(browser)
    assert "ok" in text
    assert '"status":"ok"' in text  # Chromium shows the JSON as it came
    assert browser.get_window_size() == {"width": WINDOW[0], "height": WINDOW[1]}
    shot = save_screenshot(browser, tmp_path / "shots", "health page")
    assert shot == tmp_path / "shots" / "health_page.png"
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
