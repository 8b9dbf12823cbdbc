"""The dispatcher's and a worker's memory after a million tasks (issue 20).

    .venv/bin/python bench/rss_million.py TREE [TREE ...] [--tasks 1000000] [--port 5750]

For each checkout in turn: its ./start_dispatcher.sh on a fresh SQLite file and one
./start_worker.sh; --tasks no-ops submitted 1,000 a call while the worker runs them;
when /stats counts them all completed, the resident memory (VmRSS summed over each
process group: the gunicorn master and its server processes; the worker and its pool
process) and the wall time. Run two trees to compare before and after.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ab_trees import NOOP, start, stop, wait_up  # noqa: E402

from common.procs import clean_environ, group_rss_kib  # noqa: E402


def run(tree: str, tasks: int, port: int) -> dict:
    url = f"http://127.0.0.1:{port}"
    env = clean_environ()
    db = f"{tempfile.mkdtemp(prefix='rss-')}/tasks.db"
    env.update(DISPATCHER_PORT=str(port), DATABASE_URL=f"sqlite:///{db}", DISPATCHER_URL=url)
    env["LOG_LEVEL"] = "WARNING"
    dispatcher = start(tree, ["./start_dispatcher.sh"], env)
    procs = [dispatcher]
    http = requests.Session()
    try:
        wait_up(http, url, 120)
        worker = start(tree, ["./start_worker.sh", "w1"], env)
        procs.append(worker)
        t0 = time.perf_counter()
        for _ in range(tasks // 1000):
            http.post(url + "/submit-tasks", json={"tasks": [NOOP] * 1000}).raise_for_status()
        while http.get(url + "/stats").json()["tasks"]["completed"] < tasks:
            time.sleep(0.5)  # polling a long run's end, not timing a hop
        return {
            "seconds": time.perf_counter() - t0,
            "dispatcher_mib": group_rss_kib(dispatcher.pid) / 1024,
            "worker_mib": group_rss_kib(worker.pid) / 1024,
        }
    finally:
        http.close()
        stop(procs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="+")
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--port", type=int, default=5750)
    args = parser.parse_args()
    for tree in args.trees:
        r = run(tree, args.tasks, args.port)
        print(
            f"{tree}: {args.tasks:,} tasks in {r['seconds']:.0f} s; RSS dispatcher "
            f"{r['dispatcher_mib']:.1f} MiB, worker {r['worker_mib']:.1f} MiB",
            flush=True,
        )


if __name__ == "__main__":
    main()
