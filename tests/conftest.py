"""Shared fixtures: every test sees only the settings it makes itself."""

from __future__ import annotations

from dataclasses import fields

import pytest

from common.config import Config


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for f in fields(Config):  # nothing inherited from the shell, .env or CI
        monkeypatch.delenv(f.name.upper(), raising=False)
