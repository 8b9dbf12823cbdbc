"""Time two checkouts of the project against each other, alternately, on the same minutes.

    .venv/bin/python bench/ab_trees.py BEFORE_DIR AFTER_DIR --workload w1 --pairs 8
    .venv/bin/python bench/ab_trees.py BEFORE_DIR AFTER_DIR --workload single --pairs 8

Each run starts the tree's own ./start_dispatcher.sh (and, for w1, 4 x ./start_worker.sh)
on a fresh SQLite file, measures, and kills the process groups. Pairs alternate which
tree goes first. `w1`: 5,000 no-ops submitted in bulk, tasks/s from the workers' launch
until /stats counts them completed (peerbench's W1 submits them one by one); `drain`: the
same, timed from the first completion (the workers' start-up left out); `--tasks N` for
more than 5,000. `single`:
1,500 POST /submit-task on one session after 200 to warm up. Prints each pair and the
median of the pairs' after/before ratios: the VM's speed drifts between minutes, so
only ratios of neighbouring runs mean anything.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.procs import clean_environ  # noqa: E402

NOOP = {"type": "compute", "payload": {"operation": "double", "value": 1}}


def start(tree: str, script: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        script,
        cwd=tree,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop(procs: list[subprocess.Popen]) -> None:
    """Kill each process's whole group (its children too) and reap it."""
    for p in procs:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)


def wait_up(http: requests.Session, url: str, timeout: float) -> None:
    """Until the dispatcher at `url` answers GET /health (SystemExit after `timeout` s)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if http.get(url + "/health", timeout=1).ok:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"no dispatcher on {url} after {timeout:g} s")
        time.sleep(0.05)  # polling a start-up, not timing anything


def measure(tree: str, port: int, workload: str, tasks: int = 5000) -> float:
    url = f"http://127.0.0.1:{port}"
    env = clean_environ()
    db = f"{tempfile.mkdtemp(prefix='ab-')}/tasks.db"
    env.update(DISPATCHER_PORT=str(port), DATABASE_URL=f"sqlite:///{db}", DISPATCHER_URL=url)
    env["LOG_LEVEL"] = "WARNING"
    procs = [start(tree, ["./start_dispatcher.sh"], env)]
    http = requests.Session()
    try:
        wait_up(http, url, 120)
        if workload == "single":
            for _ in range(200):
                http.post(url + "/submit-task", json=NOOP).raise_for_status()
            t0 = time.perf_counter()
            for _ in range(1500):
                http.post(url + "/submit-task", json=NOOP).raise_for_status()
            return 1500 / (time.perf_counter() - t0)
        for _ in range(tasks // 1000):
            http.post(url + "/submit-tasks", json={"tasks": [NOOP] * 1000}).raise_for_status()
        t0 = time.perf_counter()
        procs += [start(tree, ["./start_worker.sh", f"w{i}"], env) for i in range(4)]
        first = None  # (time, completed) at the first count above 0
        while (done := http.get(url + "/stats").json()["tasks"]["completed"]) < tasks:
            if first is None and done:
                first = (time.perf_counter(), done)
            time.sleep(0.01)  # peerbench polls /stats as often
        if workload == "drain":  # from the first completion: start-up left out
            return (tasks - first[1]) / (time.perf_counter() - first[0])
        return tasks / (time.perf_counter() - t0)
    finally:
        http.close()
        stop(procs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--workload", choices=("w1", "drain", "single"), default="w1")
    parser.add_argument("--tasks", type=int, default=5000, help="w1 and drain: thousands")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--port", type=int, default=5700)
    args = parser.parse_args()
    before, after = [], []
    for i in range(args.pairs):
        order = [(args.before, before), (args.after, after)]
        for tree, out in order if i % 2 == 0 else reversed(order):
            out.append(measure(tree, args.port + i, args.workload, args.tasks))
        print(f"pair {i}: before {before[-1]:,.0f}/s after {after[-1]:,.0f}/s "
              f"after/before {after[-1] / before[-1]:.3f}", flush=True)  # fmt: skip
    ratios = [a / b for a, b in zip(after, before, strict=True)]
    print(
        f"medians: before {statistics.median(before):,.0f}/s"
        f" after {statistics.median(after):,.0f}/s;"
        f" median of after/before {statistics.median(ratios):.3f}"
        f" (range {min(ratios):.2f}-{max(ratios):.2f})"
    )


if __name__ == "__main__":
    main()
