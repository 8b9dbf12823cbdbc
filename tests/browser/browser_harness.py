"""Headless Chromium for the browser tests: Debian's chromium and chromedriver
(scripts/install_browser.sh installs them), driven by selenium. No Selenium Manager and
no download: both paths are fixed. conftest.py starts one browser per test session."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WINDOW = (1280, 900)  # width, height in CSS pixels
PAGE_LOAD_TIMEOUT = 30  # seconds; selenium's default is 300
INSTALL_HINT = "run scripts/install_browser.sh (apt-get install chromium chromium-driver)"


def start_chromium() -> WebDriver:
    """A headless Chromium; pytest.fail (never a skip) when it is missing or will not
    start, with the command that installs it."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(f"no browser ({' and '.join(missing)} missing): {INSTALL_HINT}", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--no-sandbox",  # we run as root, where Chromium's sandbox refuses to start
        "--disable-dev-shm-usage",  # containers have a small /dev/shm
        "--disable-gpu",
    ):
        options.add_argument(arg)
    try:
        driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    except WebDriverException as exc:
        pytest.fail(f"Chromium did not start: {exc.msg}\n{INSTALL_HINT}", pytrace=False)
    driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT)
    return driver


def save_screenshot(browser: WebDriver, directory: Path, name: str) -> Path:
    """The visible page as `directory`/`name`.png (the directory is made if need be; a
    name is reduced to letters, digits, `-`, `_` and `.`); returns the file's path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (re.sub(r"[^\w.-]+", "_", name) + ".png")
    if not browser.save_screenshot(str(path)):
        pytest.fail(f"the browser could not save a screenshot to {path}")
    return path


def page_text(browser: WebDriver) -> str:
    """The text of the page the browser shows, as a user reads it."""
    return browser.find_element("tag name", "body").text
