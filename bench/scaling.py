#!/usr/bin/env python3
"""W1-style throughput on SQLite with one dispatcher, PostgreSQL with one and PostgreSQL
with two, and the CPU each part of the system spends per task (issue 7's measurement).

    .venv/bin/python bench/scaling.py [--tasks N] [--reps R] [--database-url URL]

Each run: fresh dispatcher(s) and database (a new SQLite file, or a new schema on the
PostgreSQL server, dropped afterwards, on error too), N no-op `compute/double` tasks
submitted with POST /submit-tasks in batches of 1,000 (one client thread per
dispatcher), then 4 workers started with .env's defaults and LOG_LEVEL=WARNING, timed
from their launch until GET /stats counts all N finished. With two dispatchers the
workers' DISPATCHER_URL lists both ("a,b" or "b,a").

CPU seconds (utime + stime from /proc) are read at the submission, at the workers'
launch and when the last task is counted: the dispatchers' process groups, the workers'
groups, this process, the PostgreSQL backends serving our dispatchers (found by their
application_name), the whole PostgreSQL server (postmaster and its children), and the
machine (/proc/stat). The setups are interleaved across repetitions (A B C A B C ...)
because this VM's speed drifts; cells are medians (min-max).

Writes bench/SCALING_RESULTS.md (and prints it), bench/out/scaling/results.json and the
processes' logs under bench/out/scaling/. Uses ports 5400-5499 (bench/procs.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import statistics
import sys
import threading
import time
import uuid
from contextlib import closing, contextmanager
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project root

from common.bootstrap import ensure_venv  # noqa: E402

if __name__ == "__main__":
    ensure_venv("requirements.txt")  # psycopg is one of the dispatcher's requirements

import psycopg  # noqa: E402
import report  # noqa: E402
from procs import BenchError, Ports, Procs  # noqa: E402

from common.client import Client  # noqa: E402
from common.config import Config  # noqa: E402
from common.procs import established_ports  # noqa: E402
from dispatcher.storage import NewTask, Result, open_storage  # noqa: E402

BENCH = Path(__file__).resolve().parent
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
SUBMIT_BATCH = 1_000  # tasks per POST /submit-tasks (MAX_BATCH's default)
WORKERS = 4
STATS_EVERY_S = 0.02  # completion probe period (GET /stats), as cluster_bench
STATS_PROBES = 50  # GET /stats calls timed after a run, to price the probing
RUN_TIMEOUT_S = 300.0
BATCH_SIZES = (1, 10, 100, 1000)  # storage section: tasks per claim and per finish
BATCH_TASKS = {1: 500, 10: 2_000, 100: 4_000, 1000: 8_000}  # tasks measured per size
TICK = os.sysconf("SC_CLK_TCK")
SETUPS = {
    "sqlite-1": ("SQLite, 1 dispatcher", "sqlite", 1),
    "pg-1": ("PostgreSQL, 1 dispatcher", "postgresql", 1),
    "pg-2": ("PostgreSQL, 2 dispatchers", "postgresql", 2),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=".venv/bin/python bench/scaling.py", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--tasks", type=int, default=5_000, help="tasks per run (default 5,000)")
    p.add_argument("--reps", type=int, default=3, help="repetitions of each setup (default 3)")
    p.add_argument(
        "--setups",
        default=",".join(SETUPS),
        help=f"comma-separated subset of {', '.join(SETUPS)} (default: all, in that order)",
    )
    p.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL")
        or os.environ.get("TEST_DATABASE_URL")
        or DEFAULT_PG,
        help="PostgreSQL server; a schema of its own is created and dropped per run "
        f"(default BENCH_DATABASE_URL, TEST_DATABASE_URL or {DEFAULT_PG})",
    )
    p.add_argument(
        "--no-storage", action="store_true", help="skip the storage-API batching section"
    )
    p.add_argument("--out", type=Path, default=BENCH / "out" / "scaling", help="work directory")
    p.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS_JSON",
        help="run nothing: rewrite the markdown from a saved results.json",
    )
    p.add_argument(
        "--no-write", action="store_true", help="print only; leave bench/SCALING_RESULTS.md"
    )
    args = p.parse_args(argv)
    args.setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    unknown = [s for s in args.setups if s not in SETUPS]
    if unknown:
        p.error(f"unknown setup(s) {unknown}; choose from {list(SETUPS)}")
    return args


# -- CPU accounting from /proc --------------------------------------------------------


def proc_table() -> dict[int, tuple[int, int, int, int]]:
    """Every process: pid -> (ppid, pgrp, own ticks utime+stime, reaped children's ticks
    cutime+cstime). A process's time ends up in its reaper's cutime when it exits, so
    summing own + children over the live members of a group counts each tick once."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2 :].split()
        ppid, pgrp = int(rest[1]), int(rest[2])
        own = int(rest[11]) + int(rest[12])
        reaped = int(rest[13]) + int(rest[14])
        table[int(entry.name)] = (ppid, pgrp, own, reaped)
    return table


def machine_busy_ticks() -> int:
    """Ticks all CPUs spent not idle (user+nice+system+irq+softirq+steal) since boot."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields[:8]) - idle


def _group_ticks(table: dict, pgid: int) -> int:
    return sum(own + reaped for _, pg, own, reaped in table.values() if pg == pgid)


class Postgres:
    """An admin connection to the server: schemas, our backends' pids, WAL position."""

    def __init__(self, url: str):
        self.url = url
        self.conn = psycopg.connect(
            url, autocommit=True, connect_timeout=5, application_name="tq_bench_admin"
        )
        backend = self.conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        self.postmaster = proc_table()[backend][0]  # a backend's parent is the postmaster

    def close(self) -> None:
        self.conn.close()

    def settings(self) -> dict:
        rows = self.conn.execute(
            "SELECT name, setting, unit FROM pg_settings WHERE name IN ('fsync', "
            "'synchronous_commit', 'autovacuum', 'max_connections', 'shared_buffers', "
            "'wal_level', 'commit_delay', 'full_page_writes')"
        ).fetchall()
        out = {name: f"{value}{'×' + unit if unit else ''}" for name, value, unit in rows}
        out["version"] = self.conn.execute("SHOW server_version").fetchone()[0]
        return out

    def backends(self, app: str) -> list[int]:
        rows = self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,)
        ).fetchall()
        return [r[0] for r in rows]

    def wal_lsn(self) -> str:
        return self.conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]

    def wal_bytes(self, start: str, end: str) -> int:
        return int(self.conn.execute("SELECT pg_wal_lsn_diff(%s, %s)", (end, start)).fetchone()[0])

    @contextmanager
    def schema(self):
        """A fresh schema: yields (url using it, application_name of its connections);
        dropped afterwards, whatever happened."""
        name = f"tq_bench_{uuid.uuid4().hex[:12]}"
        self.conn.execute(f"CREATE SCHEMA {name}")
        try:
            joiner = "&" if "?" in self.url else "?"
            yield f"{self.url}{joiner}options=-csearch_path%3D{name}&application_name={name}", name
        finally:
            self.drop(name)

    def drop(self, name: str) -> None:
        self.conn.execute("SET lock_timeout = '10s'")
        for attempt in range(3):
            try:
                self.conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
                return
            except psycopg.errors.LockNotAvailable:
                if attempt == 2:
                    raise
                time.sleep(2)

    def table_stats(self, name: str) -> dict:
        """Row changes PostgreSQL counted on the schema's tables (HOT = no index touched)."""
        rows = self.conn.execute(
            "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_dead_tup "
            "FROM pg_stat_user_tables WHERE schemaname = %s",
            (name,),
        ).fetchall()
        return {r[0]: {"ins": r[1], "upd": r[2], "hot": r[3], "dead": r[4]} for r in rows}


class Meter:
    """Snapshots of the CPU ticks of everything a run involves."""

    def __init__(self, pg: Postgres | None, app: str | None):
        self.pg, self.app = pg, app

    def snap(self, dispatchers: list[int], workers: list[int]) -> dict:
        table = proc_table()
        out = {
            "t": time.perf_counter(),
            "dispatchers": sum(_group_ticks(table, pid) for pid in dispatchers),
            "workers": sum(_group_ticks(table, pid) for pid in workers),
            "client": sum(os.times()[:2]) * TICK,  # this process (incl. its threads)
            "machine": machine_busy_ticks(),
            "load1": os.getloadavg()[0],
        }
        if self.pg is not None:
            pm = self.pg.postmaster
            out["pg_server"] = sum(
                own + reaped
                for pid, (ppid, _, own, reaped) in table.items()
                if pid == pm or ppid == pm
            )
            out["backends"] = {
                pid: table[pid][2] for pid in self.pg.backends(self.app) if pid in table
            }
            out["wal"] = self.pg.wal_lsn()
        return out

    def delta(self, a: dict, b: dict) -> dict:
        """CPU seconds spent between snapshots a and b, by part."""
        out = {k: (b[k] - a[k]) / TICK for k in ("dispatchers", "workers", "client", "machine")}
        out["wall"] = b["t"] - a["t"]
        if self.pg is not None:
            out["pg_server"] = (b["pg_server"] - a["pg_server"]) / TICK
            out["pg_backends"] = (
                sum(t - a["backends"].get(pid, 0) for pid, t in b["backends"].items()) / TICK
            )
            out["wal_bytes"] = self.pg.wal_bytes(a["wal"], b["wal"])
            out["connections"] = len(b["backends"])  # our backends alive at the end
            gone = set(a["backends"]) - set(b["backends"])
            out["backends_gone"] = len(gone)  # their last ticks are not counted
        else:
            out["pg_server"] = out["pg_backends"] = 0.0
        out["ours"] = out["dispatchers"] + out["workers"] + out["client"] + out["pg_server"]
        out["others"] = max(0.0, out["machine"] - out["ours"])
        return out


# -- one run ----------------------------------------------------------------------------


def tasks(n: int) -> list[dict]:
    return [{"type": "compute", "payload": {"operation": "double", "value": i}} for i in range(n)]


def submit_parallel(urls: list[str], items: list[dict]) -> float:
    """Submit `items` split evenly over `urls`, one client thread per dispatcher, each in
    batches of SUBMIT_BATCH; the wall time in seconds."""
    parts = [items[i :: len(urls)] for i in range(len(urls))]
    errors: list[str] = []

    def send(url: str, part: list[dict]) -> None:
        try:
            with Client(url) as client:
                for first in range(0, len(part), SUBMIT_BATCH):
                    client.submit_tasks(part[first : first + SUBMIT_BATCH])
        except Exception as exc:  # reported below
            errors.append(f"{url}: {exc!r}")

    threads = [threading.Thread(target=send, args=(u, p)) for u, p in zip(urls, parts, strict=True)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        raise BenchError(f"submission failed: {errors}")
    return wall


def finished(stats: dict) -> int:
    t = stats["tasks"]
    return t["completed"] + t["failed"] + t["cancelled"]


def wait_all(client: Client, n: int, launched: float) -> dict:
    """Probe GET /stats every STATS_EVERY_S until n are finished (peerbench's W1 clock)."""
    first_t, first_done, probes = None, 0, 0
    while True:
        stats = client.stats()
        probes += 1
        now = time.perf_counter()
        done = finished(stats)
        if done and first_t is None:
            first_t, first_done = now, done
        if done >= n:
            return {
                "wall_s": now - launched,
                "first_s": first_t - launched,
                "steady_tasks_per_s": (n - first_done) / (now - first_t) if now > first_t else 0,
                "failed": stats["tasks"]["failed"],
                "probes": probes,
                "end": now,
            }
        if now - launched > RUN_TIMEOUT_S:
            raise BenchError(f"{done} of {n} finished after {RUN_TIMEOUT_S:g} s: {stats}")
        time.sleep(STATS_EVERY_S)


def attempts_summary(query) -> dict:
    """From the attempts table: attempts, claims (one `now` per claim and worker) and
    result transactions (one `now` per POST /results batch and worker)."""
    row = query(
        "SELECT count(*), "
        "(SELECT count(*) FROM (SELECT DISTINCT worker_id, started_at FROM attempts) c), "
        "(SELECT count(*) FROM (SELECT DISTINCT worker_id, finished_at FROM attempts "
        " WHERE finished_at IS NOT NULL) f), "
        "(SELECT count(*) FROM tasks WHERE status = 'completed' AND attempts = 1) "
        "FROM attempts"
    )
    return {"attempts": row[0], "claims": row[1], "result_txs": row[2], "once": row[3]}


def price_probes(client: Client, meter: Meter, dispatchers: list[int]) -> dict:
    """CPU one GET /stats costs the dispatcher and the database (to subtract the
    completion probing from a run's figures)."""
    a = meter.snap(dispatchers, [])
    for _ in range(STATS_PROBES):
        client.stats()
    d = meter.delta(a, meter.snap(dispatchers, []))
    return {
        "dispatcher_ms": d["dispatchers"] / STATS_PROBES * 1000,
        "pg_ms": d["pg_backends"] / STATS_PROBES * 1000,
    }


@contextmanager
def sqlite_file(path: Path):
    """The SQLite counterpart of Postgres.schema(): (url, no application_name)."""
    yield f"sqlite:///{path.resolve()}", None


def run_once(key: str, n: int, ports: Ports, work: Path, pg: Postgres | None) -> dict:
    label, backend, count = SETUPS[key]
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out: dict = {"setup": key, "tasks": n, "load1_start": os.getloadavg()[0]}
    items = tasks(n)
    db = sqlite_file(work / "tasks.db") if backend == "sqlite" else pg.schema()
    with db as (url, app):
        meter = Meter(pg if app else None, app)
        with Procs(work, ports) as procs:
            started = [
                procs.dispatcher(f"dispatcher-{'ab'[i]}", work / "unused.db", DATABASE_URL=url)
                for i in range(count)
            ]
            groups = [proc.pid for proc, _ in started]
            urls = [u for _, u in started]
            with Client(urls[0]) as client:
                s0 = meter.snap(groups, [])
                submit_s = submit_parallel(urls, items)
                s1 = meter.snap(groups, [])
                queued = client.stats()["tasks"]
                if queued["pending"] != n:
                    raise BenchError(f"after the submission: {queued}")
                workers = []
                for i in range(WORKERS):
                    order = urls if i % 2 == 0 else urls[::-1]
                    name = f"w{i + 1}"
                    workers.append(procs.worker(name, ",".join(order), work / f"cache-{name}").pid)
                timing = wait_all(client, n, s1["t"])
                s2 = meter.snap(groups, workers)
                split = {
                    f"w{i + 1}": sorted(
                        "ab"[urls.index(f"http://127.0.0.1:{p}")]
                        for p in set(established_ports(pid))
                        if f"http://127.0.0.1:{p}" in urls
                    )
                    for i, pid in enumerate(workers)
                }
                probe = price_probes(client, meter, groups)
        if app:
            with pg.conn.cursor() as cur:
                cur.execute(f"SET search_path = {app}")
                out["db"] = attempts_summary(lambda sql: cur.execute(sql).fetchone())
                cur.execute("SET search_path = DEFAULT")
            out["tables"] = pg.table_stats(app)
        else:
            with closing(sqlite3.connect(work / "tasks.db")) as conn:
                out["db"] = attempts_summary(lambda sql: conn.execute(sql).fetchone())
    if out["db"]["once"] != n or timing["failed"]:
        raise BenchError(f"{label}: not every task completed once: {out['db']}, {timing}")
    out.update(
        submit_tasks_per_s=n / submit_s,
        tasks_per_s=n / timing["wall_s"],
        **{k: v for k, v in timing.items() if k != "end"},
        submit_cpu=meter.delta(s0, s1),
        drain_cpu=meter.delta(s1, s2),
        probe=probe,
        split=split,
        load1_end=os.getloadavg()[0],
    )
    return out


# -- the storage API alone: cost per task against batch size ---------------------------


def storage_batching(backend: str, pg: Postgres | None, work: Path) -> list[dict]:
    """The storage API in this process (no HTTP, no workers): claim BATCH_TASKS[b] tasks
    b at a time, then finish them b at a time (one transaction per call, as the
    dispatcher makes them), for each b in BATCH_SIZES. CPU of this process (the
    dispatcher's share; on SQLite also the database's) and of the PostgreSQL backend."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    db = sqlite_file(work / "tasks.db") if backend == "sqlite" else pg.schema()
    out = []
    with db as (url, app):
        meter = Meter(pg if app else None, app)
        storage = open_storage(Config(database_url=url))
        try:
            total = sum(BATCH_TASKS[b] for b in BATCH_SIZES)
            items = [NewTask("compute", {"operation": "double", "value": i}) for i in range(total)]
            for first in range(0, total, SUBMIT_BATCH):
                storage.submit(items[first : first + SUBMIT_BATCH], now=time.time())
            for b in BATCH_SIZES:
                claimed: list[dict] = []
                a = meter.snap([], [])
                while len(claimed) < BATCH_TASKS[b]:
                    got = storage.claim("bench", "", ("default",), b, time.time(), 3_600.0)
                    if not got:
                        raise BenchError(f"queue empty after {len(claimed)} claimed")
                    claimed.extend(got)
                m = meter.snap([], [])
                results = [
                    Result(t["task_id"], t["lease_token"], "bench", "completed", {"r": 1})
                    for t in claimed
                ]
                for first in range(0, len(results), b):
                    done = storage.finish(results[first : first + b], now=time.time())
                    if done != ["completed"] * len(done):
                        raise BenchError(f"finish answered {done[:3]}...")
                e = meter.snap([], [])
                n = len(claimed)
                for op, x, y in (("claim", a, m), ("finish", m, e)):
                    d = meter.delta(x, y)
                    out.append(
                        {
                            "backend": backend,
                            "batch": b,
                            "op": op,
                            "tasks": n,
                            "commits": -(-n // b),
                            "tasks_per_s": n / d["wall"],
                            "process_ms": d["client"] / n * 1000,
                            "backend_ms": d["pg_backends"] / n * 1000,
                            "wal_bytes": d.get("wal_bytes", 0) / n,
                        }
                    )
        finally:
            storage.close()
    return out


# -- the report --------------------------------------------------------------------------


def med(values: list[float], fmt: str = "{:,.0f}") -> str:
    """Median (min–max), as the other bench tables write it."""
    if not values:
        return "—"
    m = statistics.median(values)
    if len(values) == 1:
        return fmt.format(m)
    return f"{fmt.format(m)} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return out + ["| " + " | ".join(row) + " |" for row in rows]


def per_task_ms(runs: list[dict], phase: str, part: str, minus_probes: bool = False) -> list:
    out = []
    for r in runs:
        cpu = r[phase][part]
        if minus_probes and part in ("dispatchers", "pg_backends"):
            key = "dispatcher_ms" if part == "dispatchers" else "pg_ms"
            cpu -= r["probes"] * r["probe"][key] / 1000
        out.append(cpu / r["tasks"] * 1000)
    return out


def markdown(results: dict) -> str:
    m = results["machine"]
    by = {k: [r for r in results["runs"] if r["setup"] == k] for k in results["setups"]}
    loads = [r["load1_start"] for r in results["runs"]]
    others = [r["drain_cpu"]["others"] / r["drain_cpu"]["wall"] for r in results["runs"]]
    pgs = results.get("postgres") or {}
    lines = [
        "# Scale-out throughput: SQLite and PostgreSQL, one and two dispatchers",
        "",
        f"Date {results['date']} · commit `{m['commit']}`"
        f"{' (uncommitted changes in the tree)' if m['dirty'] else ''} · "
        f"{m['nproc']} CPUs ({m['cpu']}) · Python {m['python']}",
        "",
        f"Command: `{results['command']}` ({results['elapsed_s'] / 60:.1f} min)",
        "",
        f"1-minute load average at the start of each run: {med(loads, '{:.1f}')} "
        f"(before the first run {results['load1_before']:.2f}). CPU used by processes "
        f"that are not part of the run, while the workers drained the queue: "
        f"{med(others, '{:.2f}')} cores of {m['nproc']}.",
    ]
    if pgs:
        lines += [
            "",
            f"PostgreSQL {pgs['version']} at `{results['database_url']}`: "
            + ", ".join(f"{k}={v}" for k, v in sorted(pgs.items()) if k != "version")
            + ".",
        ]
    lines += [
        "",
        f"W1-style: {results['tasks']:,} no-op `compute/double` tasks submitted (POST "
        f"/submit-tasks, {SUBMIT_BATCH:,} a call, one client thread per dispatcher), then "
        f"{WORKERS} workers launched (.env defaults: concurrency 1, prefetch auto; "
        "LOG_LEVEL=WARNING), timed until GET /stats (probed every 20 ms) counts all "
        "finished. Dispatchers run .env's defaults (DISPATCHER_PROCESSES=2, "
        "DATABASE_POOL_SIZE=10). Setups interleaved, "
        f"{results['reps']} repetitions; cells are medians (min–max).",
        "",
        "## Throughput",
        "",
    ]
    rows = []
    for key, runs in by.items():
        rows.append(
            [
                SETUPS[key][0],
                med([r["tasks_per_s"] for r in runs]),
                med([r["steady_tasks_per_s"] for r in runs]),
                med([r["first_s"] for r in runs], "{:.2f}"),
                med([r["submit_tasks_per_s"] for r in runs]),
                med([r["tasks"] / r["db"]["claims"] for r in runs], "{:.0f}"),
                med([r["tasks"] / r["db"]["result_txs"] for r in runs], "{:.1f}"),
            ]
        )
    lines += _table(
        [
            "setup",
            "W1 tasks/s from worker launch",
            "steady tasks/s (first→last result)",
            "launch→first result s",
            "bulk submit tasks/s",
            "tasks per claim",
            "tasks per result commit",
        ],
        rows,
    )
    lines += [
        "",
        "Tasks per claim and per result commit are counted in the database afterwards "
        "(distinct worker and `started_at`, or `finished_at`, in `attempts`: a claim and a "
        "POST /results batch each store one `now`). Every task completed with one attempt "
        "in every run.",
        "",
        "## CPU per task while the workers drain the queue (ms)",
        "",
        "From the workers' launch to the last result counted, divided by the tasks. "
        "*dispatchers*: the dispatchers' process groups; *PG backends*: the server "
        "processes serving our dispatchers' connections; *PG server*: the whole server "
        "(postmaster and children: our backends, WAL writer, checkpointer, and any other "
        "client of this server); *client*: this script (the /stats probing); *ours*: "
        "dispatchers + PG server + workers + client, and the cores that is (CPU seconds "
        "over the run's wall time); *cores busy (all)*: every CPU of the machine, "
        "whatever ran on it. Dispatcher and PG backend columns "
        "include the /stats probes; the next two columns take them out (each probe's "
        "cost measured after the run).",
        "",
    ]
    rows = []
    for key, runs in by.items():
        pg = SETUPS[key][1] == "postgresql"
        rows.append(
            [
                SETUPS[key][0],
                med(per_task_ms(runs, "drain_cpu", "dispatchers"), "{:.3f}"),
                med(per_task_ms(runs, "drain_cpu", "pg_backends"), "{:.3f}") if pg else "—",
                med(per_task_ms(runs, "drain_cpu", "dispatchers", True), "{:.3f}"),
                med(per_task_ms(runs, "drain_cpu", "pg_backends", True), "{:.3f}") if pg else "—",
                med(per_task_ms(runs, "drain_cpu", "pg_server"), "{:.3f}") if pg else "—",
                med(per_task_ms(runs, "drain_cpu", "workers"), "{:.3f}"),
                med(per_task_ms(runs, "drain_cpu", "client"), "{:.3f}"),
                med(per_task_ms(runs, "drain_cpu", "ours"), "{:.3f}"),
                med([r["drain_cpu"]["ours"] / r["drain_cpu"]["wall"] for r in runs], "{:.2f}"),
                med(
                    [r["drain_cpu"]["machine"] / r["drain_cpu"]["wall"] for r in runs],
                    "{:.2f}",
                ),
            ]
        )
    lines += _table(
        [
            "setup",
            "dispatchers",
            "PG backends",
            "dispatchers w/o probes",
            "PG backends w/o probes",
            "PG server",
            "workers",
            "client",
            "ours (sum)",
            "cores used by ours",
            "cores busy (all)",
        ],
        rows,
    )
    lines += ["", "## Submission and the database's work per task", ""]
    rows = []
    for key, runs in by.items():
        pg = SETUPS[key][1] == "postgresql"
        tables = [r.get("tables", {}) for r in runs]

        def per(runs=runs, tables=tables, table="tasks", col="upd"):
            return [
                t.get(table, {}).get(col, 0) / r["tasks"] for r, t in zip(runs, tables, strict=True)
            ]

        def hot_pct(table, tables=tables):
            return [
                t[table]["hot"] / t[table]["upd"] * 100
                for t in tables
                if t.get(table, {}).get("upd")
            ]

        hot = hot_pct("tasks")
        hot_attempts = hot_pct("attempts")
        rows.append(
            [
                SETUPS[key][0],
                med(per_task_ms(runs, "submit_cpu", "dispatchers"), "{:.3f}"),
                med(per_task_ms(runs, "submit_cpu", "pg_backends"), "{:.3f}") if pg else "—",
                med([r["drain_cpu"]["wal_bytes"] / r["tasks"] for r in runs]) if pg else "—",
                med([r["submit_cpu"]["wal_bytes"] / r["tasks"] for r in runs]) if pg else "—",
                med(per(), "{:.2f}") if pg else "—",
                med(hot, "{:.0f} %") if pg and hot else "—",
                med(per(table="attempts"), "{:.2f}") if pg else "—",
                med(hot_attempts, "{:.1f} %") if pg and hot_attempts else "—",
                med([r["probe"]["dispatcher_ms"] for r in runs], "{:.2f}"),
                med([r["probe"]["pg_ms"] for r in runs], "{:.2f}") if pg else "—",
                med([r["drain_cpu"]["connections"] for r in runs]) if pg else "—",
            ]
        )
    lines += _table(
        [
            "setup",
            "submit: dispatcher CPU ms/task",
            "submit: PG backend CPU ms/task",
            "drain: WAL bytes/task",
            "submit: WAL bytes/task",
            "`tasks` row updates/task",
            "of which HOT",
            "`attempts` row updates/task",
            "of which HOT",
            "one GET /stats: dispatcher CPU ms",
            "one GET /stats: PG CPU ms",
            "PG connections",
        ],
        rows,
    )
    lines += [
        "",
        "WAL bytes are the server's (pg_current_wal_lsn), so another client writing at the "
        "same time adds to them. *PG connections*: our dispatchers' backends open when the "
        "last task finished (pools and LISTEN connections together).",
        "",
    ]
    if results.get("storage"):
        lines += storage_section(results["storage"])
    lines += ["## Runs in order", ""]
    rows = []
    for r in results["runs"]:
        split = r["split"]
        per_disp = {}
        for used in split.values():
            for d in used:
                per_disp[d] = per_disp.get(d, 0) + 1
        rows.append(
            [
                SETUPS[r["setup"]][0],
                f"{r['load1_start']:.2f}",
                f"{r['tasks_per_s']:,.0f}",
                f"{r['steady_tasks_per_s']:,.0f}",
                f"{r['submit_tasks_per_s']:,.0f}",
                f"{r['drain_cpu']['machine'] / r['drain_cpu']['wall']:.2f}",
                f"{r['drain_cpu']['others'] / r['drain_cpu']['wall']:.2f}",
                " ".join(f"{d}:{k}" for d, k in sorted(per_disp.items())),
            ]
        )
    lines += _table(
        [
            "setup",
            "load1",
            "W1 tasks/s",
            "steady",
            "submit tasks/s",
            "cores busy",
            "cores used by others",
            "workers per dispatcher",
        ],
        rows,
    )
    lines += [
        "",
        "*workers per dispatcher*: the dispatcher each worker held its connections to when "
        "the last task finished (from /proc/net/tcp). A worker picks its first dispatcher "
        "at random from its DISPATCHER_URL list, so the split of 4 workers over two "
        "dispatchers varies by run.",
    ]
    return "\n".join(lines) + "\n"


def storage_section(rows: list[dict]) -> list[str]:
    table = [
        [
            "SQLite" if r["backend"] == "sqlite" else "PostgreSQL",
            r["op"],
            f"{r['batch']:,}",
            f"{r['tasks']:,}",
            f"{r['tasks_per_s']:,.0f}",
            f"{r['tasks_per_s'] / r['batch']:,.0f}",
            f"{r['process_ms']:.3f}",
            f"{r['backend_ms']:.3f}" if r["backend"] != "sqlite" else "—",
            f"{r['wal_bytes']:,.0f}" if r["backend"] != "sqlite" else "—",
        ]
        for r in rows
    ]
    return [
        "## The storage API alone: cost per task against batch size",
        "",
        "One thread calling the storage operations directly (no HTTP, no workers): "
        "`claim(max_tasks=b)` until the tasks below are claimed, then `finish()` of b "
        "results per call; each call is one transaction with its commit. *this process*: "
        "CPU of the calling process per task (what a dispatcher spends in the storage "
        "layer; on SQLite the database's work too); *PG backend*: the server process "
        "serving the connection. One run, not repeated: read the trend, not the digits.",
        "",
        *_table(
            [
                "backend",
                "operation",
                "tasks per call (b)",
                "tasks",
                "tasks/s",
                "commits/s",
                "this process CPU ms/task",
                "PG backend CPU ms/task",
                "WAL bytes/task",
            ],
            table,
        ),
        "",
    ]


# -- main ----------------------------------------------------------------------------------


def _sigterm(signum, frame):
    raise SystemExit(128 + signum)  # runs the finally blocks: processes stopped, schemas dropped


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.render:
        text = markdown(json.loads(args.render.read_text()))
        print(text, end="")
        if not args.no_write:
            (BENCH / "SCALING_RESULTS.md").write_text(text)
        return 0
    signal.signal(signal.SIGTERM, _sigterm)
    command = " ".join([".venv/bin/python bench/scaling.py", *argv])
    needs_pg = any(SETUPS[k][1] == "postgresql" for k in args.setups)
    pg = Postgres(args.database_url) if needs_pg else None
    results: dict = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": report.machine(),
        "command": command,
        "tasks": args.tasks,
        "reps": args.reps,
        "setups": args.setups,
        "database_url": args.database_url if needs_pg else None,
        "postgres": pg.settings() if pg else None,
        "load1_before": os.getloadavg()[0],
        "runs": [],
    }
    ports = Ports()
    started = time.monotonic()
    try:
        for rep in range(args.reps):
            for key in args.setups:
                r = run_once(key, args.tasks, ports, args.out / f"{key}-r{rep + 1}", pg)
                results["runs"].append(r)
                busy = r["drain_cpu"]["machine"] / r["drain_cpu"]["wall"]
                print(
                    f"[{rep + 1}/{args.reps}] {SETUPS[key][0]:<26} W1 {r['tasks_per_s']:7,.0f}"
                    f" tasks/s, steady {r['steady_tasks_per_s']:7,.0f}, submit "
                    f"{r['submit_tasks_per_s']:7,.0f}/s, {busy:.2f} cores busy, "
                    f"load1 {r['load1_start']:.2f}",
                    flush=True,
                )
        if not args.no_storage:
            results["storage"] = []
            for key in ("sqlite", "postgresql"):
                if key == "postgresql" and pg is None:
                    continue
                print(f"[storage] {key}: claim and finish at batch sizes {BATCH_SIZES}", flush=True)
                results["storage"] += storage_batching(key, pg, args.out / f"storage-{key}")
    finally:
        if pg:
            pg.close()
    results["elapsed_s"] = time.monotonic() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    print()
    print(text, end="")
    if not args.no_write:
        (BENCH / "SCALING_RESULTS.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
