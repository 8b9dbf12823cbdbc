"""Shared fixtures: every test sees only the settings it makes itself."""

from __future__ import annotations

from dataclasses import fields

import pytest

from common.config import Config


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for f in fields(Config):  # nothing inherited from the shell, .env or CI
        monkeypatch.delenv(f.name.upper(), raising=False)


# the tests that start real processes (dispatchers, workers, Chromium) and time them
PROCESS_DIRS = ("integration", "browser")


def pytest_collection_modifyitems(config, items):
    """With pytest-xdist (run_tests.sh: -n 2 --dist loadgroup), the tests that start real
    processes go to one worker, one after another, as if alone on the machine but for
    the other worker's in-process tests; those go file by file (a module's fixtures are
    made once)."""
    for item in items:
        parts = item.path.parts
        top = parts[parts.index("tests") + 1] if "tests" in parts else ""
        group = "processes" if top in PROCESS_DIRS else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))
