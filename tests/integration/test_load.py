"""Load held for a bounded time (issue 6; bench/soak.py is the long version, run by
hand): 16 client threads submit single tasks and batches while 8 workers run them and
readers poll GET /stats and GET /task/<id>. No 5xx, no lock error reaching a client,
every acknowledged task completed exactly once, the dispatcher's memory flat."""

from __future__ import annotations

import os
import random
import threading
import time

from harness import SeededRandom, all_tasks, fetch_tasks, wait_for

from common.client import Client
from common.procs import group_rss_kib

LOAD_SECONDS = float(os.environ.get("LOAD_SECONDS", "12"))
CLIENTS = 16
WORKERS = 8
# RSS may grow by this much between the first and the second half (SQLite page caches
# and Python's allocator settle; a leak per request would go far beyond)
RSS_SLACK_KB = 40_000
RSS_FACTOR = 1.25


class Load:
    def __init__(self, url: str, seed: int):
        self.url = url
        self.seed = seed
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acked: dict[str, int] = {}  # task id -> the value it doubles
        self.requests = 0
        self.errors: list[str] = []

    def _record_error(self, where: str, exc: Exception) -> None:
        with self.lock:
            self.errors.append(f"{where}: {exc.__class__.__name__}: {exc}")

    def client(self, n: int) -> None:
        """Even threads submit one task per call, odd ones batches of 2-50."""
        rng = random.Random(self.seed + n)
        value = n * 10**9
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
                except Exception as exc:
                    self._record_error(f"client {n}", exc)
                    return
                with self.lock:
                    self.acked.update(zip(ids, values, strict=True))
                    self.requests += 1

    def reader(self, n: int) -> None:
        rng = random.Random(self.seed - n)
        with Client(self.url) as client:
            while not self.stop.is_set():
                try:
                    if rng.random() < 0.3:
                        client.stats()
                    else:
                        with self.lock:
                            some = next(iter(self.acked), None) if self.acked else None
                            if self.acked and rng.random() < 0.5:
                                some = rng.choice(list(self.acked)[-200:])
                        if some:
                            client.task(some)
                except Exception as exc:
                    self._record_error(f"reader {n}", exc)
                    return
                with self.lock:
                    self.requests += 1


def test_load_held_no_errors_every_task_once_memory_flat(make_cluster):
    rng = SeededRandom("load")
    # long leases: under this load on a small machine a heartbeat may come late, and a
    # second attempt would be legitimate but is not what this test measures
    cluster = make_cluster(LEASE_SECONDS="60", WORKER_DEAD_AFTER="30", LOG_LEVEL="WARNING")
    dispatcher = cluster.start_dispatcher()
    workers = [cluster.start_worker(f"worker-{i}") for i in range(WORKERS)]
    for worker in workers:
        cluster.wait_worker_alive(worker)

    load = Load(cluster.url, rng.seed_value)
    threads = [threading.Thread(target=load.client, args=(n,)) for n in range(CLIENTS)]
    threads += [threading.Thread(target=load.reader, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    samples: list[tuple[float, int]] = []  # (seconds into the run, dispatcher RSS kB)
    start = time.monotonic()
    try:
        while (elapsed := time.monotonic() - start) < LOAD_SECONDS and not load.errors:
            samples.append((elapsed, group_rss_kib(dispatcher.pid)))
            load.stop.wait(0.25)  # the sampling period; the load runs meanwhile
    finally:
        load.stop.set()
        for t in threads:
            t.join(timeout=60)
    summary = (
        f"seed {rng.seed_value}: {load.requests} requests, {len(load.acked)} tasks "
        f"acknowledged, {len(load.errors)} errors"
    )
    print(summary)
    assert not load.errors, f"{summary}:\n" + "\n".join(load.errors[:20])

    total = len(load.acked)
    wait_for(
        lambda: cluster.client.stats()["tasks"]["completed"] >= total,
        120,
        lambda: f"{summary}: {cluster.client.stats()['tasks']}\n{cluster.logs()}",
    )
    stored = {t["task_id"]: t for t in all_tasks(cluster.client)}
    assert set(stored) == set(load.acked), f"{summary}: {len(stored)} tasks stored"
    problems = []
    for task_id, value in load.acked.items():
        task = stored[task_id]
        if task["status"] != "completed" or task["result"] != {
            "operation": "double",
            "value": value,
            "result": 2 * value,
        }:
            problems.append(f"{task_id}: {task['status']} {task['result']} for {value}")
    again = [t for t, task in stored.items() if task["attempts"] != 1]
    for task in fetch_tasks(cluster.url, again).values():  # run more than once: why
        outcomes = [a["outcome"] for a in task["history"]]
        if outcomes.count("completed") != 1:
            problems.append(f"{task['task_id']}: history {outcomes}")
    assert not problems, f"{summary}:\n" + "\n".join(problems[:20])

    half = LOAD_SECONDS / 2
    first = max((rss for t, rss in samples if half / 2 <= t < half), default=0)
    second = max((rss for t, rss in samples if t >= half), default=0)
    print(f"dispatcher RSS: first half {first} kB, second half {second} kB; {len(again)} retried")
    assert first and second, samples
    assert second <= first * RSS_FACTOR + RSS_SLACK_KB, f"{summary}: RSS {samples}"
    for worker in workers:
        text = worker.log_path.read_text()
        for bad in ("database is locked", "HTTP 5"):
            assert bad not in text, f"{worker.name} logged {bad!r}:\n{worker.log(80)}"
