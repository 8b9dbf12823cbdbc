"""Benchmarks on real processes: dispatcher memory on a big table, throughput against
workers and claim size, the hoarding check, and long-poll wake-up latency across
dispatcher processes. Every process is started by the project's scripts through
`procs.Procs`, which stops them all when the step ends, on error too."""

from __future__ import annotations

import sqlite3
import statistics
import threading
import time
from contextlib import closing
from pathlib import Path

from procs import BenchError, Ports, Procs, children, wait_until

from common.client import Client
from common.procs import rss_kib

NOOP = {"type": "compute", "payload": {"operation": "double", "value": 21}}
SUBMIT_BATCH = 1_000  # tasks per POST /submit-tasks (MAX_BATCH's default)
STATS_EVERY_S = 0.02  # how often completion is polled (GET /stats)
HOARD_QUICK, HOARD_SLOW, HOARD_SLEEP_S = 20, 8, 1.0
HOLD_SETTLE_S = 0.1  # time for a held poll to reach its wait before the submission
WAKE_WAIT_S = 10.0


def _finished(stats: dict) -> int:
    tasks = stats["tasks"]
    return tasks["completed"] + tasks["failed"] + tasks["cancelled"]


def submit_many(client: Client, tasks: list[dict]) -> list[str]:
    """POST /submit-tasks in batches of SUBMIT_BATCH; the ids in order."""
    ids: list[str] = []
    for first in range(0, len(tasks), SUBMIT_BATCH):
        ids.extend(client.submit_tasks(tasks[first : first + SUBMIT_BATCH]))
    return ids


def wait_finished(client: Client, n: int, timeout: float, started: float) -> dict:
    """Poll GET /stats every STATS_EVERY_S until n tasks are finished; returns the time
    of the first finished task and of the last, from `started` (perf_counter)."""
    first = None
    seen: dict = {}
    deadline = time.perf_counter() + timeout
    while True:
        seen = client.stats()
        now = time.perf_counter()
        done = _finished(seen)
        if done and first is None:
            first = now - started
        if done >= n:
            return {"first_s": first, "wall_s": now - started, "failed": seen["tasks"]["failed"]}
        if now > deadline:
            raise BenchError(f"{done} of {n} tasks finished after {timeout:g} s: {seen['tasks']}")
        time.sleep(STATS_EVERY_S)


def claims_per_worker(db_path: Path) -> dict:
    """From the database: tasks and claims per worker. A claim's tasks share the worker and
    the claim's `now` (attempts.started_at), so distinct pairs count the claims."""
    with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
        rows = db.execute(
            "SELECT worker_id, count(*), count(DISTINCT started_at) FROM attempts "
            "GROUP BY worker_id"
        ).fetchall()
    return {w: {"tasks": tasks, "claims": claims} for w, tasks, claims in rows}


# -- 2. dispatcher memory --------------------------------------------------------------


def dispatcher_memory(
    db_path: Path, sample_ids: list[str], requests: int, ports: Ports, logs: Path
) -> dict:
    """RSS of a one-process dispatcher serving the database at `db_path`: idle, after one
    GET /stats, and after `requests` more (mostly GET /task/<id>, some /stats and
    /tasks?limit=100)."""
    with Procs(logs, ports) as procs:
        proc, url = procs.dispatcher("dispatcher-memory", db_path, DISPATCHER_PROCESSES="1")
        servers = wait_until(
            lambda: children(proc.pid), 30, lambda: f"no gunicorn worker under {proc.pid}"
        )

        def rss() -> int:
            return sum(rss_kib(pid) for pid in servers)

        out = {"master_kib": rss_kib(proc.pid), "idle_kib": rss()}
        with Client(url) as client:
            start = time.perf_counter()
            client.stats()
            out["first_stats_ms"] = (time.perf_counter() - start) * 1000
            out["after_stats_kib"] = rss()
            start = time.perf_counter()
            for i in range(requests):
                if i % 100 == 0:
                    client.stats()
                elif i % 20 == 0:
                    client.call("GET", "/tasks", params={"status": "completed", "limit": 100})
                else:
                    client.task(sample_ids[i % len(sample_ids)])
            out["requests"] = requests
            out["requests_per_s"] = requests / (time.perf_counter() - start)
        out["after_requests_kib"] = rss()
    return out


# -- 3. throughput against workers and claim size ----------------------------------------


def throughput_run(
    workers: int, prefetch: str, n: int, ports: Ports, workdir: Path, timeout: float
) -> dict:
    """A fresh dispatcher and database, n no-op tasks submitted, then `workers` workers
    (concurrency 1, WORKER_PREFETCH=`prefetch`) launched; timed from the launch until
    GET /stats counts all n finished."""
    workdir.mkdir(parents=True, exist_ok=True)
    db_path = workdir / "tasks.db"
    names = [f"w{i + 1}" for i in range(workers)]
    with Procs(workdir, ports) as procs:
        _, url = procs.dispatcher("dispatcher", db_path)
        with Client(url) as client:
            submit_many(client, [NOOP] * n)
            started = time.perf_counter()
            for name in names:
                procs.worker(
                    name,
                    url,
                    workdir / f"cache-{name}",
                    WORKER_CONCURRENCY="1",
                    WORKER_PREFETCH=prefetch,
                )
            timing = wait_finished(client, n, timeout, started)
    seen = claims_per_worker(db_path)
    per_worker = {name: seen.get(name, {"tasks": 0, "claims": 0}) for name in names}
    claims = sum(w["claims"] for w in per_worker.values())
    return {
        "workers": workers,
        "prefetch": prefetch,
        "tasks": n,
        **timing,
        "tasks_per_s": n / timing["wall_s"],
        "tasks_per_claim": n / claims if claims else 0.0,
        "per_worker": per_worker,
    }


def throughput_grid(
    worker_counts: tuple[int, ...],
    prefetches: tuple[str, ...],
    n: int,
    ports: Ports,
    workdir: Path,
    timeout: float,
) -> list[dict]:
    """throughput_run for every (prefetch, workers) pair."""
    runs = []
    for prefetch in prefetches:
        for k in worker_counts:
            run = throughput_run(k, prefetch, n, ports, workdir / f"p{prefetch}-w{k}", timeout)
            print(
                f"  prefetch={prefetch:>4} workers={k}: {run['tasks_per_s']:7.0f} tasks/s "
                f"(wall {run['wall_s']:.2f} s, {run['tasks_per_claim']:.1f} tasks/claim)",
                flush=True,
            )
            runs.append(run)
    return runs


# -- 4. hoarding ---------------------------------------------------------------------------


def hoarding_run(prefetch: str, ports: Ports, workdir: Path, timeout: float) -> dict:
    """Two idle workers (WORKER_PREFETCH=`prefetch`), then one submission of HOARD_QUICK
    no-ops followed by HOARD_SLOW sleeps of HOARD_SLEEP_S: who ran the sleeps, and the
    wall time from the submission until all are finished."""
    workdir.mkdir(parents=True, exist_ok=True)
    names = ("w1", "w2")
    with Procs(workdir, ports) as procs:
        _, url = procs.dispatcher("dispatcher", workdir / "tasks.db")
        for i, name in enumerate(names):
            procs.worker(name, url, workdir / f"cache-{i}", WORKER_PREFETCH=prefetch)
        with Client(url) as client:
            seen: list = []

            def registered() -> bool:
                seen[:] = [w["worker_id"] for w in client.workers() if w["status"] == "alive"]
                return set(names) <= set(seen)

            wait_until(registered, 60, lambda: f"workers registered: {seen}")
            sleep = {"type": "sleep", "payload": {"duration": HOARD_SLEEP_S}}
            mix = [NOOP] * HOARD_QUICK + [sleep] * HOARD_SLOW
            started = time.perf_counter()
            ids = client.submit_tasks(mix)
            timing = wait_finished(client, len(mix), timeout, started)
            tasks = [client.task(task_id) for task_id in ids]
    ran = {name: {"quick": 0, "sleep": 0} for name in names}
    for task in tasks:
        kind = "sleep" if task["type"] == "sleep" else "quick"
        ran.setdefault(task["worker_id"], {"quick": 0, "sleep": 0})[kind] += 1
    return {"prefetch": prefetch, "wall_s": timing["wall_s"], "ran": ran}


# -- 5. wake-up latency --------------------------------------------------------------------


def wake_latency(submit_url: str, poll_url: str, reps: int) -> dict:
    """`reps` times: a thread holds POST /get-task (wait=WAKE_WAIT_S) on poll_url, then a
    task is submitted to submit_url; the time from the submission's response (and from its
    request) to the held poll returning that task, in ms."""
    from_response, from_request = [], []
    with Client(submit_url) as submitter, Client(poll_url) as poller:
        for _ in range(reps):
            got: dict = {}

            def hold(got=got) -> None:
                try:
                    got["tasks"] = poller.get_task("bench", "", ("default",), WAKE_WAIT_S, 1)
                except Exception as exc:  # reported by the main thread below
                    got["error"] = exc
                got["at"] = time.perf_counter()

            thread = threading.Thread(target=hold, name="held-poll")
            thread.start()
            time.sleep(HOLD_SETTLE_S)  # no signal tells that the poll is held: give it time
            sent = time.perf_counter()
            task_id = submitter.submit_task(NOOP)
            answered = time.perf_counter()
            thread.join(WAKE_WAIT_S + 5)
            if thread.is_alive() or "error" in got:
                raise BenchError(f"held poll failed: {got.get('error', 'still running')}")
            if [t["task_id"] for t in got["tasks"]] != [task_id]:
                raise BenchError(f"held poll returned {got['tasks']}, not task {task_id}")
            from_response.append((got["at"] - answered) * 1000)
            from_request.append((got["at"] - sent) * 1000)
    return {
        "reps": reps,
        "from_response": summary(from_response),
        "from_request": summary(from_request),
    }


def summary(values: list[float]) -> dict:
    """p50, p95 and max of a list of numbers."""
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50": statistics.median(ordered), "p95": p95, "max": ordered[-1]}


def wakeup_bench(reps: int, ports: Ports, workdir: Path) -> dict:
    """Two one-process dispatchers (A and B) on one database file: wake-up latency of a
    poll held on A for a submission to B (across processes) and to A (same process)."""
    workdir.mkdir(parents=True, exist_ok=True)
    db_path = workdir / "tasks.db"
    with Procs(workdir, ports) as procs:
        _, url_a = procs.dispatcher("dispatcher-a", db_path, DISPATCHER_PROCESSES="1")
        _, url_b = procs.dispatcher("dispatcher-b", db_path, DISPATCHER_PROCESSES="1")
        return {
            "across": wake_latency(url_b, url_a, reps),
            "same": wake_latency(url_a, url_a, reps),
        }
