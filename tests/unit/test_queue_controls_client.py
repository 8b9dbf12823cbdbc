"""Queue controls and expiry in the client library (against a real dispatcher served in
a thread: served_dispatcher.py), in queues.py's arguments and output, and in
monitor.py's queues table."""

from __future__ import annotations

import argparse
import io

import pytest
from rich.console import Console
from served_dispatcher import free_port

import monitor
import queues
from taskqueue import Client, InvalidRequest


@pytest.fixture
def client_for():
    made: list[Client] = []

    def make(where) -> Client:
        made.append(Client(getattr(where, "url", where)))
        return made[-1]

    yield make
    for c in made:
        c.close()


def double(value: int) -> dict:
    return {"operation": "double", "value": value}


def test_pause_resume_and_limits_through_the_client(served, client_for):
    client = client_for(served())
    handle = client.submit("compute", double(2), queue="q", expires_in=600)
    assert handle.refresh()["expires_at"] is not None
    assert client.pause_queue("q")["paused"] is True
    got = client.set_queue("q", max_in_flight=3, rate_limit=(10, 1.5))
    assert (got["paused"], got["max_in_flight"]) == (True, 3)
    assert got["rate_limit"] == {"count": 10, "per_seconds": 1.5}
    assert client.resume_queue("q")["paused"] is False
    got = client.set_queue("q", rate_limit=None, max_in_flight=None)
    assert (got["rate_limit"], got["max_in_flight"]) == (None, None)
    [q] = client.queues()
    assert (q["name"], q["counts"]["pending"]) == ("q", 1)
    with pytest.raises(InvalidRequest, match="'max_in_flight' must be between 1 and"):
        client.set_queue("q", max_in_flight=0)
    with pytest.raises(InvalidRequest, match="'expires_in' must be more than 0"):
        client.submit("compute", double(2), expires_in=0)


def test_a_wrong_setting_is_a_type_error_before_anything_is_sent(client_for):
    client = client_for(f"http://127.0.0.1:{free_port()}")  # nothing listens: never asked
    with pytest.raises(TypeError, match="unexpected keyword argument 'limit'"):
        client.set_queue("q", limit=3)
    with pytest.raises(TypeError, match=r"rate_limit is \(count, per_seconds\)"):
        client.set_queue("q", rate_limit=(1, 2, 3))


# -- queues.py ---------------------------------------------------------------------------


def test_queues_cli_arguments():
    args = queues.parse_args(["set", "q", "--max-in-flight", "none", "--rate", "10/0.5"])
    assert queues.changes_of(args) == {
        "max_in_flight": None,
        "rate_limit": {"count": 10, "per_seconds": 0.5},
    }
    assert queues.changes_of(queues.parse_args(["set", "q", "--rate", "none"])) == {
        "rate_limit": None
    }
    assert queues.parse_args([]).command is None
    assert queues.parse_args(["pause", "q"]).name == "q"
    for bad in ("5", "x/1", "1/0", "0/1"):
        with pytest.raises(argparse.ArgumentTypeError):
            queues.rate(bad)
    with pytest.raises(argparse.ArgumentTypeError):
        queues.max_in_flight("0")


def test_queues_cli_set_without_options_is_bad_usage(capsys):
    with pytest.raises(SystemExit) as exit_:
        queues.parse_args(["set", "q"])
    assert exit_.value.code == 2
    assert "set needs --max-in-flight or --rate" in capsys.readouterr().err


QUEUES = [
    {
        "name": "emails",
        "paused": True,
        "max_in_flight": 2,
        "rate_limit": {"count": 10, "per_seconds": 60.0},
        "updated_at": "2026-01-01T00:00:00.000+00:00",
        "counts": {"pending": 4, "in_progress": 2, "completed": 1, "failed": 0, "cancelled": 0},
    },
    {
        "name": "fresh",
        "paused": False,
        "max_in_flight": None,
        "rate_limit": None,
        "updated_at": None,
        "counts": {},
    },
]


def rendered(table) -> str:
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(table)
    return console.export_text()


def test_queues_cli_table_and_lines():
    text = rendered(queues.queues_table(QUEUES))
    assert "paused" in text and "10 per 60 s" in text and "active" in text
    assert queues.settings_line(QUEUES[0]) == (
        "emails: paused, max in flight 2, rate limit 10 per 60 s"
    )


def test_monitor_shows_each_queues_controls_and_configured_queues_without_tasks():
    stats = {"queues": {"emails": QUEUES[0]["counts"], "other": {"pending": 1}}}
    text = rendered(monitor.queues_table(stats, QUEUES))
    assert "paused; max 2 in flight; 10 per 60 s" in text
    assert "fresh" in text and "other" in text  # configured only / tasks only


def test_add_task_expires_in_sets_every_task_and_refuses_a_bad_value(capsys):
    import add_task

    body = '[{"type": "sleep", "payload": {"duration": 1}}, {"type": "sleep", "duration": 2}]'
    args = add_task.parse_args(["--payload", body, "--expires-in", "2.5"])
    assert [t["expires_in"] for t in add_task.build_tasks(args)] == [2.5, 2.5]
    flat = add_task.to_task({"type": "sleep", "duration": 1, "expires_in": 9}, "x")
    assert flat == {"type": "sleep", "payload": {"duration": 1}, "expires_in": 9}
    with pytest.raises(SystemExit) as exit_:
        add_task.parse_args(["--payload", body, "--expires-in", "0"])
    assert exit_.value.code == 2 and "--expires-in" in capsys.readouterr().err
