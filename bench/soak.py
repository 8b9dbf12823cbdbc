#!/usr/bin/env python3
"""Soak: load held for minutes against a real dispatcher and workers (the long version of
tests/integration/test_load.py; run by hand, figures go to docs/RELIABILITY.md).

    python3 bench/soak.py [--minutes 5] [--clients 16] [--workers 8] [--readers 2]

Client threads submit no-op `compute` tasks (even threads one per call, odd ones batches
of 2-50) while readers poll GET /stats and GET /task/<id>. Every --every seconds a line
shows requests, errors, tasks and the dispatcher's RSS (VmRSS summed over its process
group). At the end: every acknowledged task must be stored and completed exactly once.
Exit status 1 if any request failed (4xx, 5xx, no answer), a lock error reached a
client, or a task was lost or run to completion twice.
Uses ports 5400-5499 and a temporary directory (kept with --keep).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project root

from common.bootstrap import ensure_venv  # noqa: E402

if __name__ == "__main__":
    ensure_venv("requirements.txt")

from procs import BenchError, Ports, Procs, wait_until  # noqa: E402

from common.client import Client  # noqa: E402
from common.procs import group_rss_kib  # noqa: E402

SETTINGS = {
    "LOG_LEVEL": "WARNING",
    "LEASE_SECONDS": "60",
    "WORKER_DEAD_AFTER": "30",
    "WORKER_HEARTBEAT_INTERVAL": "5",
    "REAP_INTERVAL": "1",
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 bench/soak.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=5.0, help="how long the load is held")
    p.add_argument("--clients", type=int, default=16, help="submitting threads")
    p.add_argument("--workers", type=int, default=8, help="worker processes")
    p.add_argument("--readers", type=int, default=2, help="threads reading /stats, /task")
    p.add_argument("--every", type=float, default=15.0, help="seconds between progress lines")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--keep", action="store_true", help="keep the database and the logs")
    return p.parse_args(argv)


class Load:
    def __init__(self, url: str, seed: int):
        self.url = url
        self.seed = seed
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acked: dict[str, int] = {}  # task id -> the value it doubles
        self.recent: list[str] = []  # ids the readers ask about
        self.requests = {"submit-task": 0, "submit-tasks": 0, "stats": 0, "task": 0}
        self.errors: list[str] = []

    def count(self, kind: str) -> None:
        with self.lock:
            self.requests[kind] += 1

    def error(self, where: str, exc: Exception) -> None:
        with self.lock:
            self.errors.append(f"{where}: {exc.__class__.__name__}: {exc}")

    def client(self, n: int) -> None:
        rng = random.Random(self.seed + n)
        value = n * 10**12
        with Client(self.url) as client:
            while not self.stop.is_set():
                size = 1 if n % 2 == 0 else rng.randint(2, 50)
                values = list(range(value, value + size))
                value += size
                items = [
                    {"type": "compute", "payload": {"operation": "double", "value": v}}
                    for v in values
                ]
                try:
                    if size == 1:
                        ids = [client.submit_task(items[0])]
                    else:
                        ids = client.submit_tasks(items)
                except Exception as exc:  # counted, and the thread goes on
                    self.error(f"client {n}", exc)
                    self.stop.wait(0.5)
                    continue
                with self.lock:
                    self.acked.update(zip(ids, values, strict=True))
                    self.recent = (self.recent + ids)[-500:]
                    self.requests["submit-task" if size == 1 else "submit-tasks"] += 1

    def reader(self, n: int) -> None:
        rng = random.Random(self.seed - n - 1)
        with Client(self.url) as client:
            while not self.stop.is_set():
                try:
                    if rng.random() < 0.3:
                        client.stats()
                        self.count("stats")
                        continue
                    with self.lock:
                        some = rng.choice(self.recent) if self.recent else None
                    if some:
                        client.task(some)
                        self.count("task")
                    else:
                        self.stop.wait(0.05)
                except Exception as exc:
                    self.error(f"reader {n}", exc)
                    self.stop.wait(0.5)


def all_tasks(client: Client) -> list[dict]:
    out: list[dict] = []
    while True:
        page = client.call("GET", "/tasks", params={"limit": 1000, "offset": len(out)})
        out.extend(page["tasks"])
        if len(page["tasks"]) < 1000:
            return out


def soak(args: argparse.Namespace, work: Path) -> int:
    seed = args.seed if args.seed is not None else random.SystemRandom().getrandbits(32)
    ports = Ports()
    with Procs(work / "logs", ports) as procs:
        dispatcher, url = procs.dispatcher("dispatcher", work / "soak.db", **SETTINGS)
        workers = [
            procs.worker(f"soak-{i}", url, work / "cache", **SETTINGS) for i in range(args.workers)
        ]
        with Client(url) as client:
            wait_until(
                lambda: sum(w["status"] == "alive" for w in client.workers()) == args.workers,
                120,
                lambda: f"workers not alive: {client.workers()}",
            )
        load = Load(url, seed)
        threads = [threading.Thread(target=load.client, args=(n,)) for n in range(args.clients)]
        threads += [threading.Thread(target=load.reader, args=(n,)) for n in range(args.readers)]
        print(
            f"soak: {args.minutes:g} min, {args.clients} clients, {args.readers} readers, "
            f"{args.workers} workers, seed {seed}, dispatcher {url}",
            flush=True,
        )
        start = time.monotonic()
        rss_start = group_rss_kib(dispatcher.pid)
        for t in threads:
            t.start()
        rss_peak = rss_start
        rss_warm = None  # at the first progress line: page caches and pools warmed up
        next_line = args.every
        with Client(url) as client:
            try:
                while (elapsed := time.monotonic() - start) < args.minutes * 60:
                    rss = group_rss_kib(dispatcher.pid)
                    rss_peak = max(rss_peak, rss)
                    if elapsed >= next_line:
                        next_line += args.every
                        tasks = client.stats()["tasks"]
                        rss_warm = rss if rss_warm is None else rss_warm
                        print(
                            f"{elapsed:6.0f} s  requests {sum(load.requests.values()):>8}  "
                            f"errors {len(load.errors):>4}  acknowledged {len(load.acked):>8}  "
                            f"completed {tasks['completed']:>8}  pending {tasks['pending']:>6}  "
                            f"rss {rss / 1024:6.1f} MB",
                            flush=True,
                        )
                    load.stop.wait(1.0)
            finally:
                load.stop.set()
                for t in threads:
                    t.join(timeout=60)
            rss_end = group_rss_kib(dispatcher.pid)
            held = time.monotonic() - start
            total = len(load.acked)
            print(f"load stopped after {held:.0f} s; draining {total} tasks ...", flush=True)
            wait_until(
                lambda: client.stats()["tasks"]["completed"] >= total,
                600,
                lambda: f"not drained: {client.stats()['tasks']}",
            )
            stored = {t["task_id"]: t for t in all_tasks(client)}
            lost = [t for t in load.acked if t not in stored]
            wrong = [
                t
                for t, v in load.acked.items()
                if t in stored
                and (
                    stored[t]["status"] != "completed"
                    or stored[t]["result"] != {"operation": "double", "value": v, "result": 2 * v}
                )
            ]
            twice = []
            for task_id, task in stored.items():
                if task["attempts"] != 1:
                    history = client.task(task_id)["history"]
                    if [a["outcome"] for a in history].count("completed") != 1:
                        twice.append(task_id)
            retried = sum(t["attempts"] != 1 for t in stored.values())
        logs = "".join(w.log_path.read_text(errors="replace") for w in workers)
    locked = sum("database is locked" in e for e in load.errors) + logs.count("database is locked")
    five = sum("HTTP 5" in e for e in load.errors) + logs.count("HTTP 5")
    requests = sum(load.requests.values())
    print(f"requests        {requests} in {held:.0f} s ({requests / held:.0f}/s): {load.requests}")
    print(f"errors          {len(load.errors)} (5xx {five}, database is locked {locked})")
    for line in load.errors[:10]:
        print(f"  {line}")
    print(f"tasks           {total} acknowledged, {len(stored)} stored, {len(lost)} lost,")
    print(f"                {len(wrong)} not completed right, {len(twice)} completed twice")
    print(f"                {retried} ran more than once (at-least-once), completed once")
    print(
        f"dispatcher RSS  idle {rss_start / 1024:.1f} MB, at {args.every:g} s "
        f"{(rss_warm or rss_end) / 1024:.1f} MB, end {rss_end / 1024:.1f} MB, "
        f"peak {rss_peak / 1024:.1f} MB"
    )
    ok = not (load.errors or locked or five or lost or wrong or twice)
    print("soak: OK" if ok else "soak: FAILED")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    work = Path(tempfile.mkdtemp(prefix="taskqueue-soak-"))
    try:
        return soak(args, work)
    except BenchError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
