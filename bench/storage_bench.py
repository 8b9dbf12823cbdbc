"""How the storage layer's cost grows with the table: bulk load, claim and complete
throughput with N pending tasks, bytes per finished task, the claim's query plan, and
what retention (reap) gives back. Storage API only (no HTTP), on a real SQLite file with
the dispatcher's settings (WAL, synchronous=FULL, one commit per call).

Run alone, it measures what waiting tasks (dependencies, docs/SCHEDULING.md) cost the
claim: the claim rate at PENDING pending tasks, without and then with WAITING waiting
tasks in the same queue (each waits for one task of another queue, never run), each on
a fresh database:

    python bench/storage_bench.py [--pending 1000000] [--waiting 100000] [--json]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project root

from procs import BenchError  # noqa: E402

from common.config import Config  # noqa: E402
from dispatcher.storage import NewTask, Result, open_storage  # noqa: E402
from dispatcher.storage.sqlite import CLAIM  # noqa: E402

LOAD_BATCH = 10_000  # tasks per storage.submit (one transaction)
CLAIM_BATCH = 100  # max_tasks per claim while measuring
FINISH_BATCH = 100  # results per storage.finish while measuring
DRAIN_BATCH = 1_000  # claim and finish size when finishing the rest of the table
MEASURE_TASKS = 20_000  # a measurement stops after this many tasks ...
MEASURE_S = 2.0  # ... or after this many seconds
WORKER = "bench-storage"
QUEUES = ("default",)
LEASE_S = 3_600.0


def open_db(path: Path):
    """The project's storage on `path`, as the dispatcher opens it."""
    return open_storage(Config(database_url=f"sqlite:///{path.resolve()}"))


def noop(i: int) -> NewTask:
    """The benchmark's task: compute/double, as peerbench's no-op."""
    return NewTask("compute", {"operation": "double", "value": i})


def bulk_load(storage, n: int, now: float) -> dict:
    """Submit n pending tasks in batches of LOAD_BATCH; rows/s of the whole load."""
    start = time.perf_counter()
    for first in range(0, n, LOAD_BATCH):
        batch = [noop(i) for i in range(first, min(n, first + LOAD_BATCH))]
        storage.submit(batch, now=now)
    seconds = time.perf_counter() - start
    return {"rows": n, "seconds": seconds, "rows_per_s": n / seconds}


WAITING_DEFAULT = 100_000  # --waiting without a number
BLOCKER_QUEUE = "bench-blocker"  # the one task every waiting task waits for: never claimed


def load_waiting(storage, n: int, now: float) -> dict:
    """n waiting tasks in QUEUES[0], each depending on one pending task of BLOCKER_QUEUE
    (which the benchmark never claims), in batches of LOAD_BATCH; rows/s of the load."""
    start = time.perf_counter()
    [(blocker, _)] = storage.submit([NewTask("compute", {}, queue=BLOCKER_QUEUE)], now=now)
    for first in range(0, n, LOAD_BATCH):
        batch = [noop(i) for i in range(first, min(n, first + LOAD_BATCH))]
        for task in batch:
            task.depends_on = [blocker]
        storage.submit(batch, now=now)
    seconds = time.perf_counter() - start
    return {"rows": n, "seconds": seconds, "rows_per_s": n / seconds if seconds else 0.0}


def measure_claims(storage, now: float) -> tuple[list[dict], dict]:
    """Claim CLAIM_BATCH at a time until MEASURE_TASKS are claimed, MEASURE_S passed or
    the queue is empty; returns the claims and the rate."""
    claimed: list[dict] = []
    calls = 0
    start = time.perf_counter()
    deadline = start + MEASURE_S
    while len(claimed) < MEASURE_TASKS and time.perf_counter() < deadline:
        got = storage.claim(WORKER, "", QUEUES, CLAIM_BATCH, now=now, lease_s=LEASE_S)
        calls += 1
        if not got:
            break
        claimed.extend(got)
    seconds = time.perf_counter() - start
    rate = {"tasks": len(claimed), "calls": calls, "seconds": seconds}
    rate["tasks_per_s"] = len(claimed) / seconds if seconds else 0.0
    return claimed, rate


def result_of(claim: dict) -> Result:
    """The result a worker would report for a compute/double claim."""
    value = claim["payload"]["value"]
    return Result(
        task_id=claim["task_id"],
        lease_token=claim["lease_token"],
        worker_id=WORKER,
        status="completed",
        result={"operation": "double", "value": value, "result": 2 * value},
    )


def finish_all(storage, claims: list[dict], now: float, batch: int) -> None:
    """Complete `claims` in storage.finish calls of `batch` results; any refusal is a bug."""
    for first in range(0, len(claims), batch):
        out = storage.finish([result_of(c) for c in claims[first : first + batch]], now=now)
        bad = [o for o in out if o != "completed"]
        if bad:
            raise BenchError(f"storage.finish refused results: {bad[:3]}")


def measure_finishes(storage, claims: list[dict], now: float) -> tuple[list[dict], dict]:
    """Finish FINISH_BATCH results a call until all claims are done or MEASURE_S passed;
    returns the claims left unfinished and the rate."""
    done = 0
    start = time.perf_counter()
    deadline = start + MEASURE_S
    while done < len(claims) and time.perf_counter() < deadline:
        finish_all(storage, claims[done : done + FINISH_BATCH], now, FINISH_BATCH)
        done += len(claims[done : done + FINISH_BATCH])
    seconds = time.perf_counter() - start
    rate = {"tasks": done, "seconds": seconds, "tasks_per_s": done / seconds if seconds else 0.0}
    return claims[done:], rate


def drain(storage, now: float, left: list[dict], timeout: float) -> dict:
    """Finish the claims `left` and then every pending task, DRAIN_BATCH at a time."""
    start = time.perf_counter()
    finish_all(storage, left, now, DRAIN_BATCH)
    done = len(left)
    while True:
        if time.perf_counter() - start > timeout:
            raise BenchError(f"finishing the table took over {timeout:g} s ({done} done)")
        got = storage.claim(WORKER, "", QUEUES, DRAIN_BATCH, now=now, lease_s=LEASE_S)
        if not got:
            break
        finish_all(storage, got, now, DRAIN_BATCH)
        done += len(got)
    seconds = time.perf_counter() - start
    return {"tasks": done, "seconds": seconds, "tasks_per_s": done / seconds if seconds else 0.0}


def disk_usage(path: Path) -> dict:
    """Bytes of the database file and its -wal, and the page accounting of the file."""
    wal = Path(f"{path}-wal")
    with closing(sqlite3.connect(path)) as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        rows = db.execute("SELECT count(*) FROM tasks").fetchone()[0]
        attempts = db.execute("SELECT count(*) FROM attempts").fetchone()[0]
    return {
        "db_bytes": path.stat().st_size,
        "wal_bytes": wal.stat().st_size if wal.exists() else 0,
        "page_size": page_size,
        "page_count": pages,
        "freelist_pages": free,
        "freelist_bytes": free * page_size,
        "task_rows": rows,
        "attempt_rows": attempts,
    }


def claim_plan(path: Path, now: float) -> list[str]:
    """EXPLAIN QUERY PLAN of the claim statement, as indented lines."""
    args = {
        "worker_id": WORKER,
        "queue": QUEUES[0],
        "now": now,
        "lease_s": LEASE_S,
        "max_tasks": CLAIM_BATCH,
    }
    with closing(sqlite3.connect(path)) as db:
        rows = db.execute("EXPLAIN QUERY PLAN " + CLAIM, args).fetchall()
    depth: dict[int, int] = {0: 0}
    lines = []
    for node, parent, _, detail in rows:
        depth[node] = depth.get(parent, 0) + 1
        lines.append("  " * (depth[node] - 1) + detail)
    return lines


def retention(storage, path: Path, now: float, timeout: float) -> dict:
    """What TASK_RETENTION_SECONDS does to a table of finished tasks: storage.reap with a
    clock far past every finish, called until it deletes nothing (each call deletes at
    most a fixed batch, as the dispatcher's reaper does every REAP_INTERVAL)."""
    later = now + 30 * 86_400.0
    deleted = calls = most = 0
    start = time.perf_counter()
    while True:
        if time.perf_counter() - start > timeout:
            raise BenchError(f"reap took over {timeout:g} s ({deleted} rows deleted)")
        report = storage.reap(now=later, dead_after=60.0, retention_s=60.0)
        calls += 1
        if not report.deleted:
            break
        deleted += report.deleted
        most = max(most, report.deleted)
    seconds = time.perf_counter() - start
    return {
        "deleted": deleted,
        "reap_calls": calls,
        "most_per_call": most,
        "seconds": seconds,
        "rows_per_s": deleted / seconds if seconds else 0.0,
        "after": disk_usage(path),
    }


def load_and_measure(path: Path, n: int, timeout: float, waiting: int = 0) -> dict:
    """One queue size: load n tasks (and `waiting` waiting tasks beside them), measure
    claim and complete, finish the rest, record the disk use and the plan. Leaves the
    database (all pending tasks completed) for the memory and retention steps;
    `sample_ids` are some finished tasks' ids for them."""
    now = time.time()
    storage = open_db(path)
    try:
        load = bulk_load(storage, n, now)
        waited = load_waiting(storage, waiting, now) if waiting else None
        plan = claim_plan(path, now)
        claims, claim_rate = measure_claims(storage, now)
        left, finish_rate = measure_finishes(storage, claims, now)
        rest = drain(storage, now, left, timeout)
        disk = disk_usage(path)  # while open, so the -wal is still there
    finally:
        storage.close()
    return {
        "size": n,
        "waiting": waited,
        "load": load,
        "claim": claim_rate,
        "complete": finish_rate,
        "drain": rest,
        "plan": plan,
        "disk": disk,
        "sample_ids": [c["task_id"] for c in claims[:2_000]],
    }


def measure_retention(path: Path, timeout: float) -> dict:
    """The retention step on a database left by load_and_measure."""
    storage = open_db(path)
    try:
        return retention(storage, path, time.time(), timeout)
    finally:
        storage.close()


def compare_waiting(pending: int, waiting: int, timeout: float) -> dict:
    """The claim rate at `pending` pending tasks without, then with, `waiting` waiting
    tasks beside them (a fresh database each), and the second as a share of the first."""
    runs = {}
    for label, extra in (("without", 0), ("with", waiting)):
        with tempfile.TemporaryDirectory(prefix="taskqueue-bench-") as tmp:
            now = time.time()
            storage = open_db(Path(tmp) / "tasks.db")
            try:
                bulk_load(storage, pending, now)
                loaded = load_waiting(storage, extra, now) if extra else None
                _, rate = measure_claims(storage, now)
            finally:
                storage.close()
        runs[label] = {"waiting": extra, "waiting_load": loaded, "claim": rate}
        print(
            f"{pending:,} pending, {extra:,} waiting: claim {rate['tasks_per_s']:,.0f} tasks/s",
            flush=True,
        )
    base = runs["without"]["claim"]["tasks_per_s"]
    ratio = runs["with"]["claim"]["tasks_per_s"] / base if base else 0.0
    print(f"with waiting tasks: {ratio:.1%} of the rate without", flush=True)
    return {"pending": pending, "runs": runs, "ratio": ratio}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python bench/storage_bench.py",
        description="The claim rate beside waiting tasks (docs/PERFORMANCE.md).",
    )
    p.add_argument("--pending", type=int, default=1_000_000, help="pending tasks (10^6)")
    p.add_argument(
        "--waiting",
        type=int,
        nargs="?",
        const=WAITING_DEFAULT,
        default=WAITING_DEFAULT,
        help=f"waiting tasks beside them (default {WAITING_DEFAULT:,})",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON at the end")
    args = p.parse_args(argv)
    if args.pending < 1 or args.waiting < 1:
        p.error("--pending and --waiting must be at least 1")
    out = compare_waiting(args.pending, args.waiting, timeout=3_600.0)
    if args.json:
        print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
