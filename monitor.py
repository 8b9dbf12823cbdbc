#!/usr/bin/env python3
"""Watch the queue: task counts, throughput, queues (with their controls: paused,
max_in_flight, rate limit) and workers, from GET /stats, GET /queues and GET /workers.

    python3 monitor.py                  a live view, refreshed every second (Ctrl-C quits)
    python3 monitor.py --once           the same view, printed once
    python3 monitor.py --export json    {"stats": ..., "workers": [...]} on stdout
    python3 monitor.py --export csv     section,name,status,count rows on stdout

Runs with any python3: the first call creates .venv (see common/bootstrap.py). Talks
to the dispatcher through the client library (taskqueue/, docs/CLIENT.md).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from datetime import datetime, timezone

from common.bootstrap import ensure_venv

if __name__ == "__main__":
    ensure_venv()  # before any third-party import: re-runs this script inside .venv

from rich import box  # noqa: E402
from rich.console import Console, Group, RenderableType  # noqa: E402
from rich.live import Live  # noqa: E402
from rich.table import Table  # noqa: E402
from rich.text import Text  # noqa: E402

from common import cli  # noqa: E402
from common.config import Config  # noqa: E402
from common.statuses import STATUSES  # noqa: E402
from taskqueue import ApiError, Client, DispatcherUnreachable, NotFound  # noqa: E402

COLOURS = {
    "waiting": "blue",
    "pending": "cyan",
    "in_progress": "yellow",
    "completed": "green",
    "failed": "red",
    "cancelled": "magenta",
    "alive": "green",
    "stopping": "yellow",
    "stopped": "dim",
    "dead": "red",
}
CSV_HEADER = ("section", "name", "status", "count")
MAX_SHOWN_TASKS = 3  # current task ids listed per worker; the rest are counted

CSV_HELP = """\
--export csv columns (section,name,status,count), one row per:
  tasks,all,STATUS,N          tasks in STATUS (waiting, pending, in_progress, completed,
                              failed, cancelled)
  queue,QUEUE,STATUS,N        tasks of queue QUEUE in STATUS
  type,TYPE,STATUS,N          tasks of task type TYPE in STATUS
  worker,WORKER_ID,STATUS,N   a worker (alive, stopping, stopped or dead); N = attempts it
                              completed

--export json prints {"stats": <GET /stats>, "workers": <GET /workers "workers" list>}.

exit status: 0 ok (and Ctrl-C in the live view); 1 dispatcher unreachable or request
refused (--once, --export; the live view shows it in red and keeps trying); 2 bad usage
or configuration."""


# -- data -> rows and text (pure functions) ----------------------------------------------


def ordered_statuses(counts: dict[str, int]) -> list[str]:
    """The known statuses in lifecycle order, then any others the dispatcher reports."""
    return [*STATUSES, *sorted(s for s in counts if s not in STATUSES)]


def csv_rows(stats: dict, workers: list[dict]) -> list[tuple]:
    """The --export csv rows, header first."""
    rows: list[tuple] = [CSV_HEADER]
    tasks = stats.get("tasks", {})
    rows += [("tasks", "all", s, tasks.get(s, 0)) for s in ordered_statuses(tasks)]
    for section, key in (("queue", "queues"), ("type", "types")):
        for name, counts in sorted(stats.get(key, {}).items()):
            rows += [(section, name, s, counts.get(s, 0)) for s in ordered_statuses(counts)]
    rows += [
        ("worker", w["worker_id"], w["status"], w.get("attempts_completed", 0)) for w in workers
    ]
    return rows


def to_csv(rows: list[tuple]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def to_json(stats: dict, workers: list[dict]) -> str:
    return json.dumps({"stats": stats, "workers": workers}, indent=2)


def seconds_since(iso_time: str | None, now: float) -> float | None:
    """Seconds from an ISO 8601 time (as the API writes them) to `now` (epoch seconds)."""
    if not iso_time:
        return None
    try:
        when = datetime.fromisoformat(iso_time.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, now - when.timestamp())


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
    return f"{int(seconds // 86400)} d {int(seconds % 86400 // 3600)} h"


def task_progress(progress: dict[str, dict] | None) -> str:
    """A worker's running tasks that reported progress (GET /workers `progress`), one line
    each: the id's last 8 characters (its first ones are the time it was made), the
    percentage and the message."""
    if not progress:
        return "—"
    lines = [
        f"…{task_id[-8:]} {p['fraction']:.0%} {p['message']}".rstrip()
        for task_id, p in list(progress.items())[:MAX_SHOWN_TASKS]
    ]
    more = len(progress) - MAX_SHOWN_TASKS
    return "\n".join(lines + ([f"(+{more} more)"] if more > 0 else []))


def current_tasks(task_ids: list[str]) -> str:
    if not task_ids:
        return "—"
    shown = ", ".join(task_ids[:MAX_SHOWN_TASKS])
    more = len(task_ids) - MAX_SHOWN_TASKS
    return f"{shown} (+{more} more)" if more > 0 else shown


# -- the view ----------------------------------------------------------------------------


def render(
    stats: dict | None,
    workers: list[dict] | None,
    now: float,
    url: str,
    problem: str | None = None,
    updated: float | None = None,
    schedules: list[dict] | None = None,
    queues: list[dict] | None = None,
) -> RenderableType:
    """The whole screen: header, task counts, queues, workers, the periodic tasks' line,
    and a red problem line."""
    clock = datetime.fromtimestamp(now).strftime("%H:%M:%S")
    parts: list[RenderableType] = [
        Text.assemble(("taskqueue monitor", "bold"), f"  {url}  {clock}", style="")
    ]
    if problem:
        age = f"; last update {duration(now - updated)} ago" if updated else ""
        parts.append(Text(f"{problem}{age}", style="bold red"))
    if stats is not None:
        parts += [Text(""), tasks_table(stats), summary_line(stats)]
        parts += [Text(""), queues_table(stats, queues)]
    if workers is not None:
        parts += [Text(""), workers_table(workers, now)]
    if schedules:
        parts += [Text(""), schedules_line(schedules, now)]
    return Group(*parts)


def schedules_line(schedules: list[dict], now: float) -> Text:
    """`schedules 3 (1 paused, 1 failing)   next nightly in 2 h` (GET /schedules)."""
    paused = sum(not s["enabled"] for s in schedules)
    failing = [s["name"] for s in schedules if s["error"]]
    line = Text.assemble(("schedules ", "bold"), str(len(schedules)))
    notes = [f"{paused} paused"] if paused else []
    if failing:
        notes.append(f"{len(failing)} failing: {', '.join(failing[:3])}")
    if notes:
        line.append(f" ({'; '.join(notes)})", style="red" if failing else "")
    upcoming = sorted(
        (datetime.fromisoformat(s["next_run_at"]).timestamp(), s["name"])
        for s in schedules
        if s["next_run_at"]
    )
    if upcoming:
        moment, name = upcoming[0]
        line.append("   ")
        line.append("next ", style="bold")
        line.append(f"{name} in {duration(max(0.0, moment - now))}")
    return line


def tasks_table(stats: dict) -> Table:
    tasks = stats.get("tasks", {})
    statuses = ordered_statuses(tasks)
    table = Table(title="tasks", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    for s in statuses:
        table.add_column(s, justify="right", style=COLOURS.get(s, ""))
    table.add_column("total", justify="right", style="bold")
    table.add_row(*(str(tasks.get(s, 0)) for s in statuses), str(sum(tasks.values())))
    return table


def summary_line(stats: dict) -> Text:
    workers = stats.get("workers", {})
    return Text.assemble(
        ("throughput ", "bold"),
        f"{stats.get('throughput_per_minute', 0)} completed/min   ",
        ("oldest pending ", "bold"),
        f"{duration(stats.get('oldest_pending_age_seconds'))}   ",
        ("workers ", "bold"),
        (f"{workers.get('alive', 0)} alive", "green"),
        ", ",
        (f"{workers.get('dead', 0)} dead", "red" if workers.get("dead") else ""),
        ", ",
        f"{workers.get('stopped', 0)} stopped",
    )


def controls(queue: dict | None) -> Text:
    """A queue's controls in a few words: `paused`, `max 2 in flight`, `10 per 1 s`."""
    if not queue:
        return Text("")
    words = []
    if queue.get("paused"):
        words.append(("paused", "bold red"))
    if queue.get("max_in_flight") is not None:
        words.append((f"max {queue['max_in_flight']} in flight", "yellow"))
    if rate := queue.get("rate_limit"):
        words.append((f"{rate['count']} per {rate['per_seconds']:g} s", "yellow"))
    text = Text()
    for i, word in enumerate(words):
        text.append(("; " if i else "") + word[0], style=word[1])
    return text


def queues_table(stats: dict, settings: list[dict] | None = None) -> Table:
    """Each queue's counts by status (GET /stats), and its controls (GET /queues): a
    queue configured before it has tasks is listed too."""
    table = Table(title="queues", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    table.add_column("queue")
    for s in STATUSES:
        table.add_column(s, justify="right", style=COLOURS.get(s, ""))
    table.add_column("controls")
    queues = stats.get("queues", {})
    configured = {q["name"]: q for q in settings or ()}
    for name in sorted(queues.keys() | configured.keys()):
        counts = queues.get(name, {})
        table.add_row(
            name, *(str(counts.get(s, 0)) for s in STATUSES), controls(configured.get(name))
        )
    if not queues and not configured:
        table.add_row("(no tasks)", *("" for _ in STATUSES), "", style="dim")
    return table


def workers_table(workers: list[dict], now: float) -> Table:
    table = Table(title="workers", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    table.add_column("worker", no_wrap=True)
    table.add_column("status")
    table.add_column("last heartbeat", justify="right")
    table.add_column("current tasks", overflow="fold")
    table.add_column("progress", overflow="fold")
    table.add_column("attempts completed", justify="right")
    table.add_column("attempts failed", justify="right")
    for w in workers:
        status = w.get("status", "?")
        age = seconds_since(w.get("last_heartbeat"), now)
        table.add_row(
            w["worker_id"],
            Text(status, style=COLOURS.get(status, "")),
            "—" if age is None else f"{duration(age)} ago",
            current_tasks(w.get("current_tasks") or []),
            Text(task_progress(w.get("progress"))),
            str(w.get("attempts_completed", 0)),
            str(w.get("attempts_failed", 0)),
        )
    if not workers:
        table.add_row("(none yet)", "", "", "", "", "", "", style="dim")
    return table


# -- command line ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="monitor.py",
        description="Watch the dispatcher at DISPATCHER_URL: task counts by status,\n"
        "throughput, the oldest pending task, queues and workers. With several\n"
        "dispatchers in DISPATCHER_URL (comma-separated) it shows the one in use.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=CSV_HELP,
    )
    parser.add_argument("--once", action="store_true", help="print the view once and exit")
    parser.add_argument(
        "--export",
        choices=("json", "csv"),
        help="print the numbers as JSON or CSV on stdout and exit (columns below)",
    )
    parser.add_argument(
        "--interval",
        type=cli.positive_float,
        default=1.0,
        metavar="S",
        help="seconds between refreshes of the live view (default 1)",
    )
    return parser


def fetch(client: Client) -> tuple[dict, list[dict], list[dict]]:
    return client.stats(), client.workers(), client.queues()


def fetch_schedules(client: Client) -> list[dict] | None:
    """The periodic tasks, or None from a dispatcher that has none (older than them)."""
    try:
        return client.schedules.list()
    except NotFound:
        return None


def where(client: Client) -> str:
    """The dispatcher the view comes from; with several in DISPATCHER_URL, the one in use
    and how many there are (the client moves on when one does not answer)."""
    urls = client.urls
    if len(urls) == 1:
        return urls[0]
    return f"{client.url} (one of {len(urls)} dispatchers)"


def once(config: Config, export: str | None) -> int:
    client = Client(config=config)
    stats, workers, queues = cli.api_call(config, lambda: fetch(client))
    if export == "json":
        print(to_json(stats, workers))
    elif export == "csv":
        sys.stdout.write(to_csv(csv_rows(stats, workers)))
    else:
        console = Console()
        if not console.is_terminal:  # a file or a pipe: no need to fold at 80 columns
            console = Console(width=max(console.width, 120))
        found = cli.api_call(config, lambda: fetch_schedules(client))
        now = time.time()
        console.print(render(stats, workers, now, where(client), schedules=found, queues=queues))
    return cli.EXIT_OK


def live(config: Config, interval: float) -> int:
    """Refresh every `interval` seconds until Ctrl-C; an outage is shown, not fatal."""
    client = Client(config=config)
    stats: dict | None = None
    workers: list[dict] | None = None
    queues: list[dict] | None = None
    updated: float | None = None
    schedules: list[dict] | None = None
    console = Console()
    try:
        with Live(console=console, refresh_per_second=4, screen=False) as view:
            while True:
                problem = None
                try:
                    stats, workers, queues = fetch(client)
                    schedules = fetch_schedules(client)
                    updated = time.time()
                except DispatcherUnreachable as exc:
                    problem = f"{cli.unreachable(config, exc)}, retrying"
                except ApiError as exc:
                    problem = f"dispatcher refused the request: {exc.message}"
                here = where(client)
                view.update(
                    render(stats, workers, time.time(), here, problem, updated, schedules, queues)
                )
                time.sleep(interval)  # the refresh period of the screen
    except KeyboardInterrupt:
        return cli.EXIT_OK


def run(args: argparse.Namespace) -> int:
    config = cli.load_config()
    if args.once or args.export:
        return once(config, args.export)
    return live(config, args.interval)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # bad usage: argparse exits with status 2
    return cli.run(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
