"""add_task.py --list-types: GET /task-types as a table, from an answer of the shape the
endpoint gives (issue 17 section 2); the run against a real dispatcher is
tests/integration/test_cli.py::test_list_types_prints_every_registered_type."""

from __future__ import annotations

import io
import json

from rich.console import Console

import add_task
from tasks import registry

TASK_TYPES = [
    {
        "name": "primes",
        "description": "Count the primes in [start, limit].",
        "defaults": {"queue": "default", "max_retries": 3},
        "schema": {
            "type": "object",
            "properties": {
                "limit": {"type": "integer", "minimum": 2, "maximum": 100_000_000},
                "start": {"type": "integer", "minimum": 0, "default": 2},
                "algorithm": {"enum": ["sieve", "trial_division"], "default": "sieve"},
            },
            "required": ["limit"],
        },
    },
    {
        "name": "wordcount",
        "description": "",
        "defaults": {},
        "schema": {
            "properties": {
                "text": {"type": "string", "maxLength": 100_000},
                "top": {"anyOf": [{"type": "integer", "exclusiveMinimum": 0}, {"type": "null"}]},
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
            },
            "required": ["text"],
        },
    },
]


def render(table) -> str:
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(table)
    return out.getvalue()


def test_each_field_in_a_few_words_optional_ones_marked():
    assert add_task.describe_fields(TASK_TYPES[0]["schema"]) == [
        "limit: integer (≥ 2, ≤ 100000000)",
        "start?: integer (≥ 0) = 2",
        'algorithm?: "sieve" | "trial_division" = "sieve"',
    ]
    assert add_task.describe_fields(TASK_TYPES[1]["schema"]) == [
        "text: string (≤ 100000 characters)",
        "top?: integer (> 0) | null",
        "tags?: array of string (≤ 5 items)",
    ]
    assert add_task.describe_fields({}) == []


def test_the_table_has_a_row_per_type_with_its_description_and_defaults():
    text = render(add_task.task_types_table(TASK_TYPES))
    header = text.splitlines()[0]
    for column in ("type", "description", "defaults", "fields (? optional)"):
        assert column in header
    for shown in ("primes", "Count the primes", "queue=default", "max_retries=3", "wordcount"):
        assert shown in text
    assert "(none)" in render(add_task.task_types_table([]))


def test_list_types_takes_no_submission_arguments(capsys):
    assert add_task.parse_args(["--list-types", "--json"]).list_types
    for argv in (["--list-types", "1", "10"], ["--list-types", "--wait"]):
        try:
            add_task.parse_args(argv)
        except SystemExit as exc:
            assert exc.code == 2
        else:
            raise AssertionError(f"{argv} was accepted")
    assert "--list-types submits nothing" in capsys.readouterr().err


def test_list_types_prints_what_the_dispatcher_answers(served, monkeypatch, capsys):
    dispatcher = served(lambda app: None)
    monkeypatch.setattr("common.config.load_dotenv_file", lambda: None)
    monkeypatch.setenv("DISPATCHER_URL", dispatcher.url)
    assert add_task.main(["--list-types"]) == 0
    out = capsys.readouterr().out
    assert "primes" in out and "limit: integer (≥ 2)" in out
    assert add_task.main(["--list-types", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"task_types": registry.describe()}
