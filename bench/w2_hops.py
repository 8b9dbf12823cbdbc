"""Where one task's round trip goes (peerbench's W2), hop by hop (issue 20).

    .venv/bin/python bench/w2_hops.py [--trips 200] [--port 5860] [--pool-calls 500]
                                      [--set KEY=VALUE ...]

Starts this tree's dispatcher (a fresh SQLite file, LOG_LEVEL=WARNING) and one idle
worker, then runs `--trips` round trips as W2 does: POST /submit-task, then GET
/task/<id>?wait=10 until it answers completed, on one kept-alive session. Each trip is
cut at the times the dispatcher stored for the task (its `now` when it took the
submission, the claim and the result: storage.get, full resolution, the same clock as
this process), so the hops are:

  submit in      client sends POST /submit-task -> the dispatcher takes it (created_at)
  to the claim   created_at -> the worker's claim (started_at): the submission's commit
                 (fsync), its answer, the held poll's wake-up, the claim's transaction
  worker         started_at -> the dispatcher takes the result (finished_at): the claim's
                 answer, the worker's buffer and pool call, the POST /submit-result
  to the client  finished_at -> the client has the answer: the result's commit (fsync),
                 the held GET's wake-up, its read and answer

and, measured alone in this process: a pool round trip (worker/pool.py, one no-op per
call). Prints each hop's median and p90 in ms and its share of the round trip.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import ab_trees  # noqa: E402  (bench/, this script's directory)
from ab_trees import wait_up  # noqa: E402

from common.config import Config  # noqa: E402
from common.procs import clean_environ  # noqa: E402
from dispatcher.storage import open_storage  # noqa: E402
from worker.pool import TaskPool  # noqa: E402

NOOP = {"type": "compute", "payload": {"operation": "double", "value": 1}}
HOPS = ("submit in", "to the claim", "worker", "to the client")


def start(args: list[str], env: dict) -> subprocess.Popen:
    """`python -m ARGS` of this tree, in a process group of its own."""
    return ab_trees.start(str(ROOT), [str(ROOT / ".venv/bin/python"), "-m", *args], env)


def trips(port: int, n: int, settings: dict[str, str]) -> list[dict[str, float]]:
    """Each round trip's hops, in ms; `settings`: extra configuration keys."""
    url = f"http://127.0.0.1:{port}"
    db = f"{tempfile.mkdtemp(prefix='w2-hops-')}/tasks.db"
    env = clean_environ()
    env.update(DISPATCHER_PORT=str(port), DATABASE_URL=f"sqlite:///{db}", DISPATCHER_URL=url)
    env["LOG_LEVEL"] = "WARNING"
    env.update(settings)
    procs = [start(["dispatcher"], env)]
    http = requests.Session()
    http.trust_env = False
    seen: list[tuple[str, float, float]] = []  # task id, sent, answered (time.time())
    try:
        wait_up(http, url, 60)
        procs.append(start(["worker", "w-hops"], env))
        for i in range(n + 10):  # the first ten warm up (the worker's start, the caches)
            sent = time.time()
            task_id = http.post(url + "/submit-task", json=NOOP).json()["task_id"]
            while http.get(f"{url}/task/{task_id}?wait=10").json()["status"] != "completed":
                pass
            if i >= 10:
                seen.append((task_id, sent, time.time()))
    finally:
        http.close()
        ab_trees.stop(procs)
    storage = open_storage(Config(database_url=f"sqlite:///{db}"))
    out = []
    for task_id, sent, answered in seen:
        task = storage.get(task_id)
        created, started, finished = task["created_at"], task["started_at"], task["finished_at"]
        ms = [created - sent, started - created, finished - started, answered - finished]
        out.append({**dict(zip(HOPS, (1000 * v for v in ms), strict=True)),
                    "round trip": 1000 * (answered - sent)})  # fmt: skip
    storage.close()
    return out


def pool_round_trips(calls: int) -> list[float]:
    """One no-op per pool call, in ms (worker/pool.py, as the worker calls it)."""
    pool = TaskPool(1, 0, ())
    pool.warm()
    item = ("0" * 32, 1, "default", NOOP["type"], NOOP["payload"])
    times = []
    try:
        for _ in range(calls + 20):
            t0 = time.perf_counter()
            [body] = pool.start([item], 30).result()
            times.append((time.perf_counter() - t0) * 1000)
            assert body["status"] == "completed", body
    finally:
        pool.stop()
    return times[20:]


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trips", type=int, default=200)
    parser.add_argument("--port", type=int, default=5860)
    parser.add_argument("--pool-calls", type=int, default=500)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting, e.g. DISPATCHER_PROCESSES=1 (repeatable)",
    )
    args = parser.parse_args()
    rows = trips(args.port, args.trips, dict(kv.split("=", 1) for kv in args.set))
    whole = statistics.median(r["round trip"] for r in rows)
    print(f"{len(rows)} round trips, one idle worker, SQLite, this tree\n")
    print(f"{'hop':<16}{'p50 ms':>9}{'p90 ms':>9}{'share':>8}")
    for hop in (*HOPS, "round trip"):
        values = [r[hop] for r in rows]
        mid = statistics.median(values)
        print(f"{hop:<16}{mid:>9.2f}{p(values, 90):>9.2f}{mid / whole:>8.0%}")
    pool = pool_round_trips(args.pool_calls)
    print(f"\npool round trip alone (1 no-op a call, {len(pool)} calls): "
          f"p50 {statistics.median(pool):.3f} ms, p90 {p(pool, 90):.3f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
