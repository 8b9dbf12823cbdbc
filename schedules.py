#!/usr/bin/env python3
"""List, add, remove, pause and resume periodic tasks (docs/SCHEDULING.md).

    python3 schedules.py [list] [--json]             every schedule, as a table
    python3 schedules.py add NAME (--cron EXPR | --every SECONDS) --type TYPE
                         [--payload JSON] [--queue Q] [--priority N] [--timezone TZ]
                         [--catch-up one|none|all] [--paused]
    python3 schedules.py rm NAME
    python3 schedules.py pause NAME | resume NAME

Runs with any python3: the first call creates .venv (see common/bootstrap.py). Talks
to the dispatcher through the client library (`client.schedules`, docs/CLIENT.md).
Exit status: 0 done, 1 refused or unreachable (one line on stderr), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys

from common.bootstrap import ensure_venv

if __name__ == "__main__":
    ensure_venv()  # before any third-party import: re-runs this script inside .venv

from rich import box  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.table import Table  # noqa: E402

from common import cli  # noqa: E402
from common.config import Config  # noqa: E402
from taskqueue import Client  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="schedules.py", description="Periodic tasks of the dispatcher (DISPATCHER_URL)."
    )
    commands = parser.add_subparsers(dest="command")
    listing = commands.add_parser("list", help="every schedule (the default)")
    listing.add_argument("--json", action="store_true", help="the schedules as JSON")
    add = commands.add_parser("add", help="a new schedule")
    add.add_argument("name")
    when = add.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help="a cron expression, e.g. '*/5 * * * *'")
    when.add_argument("--every", type=cli.positive_int, help="seconds between ticks")
    add.add_argument("--type", required=True, help="the task type each tick submits")
    add.add_argument("--payload", default="{}", help="the task's payload, a JSON object")
    add.add_argument("--queue")
    add.add_argument("--priority", type=int)
    add.add_argument("--timezone", help="IANA time zone the cron is read in (default UTC)")
    add.add_argument("--catch-up", choices=("one", "none", "all"), dest="catch_up")
    add.add_argument("--paused", action="store_true", help="created disabled")
    add.add_argument("--json", action="store_true", help="the schedule as JSON")
    for name, text in (("rm", "delete"), ("pause", "disable"), ("resume", "enable again")):
        command = commands.add_parser(name, help=f"{text} a schedule")
        command.add_argument("name")
        command.add_argument("--json", action="store_true", help="the schedule as JSON")
    args = parser.parse_args(argv)
    if args.command is None:
        args.command, args.json = "list", False
    if args.command == "add":
        try:
            args.payload = json.loads(args.payload)
        except ValueError as exc:
            parser.error(f"--payload is not JSON: {exc}")
        if not isinstance(args.payload, dict):
            parser.error("--payload must be a JSON object")
    return args


def when(schedule: dict) -> str:
    return schedule["cron"] or f"every {schedule['every']} s"


def task_of(template: dict) -> str:
    queue = template.get("queue")
    return f"{template.get('type')}" + (f" ({queue})" if queue else "")


def table(schedules: list[dict]) -> Table:
    out = Table(box=box.SIMPLE_HEAD, show_edge=False)
    for column in ("name", "when", "timezone", "task", "enabled", "next run", "last run"):
        out.add_column(column)
    out.add_column("last task", overflow="fold")
    out.add_column("error", overflow="fold", style="red")
    for s in schedules:
        out.add_row(
            escape(s["name"]),
            escape(when(s)),
            s["timezone"],
            escape(task_of(s["task"])),
            "yes" if s["enabled"] else "[yellow]paused[/]",
            s["next_run_at"] or "-",
            s["last_run_at"] or "-",
            s["last_task_id"] or "-",
            escape(s["error"] or ""),
        )
    return out


def run(args: argparse.Namespace) -> int:
    config: Config = cli.load_config()
    client = Client(config.dispatcher_url, config.api_token, config=config)
    schedules = client.schedules
    with client:
        if args.command == "list":
            found = cli.api_call(config, schedules.list)
            if args.json:
                print(json.dumps({"schedules": found}))
            elif not found:
                print("no schedules")
            else:
                console = Console()
                if not console.is_terminal:
                    console = Console(width=max(console.width, 160))
                console.print(table(found))
            return cli.EXIT_OK
        if args.command == "rm":
            cli.api_call(config, lambda: schedules.delete(args.name))
            print(json.dumps({"name": args.name, "deleted": True}) if args.json else "deleted")
            return cli.EXIT_OK
        if args.command == "add":
            options = {k: getattr(args, k) for k in ("queue", "priority") if getattr(args, k)}
            fields = dict(cron=args.cron, every=args.every, timezone=args.timezone)
            fields.update(catch_up=args.catch_up, enabled=False if args.paused else None)
            schedule = cli.api_call(
                config,
                lambda: schedules.create(args.name, args.type, args.payload, **fields, **options),
            )
        else:
            change = schedules.pause if args.command == "pause" else schedules.resume
            schedule = cli.api_call(config, lambda: change(args.name))
    if args.json:
        print(json.dumps(schedule))
    else:
        state = "enabled" if schedule["enabled"] else "paused"
        next_run = schedule["next_run_at"] or "-"
        print(f"{schedule['name']}: {when(schedule)}, {state}, next run {next_run}")
    return cli.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)  # bad usage: argparse prints it and exits with status 2
    return cli.run(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
