#!/usr/bin/env python3
"""List queues, pause and resume them, and set their limits (GET /queues, PUT /queues).

    python3 queues.py                         every queue: counts, paused, limits (a table)
    python3 queues.py --json                  the same as JSON ({"queues": [...]})
    python3 queues.py pause NAME              hand out nothing more of NAME
    python3 queues.py resume NAME             hand out its tasks again
    python3 queues.py set NAME --max-in-flight 2 --rate 10/1
    python3 queues.py set NAME --max-in-flight none --rate none   no limits

Runs with any python3: the first call creates .venv (see common/bootstrap.py). Talks
to the dispatcher through the client library (taskqueue/, docs/CLIENT.md).
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
from rich.table import Table  # noqa: E402

from common import cli  # noqa: E402
from common.statuses import STATUSES  # noqa: E402
from taskqueue import Client  # noqa: E402

NONE = "none"  # the word that removes a limit

EPILOG = """\
examples:
  python3 queues.py pause emails
  python3 queues.py set emails --max-in-flight 2        at most 2 running at once
  python3 queues.py set emails --rate 100/60            at most 100 claims a minute
  python3 queues.py set emails --rate none              no rate limit

exit status: 0 ok; 1 dispatcher unreachable or request refused; 2 bad usage or
configuration."""


# -- arguments -------------------------------------------------------------------------


def max_in_flight(text: str) -> int | None:
    """--max-in-flight: a whole number >= 1, or `none`."""
    if text.strip().lower() == NONE:
        return None
    return cli.positive_int(text)


def rate(text: str) -> dict | None:
    """--rate COUNT/SECONDS (10/1: ten claims a second), or `none`."""
    if text.strip().lower() == NONE:
        return None
    count, slash, seconds = text.partition("/")
    if not slash:
        raise argparse.ArgumentTypeError(f"must be COUNT/SECONDS (e.g. 10/1) or none, not {text!r}")
    return {"count": cli.positive_int(count.strip()), "per_seconds": cli.positive_float(seconds)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="queues.py",
        description="List the queues of the dispatcher at DISPATCHER_URL, pause and resume\n"
        "them, and set their limits (enforced across every worker and dispatcher).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    parser.add_argument("--json", action="store_true", help="print JSON on stdout")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("list", help="every queue (the default)")
    for name, what in (
        ("pause", "hand out no more tasks of the queue NAME"),
        ("resume", "hand out the tasks of the queue NAME again"),
    ):
        command = commands.add_parser(name, help=what)
        command.add_argument("name", metavar="NAME")
    change = commands.add_parser("set", help="set the limits of the queue NAME")
    change.add_argument("name", metavar="NAME")
    change.add_argument(
        "--max-in-flight",
        type=max_in_flight,
        default=argparse.SUPPRESS,  # left out: not changed
        metavar="N|none",
        help="at most N of its tasks in progress at once; none: no limit",
    )
    change.add_argument(
        "--rate",
        type=rate,
        default=argparse.SUPPRESS,
        metavar="COUNT/SECONDS|none",
        help="at most COUNT claims in any SECONDS window; none: no limit",
    )
    return parser


def changes_of(args: argparse.Namespace) -> dict:
    """The settings `set` changes: only the options given (none: remove the limit)."""
    changes: dict = {}
    if hasattr(args, "max_in_flight"):
        changes["max_in_flight"] = args.max_in_flight
    if hasattr(args, "rate"):
        changes["rate_limit"] = args.rate
    return changes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "set" and not changes_of(args):
        parser.error("set needs --max-in-flight or --rate (or both)")
    return args


# -- output ------------------------------------------------------------------------------


def limits(queue: dict) -> tuple[str, str]:
    """(max in flight, rate) as the table shows them."""
    cap = "—" if queue["max_in_flight"] is None else str(queue["max_in_flight"])
    r = queue["rate_limit"]
    return cap, "—" if r is None else f"{r['count']} per {r['per_seconds']:g} s"


def queues_table(queues: list[dict]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    table.add_column("queue")
    table.add_column("state")
    table.add_column("max in flight", justify="right")
    table.add_column("rate limit", justify="right")
    for s in STATUSES:
        table.add_column(s, justify="right")
    for q in queues:
        state = "[bold red]paused[/]" if q["paused"] else "[green]active[/]"
        counts = q.get("counts", {})
        table.add_row(q["name"], state, *limits(q), *(str(counts.get(s, 0)) for s in STATUSES))
    if not queues:
        table.add_row("(no queues yet)", *("" for _ in range(3 + len(STATUSES))), style="dim")
    return table


def settings_line(queue: dict) -> str:
    cap, per = limits(queue)
    state = "paused" if queue["paused"] else "active"
    return f"{queue['name']}: {state}, max in flight {cap}, rate limit {per}"


def run(args: argparse.Namespace) -> int:
    config = cli.load_config()
    client = Client(config=config)
    if args.command in (None, "list"):
        queues = cli.api_call(config, client.queues)
        if args.json:
            print(json.dumps({"queues": queues}, indent=2))
        else:
            console = Console()
            if not console.is_terminal:
                console = Console(width=max(console.width, 140))
            console.print(queues_table(queues))
        return cli.EXIT_OK
    if args.command == "pause":
        got = cli.api_call(config, lambda: client.pause_queue(args.name))
    elif args.command == "resume":
        got = cli.api_call(config, lambda: client.resume_queue(args.name))
    else:
        got = cli.api_call(config, lambda: client.set_queue(args.name, **changes_of(args)))
    print(json.dumps(got) if args.json else settings_line(got))
    return cli.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)  # bad usage: argparse prints it and exits with status 2
    return cli.run(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
