"""Imports go one way: the configuration knows no HTTP client, storage knows no HTTP.

Each check imports the modules in a fresh interpreter, so what the test process has
already imported cannot hide a wrong import.
"""

from __future__ import annotations

import json
import subprocess
import sys

from common.config import PROJECT_ROOT


def imported_after(modules: list[str], watched: list[str]) -> list[str]:
    """Which of `watched` are in sys.modules after importing `modules`."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps([w for w in {watched!r} if w in sys.modules]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


def test_the_configuration_does_not_import_the_client():
    assert imported_after(["common.config"], ["common.client"]) == []


def test_storage_imports_neither_flask_nor_werkzeug():
    backends = ["dispatcher.storage.sqlite", "dispatcher.storage.postgres"]
    assert imported_after(backends, ["flask", "werkzeug"]) == []


def test_validating_http_request_does_not_import_requests():
    """The dispatcher checks a real http_request's host without sending anything; only a
    worker running one imports requests (tasks/http_pinned.py)."""
    assert imported_after(["dispatcher.app", "tasks"], ["requests", "urllib3"]) == []
    assert imported_after(["tasks.http_pinned"], ["requests"]) == ["requests"]
