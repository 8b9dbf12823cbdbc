#!/usr/bin/env python3
"""Submit tasks to the dispatcher, and optionally wait for their results.

    python3 add_task.py COUNT LIMIT [ALGORITHM]      COUNT primes tasks up to LIMIT
    python3 add_task.py --payload JSON               one task object, or a JSON list of them
    python3 add_task.py --payload-file FILE          a JSON object, a JSON list or JSON lines
    python3 add_task.py --random --count N [--seed S]
    python3 add_task.py --list-types                 the dispatcher's task types, as a table

Runs with any python3: the first call creates .venv (see common/bootstrap.py). Talks
to the dispatcher through the client library (taskqueue/, docs/CLIENT.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import threading
from collections.abc import Callable
from typing import Any

from common.bootstrap import ensure_venv

if __name__ == "__main__":
    ensure_venv()  # before any third-party import: re-runs this script inside .venv

from rich import box  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.progress import (  # noqa: E402
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table  # noqa: E402

from common import cli, logs  # noqa: E402
from common.config import Config  # noqa: E402
from taskqueue import ApiError, Client, DispatcherUnreachable, TaskHandle  # noqa: E402
from taskqueue.errors import shift_index  # noqa: E402, F401  (tests/unit/test_cli_parsing.py)
from tasks import registry  # noqa: E402

TASK_OPTIONS = (
    "queue",
    "max_retries",
    "timeout",
    "priority",
    "delay",
    "idempotency_key",
    "depends_on",
    "expires_in",
)
ALGORITHMS = ("sieve", "trial_division")
PROGRESS_ROWS = 5  # running tasks whose progress --wait shows, at most
PROGRESS_EVERY_S = 1.0  # how often --wait reads their progress (one GET /workers)
RANDOM_DEFAULT_COUNT = 10
RETRY_FOR_DEFAULT = 60.0  # --retry-for: seconds to keep trying while the queue is full (429)


class InputError(Exception):
    """The tasks given on the command line or in a file are not usable (exit status 2)."""


# -- building the task list (pure functions) ---------------------------------------------


def seed_tasks(count: int, limit: int, algorithm: str | None = None) -> list[dict]:
    """The seed form: COUNT primes tasks up to LIMIT."""
    payload = {"limit": limit, "algorithm": algorithm or "sieve"}
    return [{"type": "primes", "payload": dict(payload)} for _ in range(count)]


def to_task(obj: Any, where: str) -> dict:
    """One task object for POST /submit-tasks, from the nested or the flat form.

    Nested: {"type": "compute", "payload": {"operation": "double", "value": 2}, "priority": 5}
    Flat:   {"type": "compute", "operation": "double", "value": 2, "priority": 5}
    In the flat form every key but `type` and the task options goes into the payload.
    """
    if not isinstance(obj, dict):
        raise InputError(f"{where}: a task must be a JSON object, not {_json_kind(obj)}")
    if "type" not in obj:
        raise InputError(f"{where}: a task needs a 'type' (one of {', '.join(registry.names())})")
    rest = {k: v for k, v in obj.items() if k not in ("type", "payload", *TASK_OPTIONS)}
    if "payload" in obj and rest:
        raise InputError(
            f"{where}: put the payload fields either in 'payload' or next to 'type', "
            f"not both (found {', '.join(sorted(rest))} outside 'payload')"
        )
    task = {"type": obj["type"], "payload": obj["payload"] if "payload" in obj else rest}
    task.update((k, obj[k]) for k in TASK_OPTIONS if k in obj)
    return task


def parse_payload(text: str, source: str = "--payload") -> list[dict]:
    """--payload: one task object, or a JSON list of task objects."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON in {source}: {_json_error(exc)}") from None
    return _tasks_from_json(data, source)


def parse_task_file(text: str, source: str) -> list[dict]:
    """--payload-file: a JSON object, a JSON list, or JSON lines (blank lines ignored)."""
    if not text.strip():
        raise InputError(f"no tasks in {source}: it is empty")
    try:
        return _tasks_from_json(json.loads(text), source)
    except json.JSONDecodeError as whole:
        document_error = whole
    tasks = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            if not tasks:  # not JSON lines either: report the error of the whole document
                raise InputError(
                    f"invalid JSON in {source}: {_json_error(document_error)}"
                ) from None
            raise InputError(
                f"invalid JSON in {source} line {lineno}: {_json_error(exc)}"
            ) from None
        tasks.append(to_task(obj, f"{source} line {lineno}"))
    return tasks


def random_tasks(count: int, seed: int | None = None) -> list[dict]:
    """A random mix of the built-in types; the same seed gives the same list."""
    rng = random.Random(seed)
    makers: list[tuple[Callable[[random.Random, int], dict], int]] = [
        (_random_primes, 30),
        (_random_compute, 30),
        (_random_sleep, 15),
        (_random_http, 15),
        (_random_fail, 10),
    ]
    kinds, weights = zip(*makers, strict=True)
    return [rng.choices(kinds, weights)[0](rng, i) for i in range(count)]


def _random_primes(rng: random.Random, i: int) -> dict:
    if rng.random() < 0.2:
        payload = {"limit": rng.randint(100, 20_000), "algorithm": "trial_division"}
        return {"type": "primes", "payload": payload}
    return {"type": "primes", "payload": {"limit": rng.randint(100, 200_000)}}


def _random_compute(rng: random.Random, i: int) -> dict:
    operation = rng.choice(("factorial", "fibonacci", "double"))
    high = {"factorial": 300, "fibonacci": 2000, "double": 10**6}[operation]
    value = rng.randint(-high if operation == "double" else 0, high)
    return {"type": "compute", "payload": {"operation": operation, "value": value}}


def _random_sleep(rng: random.Random, i: int) -> dict:
    return {"type": "sleep", "payload": {"duration": round(rng.uniform(0.1, 1.0), 2)}}


def _random_http(rng: random.Random, i: int) -> dict:
    method = rng.choice(("GET", "GET", "POST", "PUT", "DELETE"))
    url = f"https://example.com/items/{rng.randint(1, 10_000)}"
    return {"type": "http_request", "payload": {"url": url, "method": method}}


def _random_fail(rng: random.Random, i: int) -> dict:
    return {"type": "fail", "payload": {"error_message": f"random failure (task {i + 1})"}}


def apply_options(tasks: list[dict], options: dict[str, Any]) -> list[dict]:
    """Set each given option (None: not given) on every task; the command line wins."""
    given = {k: v for k, v in options.items() if v is not None}
    return [{**task, **given} for task in tasks]


def summarize(task: dict, width: int = 72) -> str:
    """One short line: the result of a completed task, or the error of another."""
    if task.get("status") == "completed":
        result = task.get("result")
        if isinstance(result, dict):
            text = ", ".join(f"{k}={_short(v)}" for k, v in result.items() if k != "primes")
        else:
            text = _short(result)
    else:
        text = task.get("error") or ""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _short(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**20:
        digits = str(abs(value))
        return f"{'-' if value < 0 else ''}{digits[:10]}…({len(digits)} digits)"
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def _tasks_from_json(data: Any, source: str) -> list[dict]:
    if isinstance(data, list):
        if not data:
            raise InputError(f"no tasks in {source}: the list is empty")
        return [to_task(obj, f"{source} item {i + 1}") for i, obj in enumerate(data)]
    return [to_task(data, source)]


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _json_kind(value: Any) -> str:
    return {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _json_error(exc: json.JSONDecodeError) -> str:
    return f"{exc.msg} at line {exc.lineno} column {exc.colno}"


# -- command line ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="add_task.py",
        description="Submit tasks to the dispatcher at DISPATCHER_URL (one POST /submit-tasks\n"
        "per MAX_BATCH tasks) and print their ids, one per line.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"""\
task objects (--payload, --payload-file):
  {{"type": "primes", "payload": {{"limit": 1000}}, "priority": 5}}
  {{"type": "compute", "operation": "factorial", "value": 10}}
      the second (flat) form puts every key that is not a task option (queue,
      max_retries, timeout, priority, delay, idempotency_key, depends_on, expires_in) into the
      payload
  built-in types: {", ".join(registry.names())}

examples:
  python3 add_task.py 10 1000000                 10 primes tasks, limit 10^6, sieve
  python3 add_task.py 1 100000 trial_division --wait
  python3 add_task.py --payload '{{"type": "sleep", "payload": {{"duration": 2}}}}'
  python3 add_task.py --payload-file tasks.jsonl --priority 5 --json
  python3 add_task.py --random --count 50 --seed 1 --wait
  python3 add_task.py 1 1000 --depends-on ID1,ID2  runs once tasks ID1 and ID2 completed
  python3 add_task.py --list-types               the task types, their defaults and fields

DISPATCHER_URL may list several dispatchers, comma-separated: one that answers takes
the tasks. A submission whose reply is lost is sent again elsewhere only when every
task has an idempotency_key (see docs/LOAD_BALANCING.md).

exit status: 0 ok; 1 dispatcher unreachable or request refused, or (--wait) a task
ended failed or cancelled; 2 bad usage, bad JSON or bad configuration.""",
    )
    parser.add_argument(
        "count",
        nargs="?",
        type=cli.positive_int,
        metavar="COUNT",
        help="seed form: how many primes tasks",
    )
    parser.add_argument(
        "limit",
        nargs="?",
        type=cli.positive_int,
        metavar="LIMIT",
        help="seed form: count the primes up to LIMIT",
    )
    parser.add_argument(
        "algorithm",
        nargs="?",
        choices=ALGORITHMS,
        metavar="ALGORITHM",
        help="seed form: sieve (default) or trial_division",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--payload", metavar="JSON", help="a task object or a JSON list of them")
    source.add_argument(
        "--payload-file",
        metavar="FILE",
        help="a JSON object, a JSON list or JSON lines (one task per line); - reads stdin",
    )
    source.add_argument("--random", action="store_true", help="a random mix of task types")
    source.add_argument(
        "--list-types",
        action="store_true",
        help="submit nothing: print the dispatcher's task types (GET /task-types) as a table: "
        "each one's description, defaults and payload fields (with --json: as JSON)",
    )
    parser.add_argument(
        "--count",
        dest="random_count",  # apart from the positional COUNT
        type=cli.positive_int,
        metavar="N",
        help=f"with --random: how many tasks (default {RANDOM_DEFAULT_COUNT})",
    )
    parser.add_argument("--seed", type=int, help="with --random: make the mix reproducible")
    every = parser.add_argument_group("options set on every task (they override the file's)")
    every.add_argument(
        "--max-retries",
        type=cli.non_negative_int,
        metavar="N",
        help="retries after the first attempt (default DEFAULT_MAX_RETRIES)",
    )
    every.add_argument(
        "--timeout",
        type=cli.positive_float,
        metavar="S",
        help="seconds one attempt may run (default DEFAULT_TASK_TIMEOUT)",
    )
    every.add_argument("--priority", type=int, metavar="N", help="higher runs first (default 0)")
    every.add_argument(
        "--delay",
        type=cli.non_negative_float,
        metavar="S",
        help="seconds before the first attempt may start",
    )
    every.add_argument(
        "--expires-in",
        type=cli.positive_float,
        metavar="S",
        help="not started within S seconds of its submission, a task is never run "
        "(cancelled: 'expired: not started within S s')",
    )
    every.add_argument("--queue", metavar="NAME", help="queue name (default 'default')")
    every.add_argument(
        "--depends-on",
        type=task_ids,
        metavar="ID[,ID...]",
        help="task ids each task waits for: it runs once they have all completed (status "
        "waiting until then), and is cancelled if one fails or is cancelled",
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help="wait until every task finishes (progress on stderr), then print a summary; "
        "exit status 1 if any task failed or was cancelled",
    )
    parser.add_argument(
        "--retry-for",
        type=cli.non_negative_float,
        default=RETRY_FOR_DEFAULT,
        metavar="S",
        help="when the queue is full (429, MAX_PENDING_TASKS), keep trying for S seconds, "
        f"saying so on stderr, before giving up with exit status 1 (default {RETRY_FOR_DEFAULT:g}; "
        "0 gives up at once)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help='print JSON on stdout: {"task_ids": [...]}, or with --wait '
        '{"tasks": [GET /task objects], "failed": n}',
    )
    return parser


def check_usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.list_types:
        if args.count is not None or args.wait:
            parser.error("--list-types submits nothing: it takes no COUNT LIMIT and no --wait")
        return
    if not args.random and (args.random_count is not None or args.seed is not None):
        parser.error("--count and --seed go with --random (the seed form is COUNT LIMIT)")
    other = args.payload is not None or args.payload_file is not None or args.random
    if args.count is not None and other:
        parser.error("give either COUNT LIMIT or one of --payload, --payload-file, --random")
    if args.count is not None and args.limit is None:
        parser.error("the seed form needs LIMIT too: add_task.py COUNT LIMIT [ALGORITHM]")
    if args.count is None and not other:
        parser.error("nothing to submit: give COUNT LIMIT, --payload, --payload-file or --random")


def build_tasks(args: argparse.Namespace, stdin=None) -> list[dict]:
    """The task list the arguments describe (InputError if a JSON source is unusable)."""
    if args.count is not None:
        tasks = seed_tasks(args.count, args.limit, args.algorithm)
    elif args.payload is not None:
        tasks = parse_payload(args.payload)
    elif args.payload_file is not None:
        tasks = parse_task_file(*_read_source(args.payload_file, stdin or sys.stdin))
    else:
        tasks = random_tasks(args.random_count or RANDOM_DEFAULT_COUNT, args.seed)
    options = {
        "max_retries": args.max_retries,
        "timeout": args.timeout,
        "priority": args.priority,
        "delay": args.delay,
        "queue": args.queue,
        "depends_on": args.depends_on,
        "expires_in": args.expires_in,
    }
    return apply_options(tasks, options)


def task_ids(text: str) -> list[str]:
    """--depends-on: comma-separated task ids (blanks around commas ignored)."""
    ids = [part.strip() for part in text.split(",")]
    if not all(ids):
        raise argparse.ArgumentTypeError(f"not a comma-separated list of task ids: {text!r}")
    return ids


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_usage(parser, args)
    return args


def _read_source(name: str, stdin) -> tuple[str, str]:
    if name == "-":
        return stdin.read(), "stdin"
    try:
        with open(name, encoding="utf-8") as f:
            return f.read(), name
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {name}: {getattr(exc, 'strerror', None) or exc}") from None


# -- talking to the dispatcher -----------------------------------------------------------


def connect(config: Config, retry_for: float = 0.0) -> Client:
    """The client library's Client for DISPATCHER_URL; a full queue (429) is tried again
    for `retry_for` seconds, saying so on stderr."""
    return Client(config=config, retry_429_for=retry_for, on_429=_queue_full)


def submit(
    config: Config, client: Client, tasks: list[dict], as_json: bool = False
) -> list[TaskHandle]:
    """Submit in batches of MAX_BATCH; each batch is one POST /submit-tasks, all or nothing."""
    try:
        return client.submit_many(tasks)
    except (DispatcherUnreachable, ApiError) as exc:
        if isinstance(exc, ApiError):
            message = exc.message  # names the item in the whole list: tasks[1042]
        else:
            message = cli.unreachable(config, exc)
        stored = getattr(exc, "submitted", [])
        if stored:  # earlier batches are stored: say which, so nothing is submitted twice
            print_ids([h.id for h in stored], as_json)
            message += f" ({len(stored)} of {len(tasks)} tasks were submitted: ids on stdout)"
        raise cli.CliError(message) from None


def unserved_queues(tasks: list[dict], workers: list[dict]) -> list[str]:
    """The queues of `tasks` that no alive worker takes tasks from. A worker that has
    not claimed yet (queues unknown) may serve any of them: then none is reported."""
    alive = [w for w in workers if w.get("status") == "alive"]
    if any(w.get("queues") is None for w in alive):
        return []
    served = {q for w in alive for q in w["queues"]}
    wanted = dict.fromkeys(t.get("queue") or "default" for t in tasks)
    return [q for q in wanted if q not in served]


def warn_unserved(client: Client, tasks: list[dict]) -> None:
    """A warning on stderr when no alive worker serves a queue just submitted to (the
    tasks are stored all the same and wait for one)."""
    try:
        missing = unserved_queues(tasks, client.workers())
    except (DispatcherUnreachable, ApiError):
        return
    for name in missing:
        cli.say(
            f"no alive worker takes tasks from queue '{name}'; they wait until "
            f"one does (./start_worker.sh ID --queues {name})",
            logging.WARNING,
            "warning: ",
        )


def wait_all(
    client: Client, handles: list[TaskHandle], on_finished: Callable[[dict], None]
) -> list[dict]:
    """Each task as GET /task/<id> shows it once finished, in the order of `handles`;
    `on_finished(task)` as each one finishes (client.as_completed: a few held long polls,
    so the dispatcher answers the moment a task finishes)."""
    for handle in client.as_completed(handles):
        on_finished(handle.record)
    return [h.record for h in handles]


def wait_with_progress(client: Client, handles: list[TaskHandle], show: bool) -> list[dict]:
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[count]}"),
        TextColumn("{task.fields[failed]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not show,
    )
    failed = done = 0
    stop = threading.Event()
    with progress:
        total = len(handles)
        bar = progress.add_task(
            "[bold]waiting[/] for tasks", total=total, failed="", count=f"0/{total}"
        )

        def advance(task: dict) -> None:
            nonlocal failed, done
            done += 1
            failed += task["status"] != "completed"
            note = f"[red]{failed} failed[/]" if failed else ""
            progress.update(bar, advance=1, failed=note, count=f"{done}/{total}")

        rows: dict[str, TaskID] = {}  # the running tasks shown under the bar
        lock = threading.Lock()
        if show:
            watch = (client, {h.id for h in handles}, progress, rows, lock, stop)
            threading.Thread(target=show_running, args=watch, daemon=True).start()
        try:
            return wait_all(client, handles, advance)
        finally:
            with lock:  # the summary follows the bar alone
                stop.set()
                for row in rows.values():
                    progress.remove_task(row)


def show_running(
    client: Client,
    mine: set[str],
    progress: Progress,
    rows: dict[str, TaskID],
    lock: threading.Lock,
    stop: threading.Event,
) -> None:
    """Until `stop`: in `rows`, a row under the bar for each of our running tasks that
    reported progress (at most PROGRESS_ROWS), with its message and fraction, from GET
    /workers every PROGRESS_EVERY_S."""
    while not stop.wait(PROGRESS_EVERY_S):
        try:
            workers = client.workers()
        except (DispatcherUnreachable, ApiError):
            continue  # the waiting threads report an outage; the rows stay as they are
        running = running_progress(workers, mine)
        with lock:
            if stop.is_set():
                return
            for task_id in rows.keys() - running.keys():
                progress.remove_task(rows.pop(task_id))
            for task_id, (text, fraction) in running.items():
                shown = {"description": text, "completed": fraction, "count": f"{fraction:.0%}"}
                if task_id in rows:
                    progress.update(rows[task_id], **shown)
                else:
                    rows[task_id] = progress.add_task(**shown, total=1.0, failed="")


def running_progress(workers: list[dict], mine: set[str]) -> dict[str, tuple[str, float]]:
    """Of our tasks, those running with progress (GET /workers), at most PROGRESS_ROWS:
    task id -> (the row's text: the id's last 8 characters, its first ones are the time
    it was made; and the message; the fraction)."""
    out: dict[str, tuple[str, float]] = {}
    for worker in workers:
        for task_id, p in (worker.get("progress") or {}).items():
            if task_id in mine and len(out) < PROGRESS_ROWS:
                text = f"  …{task_id[-8:]} {escape(p['message'])}".rstrip()
                out[task_id] = (text, p["fraction"])
    return out


def task_types_table(task_types: list[dict]) -> Table:
    """GET /task-types as a table: name, description, defaults, payload fields."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    table.add_column("type", no_wrap=True, style="bold")
    table.add_column("description", overflow="fold")
    table.add_column("defaults", overflow="fold")
    table.add_column("fields (? optional)", overflow="fold")
    for t in task_types:
        defaults = t.get("defaults") or {}
        table.add_row(
            t["name"],
            t.get("description") or "",
            "\n".join(f"{k}={_short(v)}" for k, v in defaults.items()),
            "\n".join(describe_fields(t.get("schema") or {})),
        )
    if not task_types:
        table.add_row("(none)", "", "", "", style="dim")
    return table


def describe_fields(schema: dict) -> list[str]:
    """One line per property of a JSON Schema object: `name: type (bounds)`, with `?`
    after the name of a field that is not required and ` = value` after its default."""
    required = set(schema.get("required") or ())
    lines = []
    for name, prop in (schema.get("properties") or {}).items():
        line = f"{name}{'' if name in required else '?'}: {describe_property(prop)}"
        if "default" in prop:
            line += f" = {json.dumps(prop['default'])}"
        lines.append(line)
    return lines


def describe_property(prop: dict) -> str:
    """A JSON Schema property in a few words: `integer (≥ 2, ≤ 100000000)`."""
    if "enum" in prop:
        kind = " | ".join(json.dumps(v) for v in prop["enum"])
    elif "const" in prop:
        kind = json.dumps(prop["const"])
    elif "anyOf" in prop or "oneOf" in prop:
        kind = " | ".join(describe_property(p) for p in prop.get("anyOf") or prop["oneOf"])
    elif "$ref" in prop:
        kind = prop["$ref"].rsplit("/", 1)[-1]
    else:
        kind = prop.get("type", "any")
        if isinstance(kind, list):
            kind = " | ".join(kind)
        if kind == "array" and isinstance(prop.get("items"), dict):
            kind = f"array of {describe_property(prop['items'])}"
    bounds = [
        f"{sign} {_short(prop[key])}"
        for key, sign in (
            ("minimum", "≥"),
            ("exclusiveMinimum", ">"),
            ("maximum", "≤"),
            ("exclusiveMaximum", "<"),
        )
        if key in prop
    ]
    for key, sign, unit in (
        ("minLength", "≥", "characters"),
        ("maxLength", "≤", "characters"),
        ("minItems", "≥", "items"),
        ("maxItems", "≤", "items"),
    ):
        if prop.get(key):
            bounds.append(f"{sign} {prop[key]} {unit}")
    return f"{kind} ({', '.join(bounds)})" if bounds else kind


def list_types(client: Client, as_json: bool) -> int:
    """--list-types: GET /task-types, as a table or (--json) as the dispatcher said it."""
    task_types = client.task_types()
    if as_json:
        print(json.dumps({"task_types": task_types}))
    else:
        console = Console()
        if not console.is_terminal:  # a file or a pipe: no need to fold at 80 columns
            console = Console(width=max(console.width, 120))
        console.print(task_types_table(task_types))
    return cli.EXIT_OK


def summary_table(tasks: list[dict]) -> Table:
    colours = {"completed": "green", "failed": "red", "cancelled": "yellow"}
    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    table.add_column("task id", no_wrap=True, min_width=32)  # ids stay whole, to copy
    table.add_column("type")
    table.add_column("status")
    table.add_column("attempts", justify="right")
    table.add_column("result / error", overflow="fold", min_width=20)
    for t in tasks:
        status = f"[{colours.get(t['status'], 'white')}]{t['status']}[/]"
        table.add_row(t["task_id"], t["type"], status, str(t["attempts"]), summarize(t))
    return table


def count_statuses(tasks: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in tasks:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    return counts


def print_ids(task_ids: list[str], as_json: bool) -> None:
    print(json.dumps({"task_ids": task_ids}) if as_json else "\n".join(task_ids), flush=True)


def _queue_full(exc: ApiError, delay: float) -> None:
    """A 429 (the queue is full, MAX_PENDING_TASKS): say so on stderr before waiting."""
    cli.say(f"{exc.message}; trying again in {delay:.1f} s", logging.WARNING, "waiting: ")


def run(args: argparse.Namespace) -> int:
    if args.list_types:
        config = cli.load_config()
        return cli.api_call(config, lambda: list_types(connect(config), args.json))
    try:
        tasks = build_tasks(args)
    except InputError as exc:
        raise cli.CliError(str(exc), cli.EXIT_USAGE) from None
    config = cli.load_config()
    client = connect(config, args.retry_for)
    try:
        handles = submit(config, client, tasks, args.json)
    except cli.CliError as exc:
        if "MAX_PENDING_TASKS" in str(exc):
            raise cli.CliError(f"{exc} (gave up after --retry-for {args.retry_for:g} s)") from None
        raise
    task_ids = [h.id for h in handles]
    warn_unserved(client, tasks)
    if not args.wait:
        print_ids(task_ids, args.json)
        return cli.EXIT_OK
    if not args.json:
        cli.say(f"submitted {_plural(len(task_ids), 'task')}")
    try:  # no progress bar among JSON log lines
        finished = wait_with_progress(client, handles, show=not logs.json_mode())
    except KeyboardInterrupt:  # the tasks keep running: print what the user needs to find them
        print_ids(task_ids, args.json)
        cli.say(f"interrupted; {_plural(len(task_ids), 'task')} keep running", logging.WARNING)
        return cli.EXIT_INTERRUPTED
    except (DispatcherUnreachable, ApiError) as exc:
        print_ids(task_ids, args.json)
        what = cli.unreachable(config, exc) if isinstance(exc, DispatcherUnreachable) else exc
        raise cli.CliError(
            f"{what} while waiting; {_plural(len(task_ids), 'task')} submitted (ids on stdout)"
        ) from None
    failed = sum(t["status"] != "completed" for t in finished)
    if args.json:
        print(json.dumps({"tasks": finished, "failed": failed}))
    else:
        console = Console()
        if not console.is_terminal:  # a file or a pipe: no need to fold at 80 columns
            console = Console(width=max(console.width, 120))
        console.print(summary_table(finished))
        counts = ", ".join(f"{n} {status}" for status, n in count_statuses(finished).items())
        console.print(counts, style="red" if failed else "green", highlight=False)
    return cli.EXIT_FAILED if failed else cli.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)  # bad usage: argparse prints it and exits with status 2
    return cli.run(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
