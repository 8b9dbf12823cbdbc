"""schedules.py's arguments, and monitor.py's line about periodic tasks (the CLIs against
a real dispatcher: tests/integration/test_schedules.py)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

import monitor
import schedules


def test_add_takes_exactly_one_of_cron_and_every_and_a_json_object_payload(capsys):
    args = schedules.parse_args(["add", "n", "--every", "5", "--type", "sleep"])
    assert (args.every, args.cron, args.payload) == (5, None, {})
    for bad in (
        ["add", "n", "--type", "sleep"],
        ["add", "n", "--every", "5", "--cron", "* * * * *", "--type", "sleep"],
        ["add", "n", "--every", "0", "--type", "sleep"],
        ["add", "n", "--every", "5", "--type", "sleep", "--payload", "[1]"],
        ["add", "n", "--every", "5", "--type", "sleep", "--catch-up", "some"],
    ):
        with pytest.raises(SystemExit) as exited:
            schedules.parse_args(bad)
        assert exited.value.code == 2, bad
    assert schedules.parse_args([]).command == "list"


def test_monitor_shows_the_schedules_line():
    now = 1_800_000_000.0  # 2027-01-15T08:00:00Z
    found = [
        {"name": "a", "enabled": True, "error": None, "next_run_at": "2027-01-15T08:02:00+00:00"},
        {"name": "b", "enabled": False, "error": None, "next_run_at": None},
        {"name": "c", "enabled": True, "error": "task: bad", "next_run_at": "2027-01-15T09:00:00Z"},
    ]
    console = Console(width=160, record=True, file=io.StringIO())
    console.print(monitor.render(None, None, now, "http://x", schedules=found))
    text = console.export_text()
    assert "schedules 3 (1 paused; 1 failing: c)   next a in 2 min" in text
