"""Time the web dashboard's pages with 1,000,000 tasks in the database (issue 16).

    .venv/bin/python bench/dashboard_pages.py --database /dev/shm/tq_bench_dash_1m.db --write
    .venv/bin/python bench/dashboard_pages.py --write --vacuum --drop --database \
        'postgresql://postgres@127.0.0.1:5432/test?options=-csearch_path%3Dtq_bench_dash'

Seeds the database with N tasks through the storage's own operations, in process
(`submit` in batches of 5,000, `claim`, `finish`, `cancel`, `heartbeat`; no SQL here),
spread over the last three hours so that the overview's chart of the last hour has
data: 4 queues, 4 types, ~95 % completed, ~1 % failed for good (max_retries=0), ~1 %
that failed once and then completed, ~0.5 % cancelled, ~2 % pending (the newest
tasks), a few in progress, four live workers (their heartbeats go on while the pages
are timed), one stopped, one dead. A database that already holds N tasks is used again
(`--reseed` seeds it afresh); a PostgreSQL URL's schema (`options=-csearch_path%3D...`)
is created first and, with `--drop`, dropped at the end. `--vacuum` runs VACUUM
(ANALYZE) on its tables before timing: autovacuum's work, which a server with autovacuum
off (as the test server here) never does, leaving the planner without statistics and
every index full of the dead row versions the seeding's updates left.

Then the real dispatcher (`./start_dispatcher.sh`, DISPATCHER_PROCESSES=1 unless
`--processes`, LOG_LEVEL=WARNING) serves the pages, timed from this client: the first
overview of a fresh server process (it reads the chart's whole hour once) on
`--cold-starts` starts, then each page once to warm up and `--reps` times back to back
(median and p95), with the dispatcher's CPU time per request from /proc; then the
overview's refresh and the tasks page once each after the dashboard's totals (a count of
every task, cached TOTALS_TTL_S per process) have expired, `--expired-reps` times. The
storage reads behind the pages are timed in process as well.
Prints markdown; `--write` puts it in bench/DASHBOARD_RESULTS.md (a section per
database kind; the other kind's section is kept).
"""

from __future__ import annotations

import argparse
import html
import math
import os
import platform
import random
import re
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from procs import Ports, Procs, _give_up, children  # noqa: E402  (bench/procs.py)

from common.config import Config  # noqa: E402
from common.procs import wait_healthy  # noqa: E402
from common.statuses import STATUSES  # noqa: E402
from dispatcher import dashboard  # noqa: E402
from dispatcher.dashboard import _status_count  # noqa: E402
from dispatcher.storage import NewTask, Result, open_storage  # noqa: E402
from dispatcher.storage.browse import INDEXED_MAX, WINDOW, TaskFilter  # noqa: E402

RESULTS = ROOT / "bench" / "DASHBOARD_RESULTS.md"
LOGS = ROOT / "bench" / "out" / "dashboard"

BATCH = 5000  # tasks per submit
SPAN_S = 3 * 3600.0  # the seeded tasks' submissions spread over the last 3 hours
QUEUES = ("default", "emails", "reports", "images")
QUEUE_WEIGHTS = (0.55, 0.2, 0.15, 0.1)
TYPES = ("compute", "primes", "sleep", "trial_division")
FAIL_SHARE = 0.01  # max_retries=0 and a failed result: failed for good
FLAKY_SHARE = 0.01  # fails its first attempt, completed by its second
CANCEL_SHARE = 0.005  # cancelled while pending
PENDING_SHARE = 0.02  # the newest tasks are never claimed
LIVE = {"worker-a": 4, "worker-b": 4, "worker-c": 8, "worker-d": 2}  # id: concurrency
STOPPED, DEAD = "worker-e", "worker-f"
WORKERS = (*LIVE, STOPPED, DEAD)
LEASE_S = 120.0
HEARTBEAT_EVERY_S = 10.0
DEAD_AFTER = Config.worker_dead_after
# how long the dashboard keeps its totals (storage.stats(), a count of every task)
TOTALS_TTL_S = getattr(dashboard, "TOTALS_TTL_S", 1.0)
NO_MATCH = "zz-no-such-text-zz"


def payload(kind: str, j: int, rng: random.Random) -> dict:
    if kind == "compute":
        return {"operation": rng.choice(("double", "factorial", "fibonacci")), "value": j % 1000}
    if kind == "primes":
        return {"limit": rng.randrange(1000, 2_000_000)}
    if kind == "sleep":
        return {"seconds": round(rng.uniform(0.01, 2.0), 2)}
    return {"n": rng.randrange(10**6, 10**9)}


# -- the database ---------------------------------------------------------------------


def database_url(database: str) -> str:
    if database.startswith(("postgresql://", "postgres://", "sqlite:///")):
        return database
    return f"sqlite:///{Path(database).resolve()}"


def kind_of(url: str) -> str:
    return "SQLite" if url.startswith("sqlite:") else "PostgreSQL"


def pg_schema(url: str) -> str:
    m = re.search(r"search_path(?:%3D|=)(\w+)", url)
    if not m:
        raise SystemExit("a PostgreSQL URL needs its own schema: ?options=-csearch_path%3DNAME")
    return m.group(1)


def pg_schema_ddl(url: str, *statements: str) -> str | None:
    """CREATE or DROP the URL's schema, VACUUM its tables, SHOW a setting: the only
    statements this script sends itself. Returns the last one's first value, if any."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        for statement in statements:
            cur = db.execute(statement.format(schema=pg_schema(url)))
        row = cur.fetchone() if cur.description else None
        return None if row is None else str(row[0])


def pg_maintenance(url: str, vacuum: bool) -> str:
    """What autovacuum may have done to the seeded tables, and (`vacuum`) its work done
    now: the seeding updates each task two or three times (dead row versions in every
    index a status change touches), and the planner has no statistics until ANALYZE."""
    autovacuum = pg_schema_ddl(url, "SHOW autovacuum")
    said = f"the server's autovacuum is {autovacuum}"
    if not vacuum:
        return f"{said}; not vacuumed by this run"
    t = time.perf_counter()
    pg_schema_ddl(url, "VACUUM (ANALYZE) tasks, attempts, workers")
    return (
        f"{said}; `VACUUM (ANALYZE)` of its tables before timing ({time.perf_counter() - t:.0f} s)"
    )


def wipe(url: str) -> None:
    if url.startswith("sqlite:"):
        path = Path(Config(database_url=url).database_path())
        for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            p.unlink(missing_ok=True)
    else:
        pg_schema_ddl(url, "DROP SCHEMA IF EXISTS {schema} CASCADE", "CREATE SCHEMA {schema}")


def open_db(url: str):
    if not url.startswith("sqlite:"):
        pg_schema_ddl(url, "CREATE SCHEMA IF NOT EXISTS {schema}")
    return open_storage(Config(database_url=url))


def total(storage) -> int:
    return sum(storage.stats(time.time(), DEAD_AFTER)["tasks"].values())


def fate_of(r: float) -> str:
    """What becomes of a task, from a uniform random number."""
    for f, share in (("fail", FAIL_SHARE), ("flaky", FLAKY_SHARE), ("cancel", CANCEL_SHARE)):
        if r < share:
            return f
        r -= share
    return "ok"


def seed(storage, n: int, log: Callable[[str], None]) -> float:
    """N tasks through the storage's operations, submitted over the SPAN_S before now;
    returns the seconds it took."""
    rng = random.Random(16)
    t0 = time.time()
    start = t0 - SPAN_S
    batches = math.ceil(n / BATCH)
    step = SPAN_S / batches
    unclaimed_from = batches - max(1, round(batches * PENDING_SHARE))
    fate: dict[str, str] = {}  # task id -> "fail" | "flaky" (the others complete)
    for b in range(batches):
        at = start + b * step
        new, fates = [], []
        for j in range(b * BATCH, min(n, (b + 1) * BATCH)):
            f = fate_of(rng.random())
            kind = TYPES[j % len(TYPES)]
            queue = rng.choices(QUEUES, QUEUE_WEIGHTS)[0]
            new.append(
                NewTask(
                    type=kind,
                    queue=queue,
                    payload=payload(kind, j, rng),
                    priority=rng.choice((0, 0, 0, 0, 5)),
                    max_retries=0 if f == "fail" else 3,
                )
            )
            fates.append(f)
        ids = [task_id for task_id, _ in storage.submit(new, now=at)]
        for task_id, f in zip(ids, fates, strict=True):
            if f == "cancel":
                storage.cancel(task_id, now=at + 0.5)
            elif f != "ok":
                fate[task_id] = f
        if b >= unclaimed_from:
            continue
        worker = WORKERS[b % len(WORKERS)]
        got = storage.claim(worker, f"{worker}-1", QUEUES, 2 * BATCH, now=at + 1, lease_s=3600)
        chunks = 5
        for c in range(chunks):
            results = []
            for t in got[c::chunks]:
                f = fate.get(t["task_id"])
                if f == "fail" or (f == "flaky" and t["attempt"] == 1):
                    if f == "fail":
                        del fate[t["task_id"]]
                    error = f"ValueError: bad input {t['payload']}"
                    results.append(
                        Result(t["task_id"], t["lease_token"], worker, "failed", error=error)
                    )
                else:
                    value = {"result": rng.randrange(10**9)}
                    results.append(
                        Result(t["task_id"], t["lease_token"], worker, "completed", value)
                    )
                    fate.pop(t["task_id"], None)
            storage.finish(results, now=at + 2 + (c + 1) / chunks * step * 0.9)
        if b % 20 == 0 or b == batches - 1:
            log(f"  seeded {min(n, (b + 1) * BATCH):,} of {n:,} ({time.time() - t0:.0f} s)")
    now = time.time()
    storage.heartbeat(
        STOPPED, f"{STOPPED}-1", None, now=now - 1800, lease_s=LEASE_S, state="stopped"
    )
    return time.time() - t0


def keep_alive(storage, now: float) -> None:
    """The live workers' heartbeats (with their concurrency), each holding its
    concurrency's worth of tasks in progress; the leases run LEASE_S from now."""
    held = {w["worker_id"]: len(w["current_tasks"]) for w in storage.workers(now, DEAD_AFTER)}
    for worker, concurrency in LIVE.items():
        storage.heartbeat(worker, f"{worker}-1", None, now, LEASE_S, concurrency=concurrency)
        if held.get(worker, 0) < concurrency:
            storage.claim(
                worker, f"{worker}-1", QUEUES, concurrency - held.get(worker, 0), now, LEASE_S
            )


class Heartbeats(threading.Thread):
    def __init__(self, storage):
        super().__init__(daemon=True)
        self.storage = storage
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(HEARTBEAT_EVERY_S):
            for worker, concurrency in LIVE.items():
                self.storage.heartbeat(
                    worker, f"{worker}-1", None, time.time(), LEASE_S, concurrency=concurrency
                )


# -- timing -----------------------------------------------------------------------------


def ms(samples: list[float]) -> tuple[float, float]:
    """(median, p95 by nearest rank) in ms."""
    ordered = sorted(samples)
    p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
    return statistics.median(ordered) * 1000, p95 * 1000


def cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes have used so far."""
    ticks = 0
    for pid in pids:
        fields_after_name = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields_after_name[11]) + int(fields_after_name[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def timed(call: Callable[[], object], reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        call()
        out.append(time.perf_counter() - t)
    return out


@dataclass
class PageTime:
    name: str
    request: str
    read: str  # which storage read serves it
    median: float = 0.0
    p95: float = 0.0
    cpu: float = 0.0  # the server processes' CPU ms per request, back to back
    size: int = 0  # bytes of the page


@dataclass
class Run:
    kind: str
    url: str
    n: int
    processes: int
    reps: int
    expired_reps: int
    seeded_s: float | None = None
    newest_age_s: float = 0.0
    load_start: float = field(default_factory=lambda: os.getloadavg()[0])
    maintenance: str = ""  # PostgreSQL: autovacuum's setting, and any VACUUM made here
    counts: dict = field(default_factory=dict)
    reads: list[tuple[str, float, float, str]] = field(default_factory=list)
    cold: list[float] = field(default_factory=list)
    pages: list[PageTime] = field(default_factory=list)
    slow: list[str] = field(default_factory=list)  # median over the line, back to back
    expired: list[tuple[str, float]] = field(default_factory=list)  # (page, ms) re-reading totals


def storage_reads(storage, run: Run) -> None:
    """The reads behind the pages, in process (median and p95 of 5; 3 for the hour)."""
    now = time.time()
    newest = storage.find_tasks(TaskFilter("completed"), None, 1, 10**9).tasks  # a walk
    busy = (newest[0]["finished_at"] if newest else now) - 60
    fail = TaskFilter("failed")
    cases = [
        (
            "stats(): counts by status, queue and type",
            lambda: storage.stats(time.time(), DEAD_AFTER),
            5,
            f"every entry of tasks_counts; the dashboard's totals, once per {TOTALS_TTL_S:g} s "
            "per process",
        ),
        (
            "finished_since(an hour ago)",
            lambda: storage.finished_since(time.time() - 3600),
            3,
            "the chart's hour, once per process",
        ),
        (
            "finished_since(last seeded minute)",
            lambda: storage.finished_since(busy),
            5,
            f"{run.n / SPAN_S * 60:,.0f} tasks a minute; each overview reads its last minute",
        ),
        (
            "count_matching(status=failed)",
            lambda: storage.count_matching(fail),
            5,
            "bulk confirmation",
        ),
    ]
    for name, call, reps, note in cases:
        call()
        run.reads.append((name, *ms(timed(call, reps)), note))


class Pages:
    """The dashboard's requests on one HTTP session."""

    def __init__(self, url: str):
        self.url = url
        self.http = requests.Session()

    def get(self, path: str) -> requests.Response:
        r = self.http.get(self.url + path, timeout=120)
        r.raise_for_status()
        return r

    def post(self, path: str, data: dict) -> requests.Response:
        r = self.http.post(self.url + path, data=data, headers={"Origin": self.url}, timeout=120)
        r.raise_for_status()
        return r


def older_link(page: str) -> str:
    m = re.search(r'<a href="([^"]+)" id="older">', page)
    if not m:
        raise SystemExit("the tasks page has no older link")
    return html.unescape(m.group(1))


def first_task(page: str) -> str:
    m = re.search(r'href="/dashboard/task/([0-9a-f-]+)"', page)
    if not m:
        raise SystemExit("the tasks page lists no task")
    return m.group(1)


def read_path(stats: dict, where: TaskFilter) -> str:
    """Which read find_tasks makes for `where` (as dashboard.tasks calls it)."""
    count = _status_count(stats, where)
    if where.status is not None and (count or 0) <= INDEXED_MAX:
        if count is None:
            return (
                f"index range of {where.status}, {where.queue} and {where.type} (count not known)"
            )
        return f"index range of {count:,} {where.status}"
    return f"walk of at most {WINDOW:,} ids"


def time_pages(pages: Pages, run: Run, stats: dict, server: list[int]) -> None:
    queue, kind, worker = "emails", "primes", "worker-c"
    first = pages.get("/dashboard/tasks").text
    failed = pages.get("/dashboard/tasks?status=failed").text
    task_id = first_task(failed)

    def tasks(name: str, where: TaskFilter, query: str):
        return (
            name,
            "GET /dashboard/tasks" + query,
            read_path(stats, where),
            lambda: pages.get("/dashboard/tasks" + query),
        )

    specs = [
        (
            "overview",
            "GET /",
            "pending and in progress by queue (index ranges), last minute, workers, chart",
            lambda: pages.get("/"),
        ),
        (
            "overview fragment",
            "GET /dashboard/overview",
            "pending and in progress by queue (index ranges), last minute, workers, chart",
            lambda: pages.get("/dashboard/overview"),
        ),
        tasks("tasks, first page", TaskFilter(), ""),
        (
            "tasks, second page",
            "GET /dashboard/tasks?before=<the first page's last id>",
            f"walk of at most {WINDOW:,} ids",
            lambda: pages.get(older_link(first)),
        ),
        tasks("status=completed", TaskFilter("completed"), "?status=completed"),
        tasks("status=failed", TaskFilter("failed"), "?status=failed"),
        tasks("status=cancelled", TaskFilter("cancelled"), "?status=cancelled"),
        tasks("status=in_progress", TaskFilter("in_progress"), "?status=in_progress"),
        tasks(
            "status=pending, queue", TaskFilter("pending", queue), f"?status=pending&queue={queue}"
        ),
        tasks(
            "status=completed, queue and type",
            TaskFilter("completed", queue, kind),
            f"?status=completed&queue={queue}&type={kind}",
        ),
        tasks(
            "status=completed, a queue without any",
            TaskFilter("completed", "alerts"),
            "?status=completed&queue=alerts",
        ),
        tasks("type", TaskFilter(type=kind), f"?type={kind}"),
        tasks("worker", TaskFilter(worker=worker), f"?worker={worker}"),
        tasks("text that matches nothing", TaskFilter(text=NO_MATCH), f"?q={NO_MATCH}"),
        tasks(
            "status=failed, text that matches nothing",
            TaskFilter("failed", text=NO_MATCH),
            f"?status=failed&q={NO_MATCH}",
        ),
        (
            "task",
            "GET /dashboard/task/<failed task>",
            "one task, its history",
            lambda: pages.get(f"/dashboard/task/{task_id}"),
        ),
        (
            "workers",
            "GET /dashboard/workers",
            "workers, tasks in progress",
            lambda: pages.get("/dashboard/workers"),
        ),
        (
            "bulk retry confirmation",
            "POST /dashboard/tasks/bulk action=retry",
            "count of failed (index range)",
            lambda: pages.post("/dashboard/tasks/bulk", {"action": "retry"}),
        ),
        (
            "bulk cancel confirmation, queue",
            f"POST /dashboard/tasks/bulk action=cancel queue={queue}",
            "count of pending (index range)",
            lambda: pages.post("/dashboard/tasks/bulk", {"action": "cancel", "queue": queue}),
        ),
    ]
    for name, request, read, call in specs:
        size = len(call().content)  # the warm-up
        cpu = cpu_s(server)
        p = PageTime(name, request, read, *ms(timed(call, run.reps)), size=size)
        p.cpu = (cpu_s(server) - cpu) / run.reps * 1000
        run.pages.append(p)
        print(f"  {name}: median {p.median:.1f} ms, p95 {p.p95:.1f} ms, "
              f"server CPU {p.cpu:.1f} ms", flush=True)  # fmt: skip
    for _ in range(run.expired_reps):
        for name, path in (
            ("overview fragment", "/dashboard/overview"),
            ("tasks", "/dashboard/tasks"),
        ):
            time.sleep(TOTALS_TTL_S + 0.5)
            run.expired.append((name, timed(lambda: pages.get(path), 1)[0] * 1000))  # noqa: B023
            print(f"  {name}, its totals expired: {run.expired[-1][1]:.0f} ms", flush=True)


def start_dispatcher(procs: Procs, url: str, processes: int, name: str) -> tuple[object, str]:
    port = procs.ports.take()
    base = f"http://127.0.0.1:{port}"
    env = {
        "LOG_LEVEL": "WARNING",
        "DISPATCHER_HOST": "127.0.0.1",
        "DISPATCHER_PORT": str(port),
        "DISPATCHER_URL": base,
        "DATABASE_URL": url,
        "DISPATCHER_PROCESSES": str(processes),
    }
    proc = procs.start(name, "dispatcher", ["./start_dispatcher.sh"], env)
    wait_healthy(proc, base, 120.0, _give_up, every=0.02)
    return proc, base


def measure(args: argparse.Namespace, database: str, ports: Ports) -> Run:
    url = database_url(database)
    kind = kind_of(url)
    print(f"{kind}: {database}", flush=True)
    storage = open_db(url)
    try:
        have = total(storage)
        seeded_s = None
        if have != args.tasks or args.reseed:
            if have and not args.reseed:
                raise SystemExit(f"{database} holds {have:,} tasks, not {args.tasks:,}: --reseed")
            if have:
                storage.close()
                wipe(url)
                storage = open_db(url)
            print(f"  seeding {args.tasks:,} tasks", flush=True)
            seeded_s = seed(storage, args.tasks, lambda line: print(line, flush=True))
        else:
            print(f"  reusing its {have:,} tasks", flush=True)
        maintenance = "" if url.startswith("sqlite:") else pg_maintenance(url, args.vacuum)
        if maintenance:
            print(f"  {maintenance}", flush=True)
        now = time.time()
        keep_alive(storage, now)
        newest = storage.find_tasks(TaskFilter(), None, 1, None).tasks
        newest_age = now - newest[0]["created_at"] if newest else 0.0
        if newest_age > 900:
            note = f"the newest task is {newest_age / 60:.0f} min old: the chart's hour holds"
            print(f"  note: {note} fewer tasks than right after seeding (--reseed)", flush=True)
        stats = storage.stats(now, DEAD_AFTER)
        run = Run(kind, url, args.tasks, args.processes, args.reps, args.expired_reps)
        run.seeded_s, run.newest_age_s, run.counts = seeded_s, newest_age, stats["tasks"]
        run.maintenance = maintenance
        storage_reads(storage, run)
        for name, median, p95, _ in run.reads:
            print(f"  {name}: median {median:.1f} ms, p95 {p95:.1f} ms", flush=True)
        beats = Heartbeats(storage)
        beats.start()
        try:
            with Procs(LOGS, ports) as procs:
                for k in range(args.cold_starts):
                    proc, base = start_dispatcher(procs, url, args.processes, f"{kind}-{k}")
                    pages = Pages(base)
                    run.cold += timed(lambda: pages.get("/"), 1)  # noqa: B023
                    print(
                        f"  cold overview, start {k + 1}: {run.cold[-1] * 1000:.0f} ms", flush=True
                    )
                    if k < args.cold_starts - 1:
                        pages.http.close()
                        procs.close()
                try:
                    time_pages(pages, run, stats, children(proc.pid))
                except requests.RequestException as exc:
                    state = "running" if proc.alive() else "gone"
                    raise SystemExit(f"{exc}\nthe dispatcher ({state}):\n{proc.log()}") from exc
                pages.http.close()
        finally:
            beats.stop.set()
            beats.join()
        run.slow = [p.name for p in run.pages if p.median > args.slow_ms]
        return run
    finally:
        storage.close()
        if args.drop and not url.startswith("sqlite:"):
            pg_schema_ddl(url, "DROP SCHEMA IF EXISTS {schema} CASCADE")
            print(f"  dropped schema {pg_schema(url)}", flush=True)


# -- the report ---------------------------------------------------------------------------


def machine(load_start: float) -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = 0.0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal"):
            mem = int(line.split()[1]) / 2**20
    return (
        f"{os.cpu_count()} CPUs (`nproc`), {model}, {mem:.1f} GiB; Python "
        f"{platform.python_version()}; 1-minute load average {load_start:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end (other work on the machine slows every page)"
    )


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def shown_url(url: str) -> str:
    return unquote(url)


def section(run: Run, command: str, started: datetime, slow_ms: float) -> str:
    c = run.counts
    mix = ", ".join(f"{c[s]:,} {s}" for s in STATUSES if c.get(s))
    cold = ", ".join(f"{t * 1000:,.0f}" for t in run.cold)
    lines = [
        f"## {run.kind}",
        "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC; commit `{commit()}`",
        f"- machine: {machine(run.load_start)}",
        f"- database: `{shown_url(run.url)}`, {run.n:,} tasks: {mix}",
        (
            f"- seeded by this run in {run.seeded_s:.0f} s"
            if run.seeded_s is not None
            else "- seeded by an earlier run"
        )
        + f"; the newest task was {run.newest_age_s / 60:.0f} min old when the timing began"
        + (f"; {run.maintenance}" if run.maintenance else ""),
        f"- dispatcher: `./start_dispatcher.sh`, DISPATCHER_PROCESSES={run.processes}, "
        "LOG_LEVEL=WARNING, the rest `.env`'s defaults; client: one `requests` session on "
        "the same machine",
        f"- command: `{command}`",
        "",
        f"First overview of a fresh server process (reads the chart's hour once, and the "
        f"counts), on {len(run.cold)} starts: **{cold} ms**.",
        "",
        f"Each page once to warm up, then {run.reps} requests back to back (median, p95). "
        "Server CPU: the dispatcher processes' user + system time per request, the mean "
        "over the back-to-back ones (from /proc; it includes any request that re-read the "
        "totals and the reaper's sweeps; other load on the machine stretches the wall times "
        "far more than this"
        + ("; PostgreSQL's own CPU is not in it" if run.kind == "PostgreSQL" else "")
        + "):",
        "",
        "| page | request | read | median ms | p95 ms | server CPU ms | page KB |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for p in run.pages:
        lines.append(
            f"| {p.name} | `{p.request}` | {p.read} | {p.median:.1f} | {p.p95:.1f} | "
            f"{p.cpu:.0f} | {p.size / 1024:.0f} |"
        )
    expired = ", ".join(f"{name} {t:,.0f} ms" for name, t in run.expired)
    lines += [
        "",
        f"The request that finds the dashboard's totals (a count of every task) older than "
        f"{TOTALS_TTL_S:g} s reads them again first; once each after {TOTALS_TTL_S + 0.5:g} s "
        f"of quiet: {expired or 'not measured'}.",
        "",
        "The storage reads behind them, in process (no HTTP):",
        "",
        "| read | median ms | p95 ms | when |",
        "|---|---:|---:|---|",
    ]
    lines += [f"| `{name}` | {m:.1f} | {p:.1f} | {note} |" for name, m, p, note in run.reads]
    lines.append("")
    line = f"{slow_ms:.0f} ms"
    lines.append(f"Median above {line}, back to back: {', '.join(run.slow) or 'none'}.")
    return "\n".join(lines) + "\n"


HEADER = """# Dashboard page times at 1,000,000 tasks (`bench/dashboard_pages.py`)

Issue 16: the dashboard's pages stay fast with 10^6 tasks in the database. Written by
`bench/dashboard_pages.py --write`; each database kind's section is replaced by the
next run on it, and names the commit it measured. How the pages are kept fast:
docs/PERFORMANCE.md, "Dashboard pages at 10^6 tasks".
"""


def write(sections: dict[str, str]) -> None:
    """Replace these kinds' sections of RESULTS (each between its markers), keep others."""
    old = RESULTS.read_text() if RESULTS.exists() else ""
    kept = {}
    for m in re.finditer(r"<!-- (\w+) -->\n(.*?)<!-- /\1 -->\n", old, re.S):
        kept[m.group(1)] = m.group(2)
    kept.update(sections)
    body = [HEADER]
    for kind in ("SQLite", "PostgreSQL"):
        if kind in kept:
            body.append(f"<!-- {kind} -->\n{kept[kind]}<!-- /{kind} -->\n")
    RESULTS.write_text("\n".join(body))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python bench/dashboard_pages.py", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--database",
        action="append",
        required=True,
        help="a SQLite file or a postgresql:// URL with its own schema; repeatable",
    )
    p.add_argument("--tasks", type=int, default=1_000_000)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--expired-reps", type=int, default=1)
    p.add_argument("--cold-starts", type=int, default=3)
    p.add_argument("--processes", type=int, default=1, help="DISPATCHER_PROCESSES")
    p.add_argument("--reseed", action="store_true", help="seed afresh even if it holds N tasks")
    p.add_argument("--drop", action="store_true", help="drop a PostgreSQL schema at the end")
    p.add_argument(
        "--vacuum",
        action="store_true",
        help="PostgreSQL: VACUUM (ANALYZE) the tables before timing (autovacuum's work)",
    )
    p.add_argument("--slow-ms", type=float, default=300.0)
    p.add_argument("--write", action="store_true", help="write bench/DASHBOARD_RESULTS.md")
    args = p.parse_args(argv)
    command = " ".join(["python bench/dashboard_pages.py", shlex.join(argv)])
    ports = Ports()
    sections = {}
    for database in args.database:
        started = datetime.now(UTC)
        run = measure(args, database, ports)
        sections[run.kind] = section(run, command, started, args.slow_ms)
        print("\n" + sections[run.kind], flush=True)
        if args.write:  # after each database: a later one's failure keeps this one's
            write(sections)
            print(f"wrote {RESULTS.relative_to(ROOT)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
