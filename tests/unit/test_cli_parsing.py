"""Unit tests of the CLIs' pure parts: building task lists, parsing arguments, exporting."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import fields

import pytest

import add_task
import monitor
from add_task import InputError
from common.config import Config

STATS = {
    "tasks": {"pending": 3, "in_progress": 1, "completed": 20, "failed": 2, "cancelled": 0},
    "workers": {"alive": 1, "dead": 1, "stopped": 0},
    "throughput_per_minute": 12,
    "oldest_pending_age_seconds": 4.5,
    "queues": {
        "slow": {"pending": 3, "in_progress": 0, "completed": 0, "failed": 0, "cancelled": 0},
        "default": {"pending": 0, "in_progress": 1, "completed": 20, "failed": 2, "cancelled": 0},
    },
    "types": {
        "primes": {"pending": 3, "in_progress": 1, "completed": 20, "failed": 0, "cancelled": 0},
        "fail": {"pending": 0, "in_progress": 0, "completed": 0, "failed": 2, "cancelled": 0},
    },
}
WORKERS = [
    {
        "worker_id": "w1",
        "status": "alive",
        "last_heartbeat": "2026-01-01T00:00:10.000+00:00",
        "current_tasks": ["t1"],
        "attempts_completed": 15,
        "attempts_failed": 2,
        "progress": {
            "t1": {"fraction": 0.5, "message": "halfway", "updated_at": "2026-01-01T00:00:09Z"}
        },
    },
    {
        "worker_id": "w2",
        "status": "dead",
        "last_heartbeat": "2026-01-01T00:00:00.000+00:00",
        "current_tasks": [],
        "attempts_completed": 5,
        "attempts_failed": 0,
    },
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for f in fields(Config):  # nothing inherited from the shell, CI or .env
        monkeypatch.delenv(f.name.upper(), raising=False)
    monkeypatch.setattr("common.config.load_dotenv_file", lambda: None)


# -- add_task: the task list ---------------------------------------------------------------


def test_the_seed_form_makes_count_primes_tasks_with_the_sieve_by_default():
    tasks = add_task.seed_tasks(3, 1000)
    assert tasks == [{"type": "primes", "payload": {"limit": 1000, "algorithm": "sieve"}}] * 3
    assert tasks[0]["payload"] is not tasks[1]["payload"]  # no shared dicts to mutate


def test_the_seed_form_takes_the_algorithm():
    [task] = add_task.seed_tasks(1, 100000, "trial_division")
    assert task["payload"] == {"limit": 100000, "algorithm": "trial_division"}


def test_the_flat_form_moves_everything_but_the_task_options_into_the_payload():
    flat = {"type": "compute", "operation": "factorial", "value": 10, "priority": 5, "queue": "q"}
    assert add_task.to_task(flat, "x") == {
        "type": "compute",
        "payload": {"operation": "factorial", "value": 10},
        "priority": 5,
        "queue": "q",
    }


def test_the_nested_form_is_kept_with_its_options():
    nested = {
        "type": "fail",
        "payload": {"error_message": "boom"},
        "max_retries": 0,
        "timeout": 5,
        "delay": 1,
        "idempotency_key": "k",
    }
    assert add_task.to_task(nested, "x") == nested


def test_a_type_alone_has_an_empty_payload():
    assert add_task.to_task({"type": "fail"}, "x") == {"type": "fail", "payload": {}}


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([1], "a task must be a JSON object, not a list"),
        ({"payload": {}}, "a task needs a 'type'"),
        ({"type": "compute", "payload": {}, "value": 1}, "not both (found value outside"),
    ],
)
def test_unusable_task_objects_are_refused_naming_where(obj, message):
    with pytest.raises(InputError, match=r"^item 3: .*") as err:
        add_task.to_task(obj, "item 3")
    assert message in str(err.value)


def test_payload_takes_one_object_or_a_list():
    one = add_task.parse_payload('{"type": "sleep", "duration": 1}')
    assert one == [{"type": "sleep", "payload": {"duration": 1}}]
    two = add_task.parse_payload(
        '[{"type": "fail"}, {"type": "sleep", "payload": {"duration": 2}}]'
    )
    assert [t["type"] for t in two] == ["fail", "sleep"]


def test_invalid_json_in_payload_is_one_clear_line():
    with pytest.raises(InputError) as err:
        add_task.parse_payload('{"type": "primes"')
    assert str(err.value).startswith("invalid JSON in --payload: ")
    assert "\n" not in str(err.value)


def test_an_empty_payload_list_is_refused():
    with pytest.raises(InputError, match="no tasks in --payload"):
        add_task.parse_payload("[]")


def test_a_task_file_may_be_json_lines_with_blank_lines():
    text = '{"type": "primes", "limit": 10}\n\n  \n{"type": "fail", "payload": {}}\n'
    assert add_task.parse_task_file(text, "f.jsonl") == [
        {"type": "primes", "payload": {"limit": 10}},
        {"type": "fail", "payload": {}},
    ]


def test_a_task_file_may_be_one_pretty_printed_object_or_list():
    obj = {"type": "compute", "payload": {"operation": "double", "value": 2}}
    assert add_task.parse_task_file(json.dumps(obj, indent=2), "f") == [obj]
    assert add_task.parse_task_file(json.dumps([obj, obj], indent=2), "f") == [obj, obj]


def test_a_bad_json_line_is_named_by_its_number():
    text = '{"type": "fail"}\n\n{"type": "fail"\n'
    with pytest.raises(InputError, match=r"^invalid JSON in f line 3: "):
        add_task.parse_task_file(text, "f")


def test_a_broken_document_reports_the_document_error_not_line_one():
    text = '{\n  "type": "fail",\n}\n'
    with pytest.raises(InputError, match=r"^invalid JSON in f: .* line 3 column 1$"):
        add_task.parse_task_file(text, "f")


def test_an_empty_task_file_is_refused():
    with pytest.raises(InputError, match="no tasks in f: it is empty"):
        add_task.parse_task_file("\n \n", "f")


def test_random_tasks_are_reproducible_with_a_seed():
    a = add_task.random_tasks(200, seed=7)
    assert a == add_task.random_tasks(200, seed=7)
    assert a != add_task.random_tasks(200, seed=8)
    assert len(a) == 200


def test_random_tasks_mix_every_builtin_type_with_valid_payloads():
    from tasks import registry

    tasks = add_task.random_tasks(300, seed=1)
    kinds = {t["type"] for t in tasks}
    assert kinds == {"primes", "compute", "sleep", "http_request", "fail"}
    for t in tasks:
        registry.validate(t["type"], t["payload"], Config())  # raises if invalid
    sleeps = [t["payload"]["duration"] for t in tasks if t["type"] == "sleep"]
    assert all(0.1 <= d <= 1.0 for d in sleeps)
    assert sum(t["type"] == "fail" for t in tasks) < len(tasks) / 4


def test_command_line_options_are_set_on_every_task_and_win():
    tasks = [{"type": "fail", "payload": {}, "priority": 9}, {"type": "fail", "payload": {}}]
    out = add_task.apply_options(tasks, {"priority": 1, "timeout": None, "queue": "q"})
    assert out == [{"type": "fail", "payload": {}, "priority": 1, "queue": "q"}] * 2


def test_a_batch_error_names_the_whole_list_index():
    # the batches themselves: client.submit_many (tests/unit/test_client_library.py)
    assert add_task.shift_index("tasks[1]: bad limit", 1000) == "tasks[1001]: bad limit"
    assert add_task.shift_index("tasks[1]: bad limit", 0) == "tasks[1]: bad limit"


def test_summaries_are_short_and_exact_about_big_numbers():
    primes = {"status": "completed", "result": {"count": 9592, "largest": 99991, "primes": [2]}}
    assert add_task.summarize(primes) == "count=9592, largest=99991"
    big = {"status": "completed", "result": {"result": 10**100}}
    assert add_task.summarize(big) == "result=1000000000…(101 digits)"
    failed = {"status": "failed", "error": "boom\n  at line 3"}
    assert add_task.summarize(failed) == "boom at line 3"
    assert len(add_task.summarize({"status": "failed", "error": "x" * 500})) == 72


# -- add_task: the arguments ---------------------------------------------------------------


def test_the_seed_form_parses_with_options_after_it():
    args = add_task.parse_args(["1", "100000", "trial_division", "--wait", "--json"])
    assert (args.count, args.limit, args.algorithm, args.wait, args.json) == (
        1,
        100000,
        "trial_division",
        True,
        True,
    )
    assert add_task.build_tasks(args) == add_task.seed_tasks(1, 100000, "trial_division")


def test_options_reach_the_built_tasks():
    args = add_task.parse_args(
        ["--payload", '{"type": "fail"}', "--max-retries", "0", "--timeout", "2.5"]
        + ["--priority", "-3", "--delay", "1", "--queue", "slow"]
    )
    assert add_task.build_tasks(args) == [
        {
            "type": "fail",
            "payload": {},
            "max_retries": 0,
            "timeout": 2.5,
            "priority": -3,
            "delay": 1.0,
            "queue": "slow",
        }
    ]


def test_payload_file_dash_reads_stdin():
    args = add_task.parse_args(["--payload-file", "-"])
    stdin = io.StringIO('{"type": "fail"}\n{"type": "fail"}\n')
    assert len(add_task.build_tasks(args, stdin)) == 2


def test_random_defaults_to_ten_tasks_and_takes_count_and_seed():
    assert len(add_task.build_tasks(add_task.parse_args(["--random"]))) == 10
    args = add_task.parse_args(["--random", "--count", "4", "--seed", "5"])
    assert add_task.build_tasks(args) == add_task.random_tasks(4, seed=5)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["5"],
        ["0", "10"],
        ["5", "x"],
        ["5", "10", "bogus"],
        ["5", "10", "--random"],
        ["--payload", "{}", "--random"],
        ["--count", "3"],
        ["--random", "--count", "0"],
        ["--payload", "{}", "--max-retries", "-1"],
        ["--payload", "{}", "--timeout", "0"],
    ],
)
def test_bad_usage_exits_with_status_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        add_task.parse_args(argv)
    assert exc.value.code == 2
    assert "usage: add_task.py" in capsys.readouterr().err


def test_invalid_payload_json_exits_2_with_one_line(capsys, monkeypatch):
    monkeypatch.setenv("DISPATCHER_URL", "http://127.0.0.1:9")  # never contacted
    assert add_task.main(["--payload", "{nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid JSON in --payload: ")
    assert err.count("\n") == 1


def test_a_bad_setting_exits_2_with_configuration_error(capsys, monkeypatch):
    monkeypatch.setenv("MAX_BATCH", "lots")
    assert add_task.main(["1", "10"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "configuration error: MAX_BATCH must be a whole number, not 'lots' "
        "(set in the environment)\n"
    )


# -- monitor ------------------------------------------------------------------------------


def test_csv_export_rows_from_a_fixed_stats_dict():
    rows = monitor.csv_rows(STATS, WORKERS)
    assert rows[0] == ("section", "name", "status", "count")
    assert rows[1:7] == [
        ("tasks", "all", "waiting", 0),
        ("tasks", "all", "pending", 3),
        ("tasks", "all", "in_progress", 1),
        ("tasks", "all", "completed", 20),
        ("tasks", "all", "failed", 2),
        ("tasks", "all", "cancelled", 0),
    ]
    assert ("queue", "default", "completed", 20) in rows
    assert ("queue", "slow", "pending", 3) in rows
    assert ("type", "fail", "failed", 2) in rows
    assert rows[-2:] == [("worker", "w1", "alive", 15), ("worker", "w2", "dead", 5)]
    queues = [r[1] for r in rows if r[0] == "queue"]
    assert queues == sorted(queues)  # stable order: default before slow
    assert len(rows) == 1 + 6 + 2 * 6 + 2 * 6 + 2


def test_csv_text_parses_back_with_the_header():
    text = monitor.to_csv(monitor.csv_rows(STATS, WORKERS))
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert text.startswith("section,name,status,count\n")
    assert parsed[0] == {"section": "tasks", "name": "all", "status": "waiting", "count": "0"}
    assert parsed[1] == {"section": "tasks", "name": "all", "status": "pending", "count": "3"}


def test_an_unknown_status_is_exported_after_the_known_ones():
    stats = {"tasks": {"pending": 1, "paused": 2}}
    rows = monitor.csv_rows(stats, [])
    assert [r[2] for r in rows[1:]] == [*monitor.STATUSES, "paused"]


def test_json_export_holds_stats_and_workers():
    assert json.loads(monitor.to_json(STATS, WORKERS)) == {"stats": STATS, "workers": WORKERS}


def test_heartbeat_age_and_durations():
    now = 1767225620.0  # 2026-01-01T00:00:20Z
    assert monitor.seconds_since("2026-01-01T00:00:10.000+00:00", now) == 10.0
    assert monitor.seconds_since("2026-01-01T00:00:10Z", now) == 10.0
    assert monitor.seconds_since(None, now) is None
    assert monitor.seconds_since("yesterday", now) is None
    assert [monitor.duration(s) for s in (None, 4.25, 125, 7300, 90000)] == [
        "—",
        "4.2 s",
        "2 min 5 s",
        "2 h 1 min",
        "1 d 1 h",
    ]
    assert monitor.current_tasks([]) == "—"
    assert monitor.current_tasks(["a", "b", "c", "d", "e"]) == "a, b, c (+2 more)"


def test_the_view_renders_every_section_and_the_problem_line():
    from rich.console import Console

    console = Console(width=160, record=True, file=io.StringIO())
    now = 1767225620.0
    console.print(monitor.render(STATS, WORKERS, now, "http://x", "dispatcher unreachable", now))
    text = console.export_text()
    for word in ("pending", "completed", "12 completed/min", "4.5 s", "slow", "w2", "10.0 s ago"):
        assert word in text
    assert "…t1 50% halfway" in text  # w1's running task's progress
    assert "dispatcher unreachable" in text


def test_monitor_shows_each_running_tasks_progress():
    def report(fraction: float, message: str = "") -> dict:
        return {"fraction": fraction, "message": message, "updated_at": "2026-01-01T00:00:00Z"}

    assert monitor.task_progress({}) == "—"
    assert monitor.task_progress(None) == "—"  # a dispatcher older than progress
    many = {f"{i}" * 32: report(i / 10, f"step {i}") for i in range(1, 6)}
    assert monitor.task_progress(many).splitlines() == [
        "…11111111 10% step 1",
        "…22222222 20% step 2",
        "…33333333 30% step 3",
        "(+2 more)",
    ]
    assert monitor.task_progress({"a" * 32: report(1)}) == "…aaaaaaaa 100%"


def test_wait_shows_the_progress_of_our_running_tasks_only():
    def report(fraction: float, message: str) -> dict:
        return {"fraction": fraction, "message": message, "updated_at": "2026-01-01T00:00:00Z"}

    ours, theirs = "a" * 32, "b" * 32
    workers = [
        {"worker_id": "w1", "progress": {theirs: report(0.1, "not ours")}},
        {"worker_id": "w2", "progress": {ours: report(0.5, "[bold]halfway")}},
        {"worker_id": "w3"},  # a dispatcher older than progress
    ]
    rows = add_task.running_progress(workers, {ours})
    assert rows == {ours: ("  …aaaaaaaa \\[bold]halfway", 0.5)}  # markup shown as written
    many = {"progress": {f"{i}" * 32: report(0.5, "") for i in range(9)}}
    assert len(add_task.running_progress([many], set(many["progress"]))) == add_task.PROGRESS_ROWS


@pytest.mark.parametrize("argv", [["--interval", "0"], ["--export", "xml"], ["extra"]])
def test_monitor_bad_usage_exits_with_status_2(argv):
    with pytest.raises(SystemExit) as exc:
        monitor.build_parser().parse_args(argv)
    assert exc.value.code == 2


def test_depends_on_reaches_every_task_and_bad_lists_are_refused(capsys):
    args = add_task.parse_args(["2", "100", "--depends-on", "a1, b2"])
    assert [t["depends_on"] for t in add_task.build_tasks(args)] == [["a1", "b2"]] * 2
    with pytest.raises(SystemExit):
        add_task.parse_args(["2", "100", "--depends-on", "a1,,b2"])
    assert "not a comma-separated list of task ids" in capsys.readouterr().err
