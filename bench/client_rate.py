"""What the client library (taskqueue.Client) costs, against a real dispatcher.

    .venv/bin/python bench/client_rate.py [--submits 500] [--pairs 8] [--map 10000]

(a) Single submissions: rounds of `--submits` calls of `taskqueue.Client.submit` and of
    the raw `common/client.py` `submit_task` alternate against one dispatcher (no
    workers); the ratio of their rates in each pair, and the median (target >= 0.95).
(b) `client.map` over `--map` no-op tasks (`compute` double, peerbench's no-op) with 4
    workers (`./start_worker.sh`, WORKER_CONCURRENCY=1, as peerbench starts them for
    W1), already up: tasks/s from the first submission to the last result, the results
    checked, and the requests the client made per task.
(c) `client.as_completed` over `--map` tasks submitted at once (submit_many) with the
    same workers: tasks/s and requests per task, against one GET /task/<id>?wait= per
    task in submission order (what add_task.py --wait did before it).
(d) For comparison, peerbench's W1 shape on this machine, without the client: the tasks
    stored first, then 4 workers launched; tasks/s from their launch to the last result
    (GET /stats polled every 20 ms).

Processes are started as bench/procs.py starts them (ports 5400-5499, LOG_LEVEL=WARNING,
a fresh SQLite file), and stopped at the end. Prints one line per measurement.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procs import Ports, Procs, wait_until  # noqa: E402
from common.client import Client as RawClient  # noqa: E402
from taskqueue import Client  # noqa: E402
from taskqueue.client import _Connection  # noqa: E402

PAYLOAD = {"operation": "double", "value": 21}


def noop(i: int) -> dict:
    return {"operation": "double", "value": i}


class Counted:
    """Counts the requests every taskqueue connection makes (patched in for a run)."""

    def __init__(self) -> None:
        self.n = 0
        self._call = _Connection.call

    def __enter__(self) -> Counted:
        original, counter = self._call, self

        def call(conn, *args, **kwargs):
            counter.n += 1  # the GIL makes a lost update rare; a count, not a proof
            return original(conn, *args, **kwargs)

        _Connection.call = call
        return self

    def __exit__(self, *exc: object) -> None:
        _Connection.call = self._call


def single_submits(url: str, n: int, pairs: int) -> None:
    raw = RawClient(url)
    client = Client(url, "")
    body = {"type": "compute", "payload": PAYLOAD}
    for _ in range(200):  # warm both connections and the dispatcher's processes
        raw.submit_task(body)
        client.submit("compute", PAYLOAD)
    ratios, raw_rates, lib_rates = [], [], []
    for i in range(pairs):
        order = ("raw", "lib") if i % 2 == 0 else ("lib", "raw")  # alternate who goes first
        rates = {}
        for who in order:
            start = time.perf_counter()
            if who == "raw":
                for _ in range(n):
                    raw.submit_task({"type": "compute", "payload": PAYLOAD})
            else:
                for _ in range(n):
                    client.submit("compute", PAYLOAD)
            rates[who] = n / (time.perf_counter() - start)
        raw_rates.append(rates["raw"])
        lib_rates.append(rates["lib"])
        ratios.append(rates["lib"] / rates["raw"])
        print(
            f"  pair {i + 1}: raw {rates['raw']:.0f}/s, client {rates['lib']:.0f}/s, "
            f"ratio {ratios[-1]:.3f}",
            flush=True,
        )
    print(
        f"(a) submit one at a time: raw submit_task {statistics.median(raw_rates):.0f} tasks/s, "
        f"client.submit {statistics.median(lib_rates):.0f} tasks/s; ratio median "
        f"{statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}, "
        f"{pairs} pairs of {n})",
        flush=True,
    )
    raw.close()
    client.close()


def mapped(url: str, n: int, max_in_flight: int) -> None:
    with Client(url, "") as client, Counted() as counted:
        start = time.perf_counter()
        results = list(client.map("compute", (noop(i) for i in range(n)), max_in_flight))
        elapsed = time.perf_counter() - start
    wrong = sum(r["result"] != 2 * i for i, r in enumerate(results))
    print(
        f"(b) client.map over {n} no-ops, 4 workers, max_in_flight={max_in_flight}: "
        f"{n / elapsed:.0f} tasks/s ({elapsed:.2f} s), {counted.n / n:.2f} requests/task, "
        f"{wrong} wrong",
        flush=True,
    )


def completed(url: str, n: int) -> None:
    with Client(url, "") as client, Counted() as counted:
        start = time.perf_counter()
        handles = client.submit_many(("compute", noop(i)) for i in range(n))
        finished = sum(1 for _ in client.as_completed(handles))
        elapsed = time.perf_counter() - start
    print(
        f"(c) submit_many + as_completed over {finished} no-ops: {n / elapsed:.0f} tasks/s "
        f"({elapsed:.2f} s), {counted.n / n:.2f} requests/task",
        flush=True,
    )
    with Client(url, "") as client, Counted() as counted:
        start = time.perf_counter()
        handles = client.submit_many(("compute", noop(i)) for i in range(n))
        for h in handles:  # one long poll per task, in submission order
            h.wait()
        elapsed = time.perf_counter() - start
    print(
        f"    one wait per task, in order: {n / elapsed:.0f} tasks/s ({elapsed:.2f} s), "
        f"{counted.n / n:.2f} requests/task",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--submits", type=int, default=500, help="calls per round of (a)")
    parser.add_argument("--pairs", type=int, default=8, help="pairs of rounds in (a)")
    parser.add_argument("--map", type=int, default=10_000, help="tasks in (b) and (c)")
    parser.add_argument("--max-in-flight", type=int, default=100, help="client.map's bound")
    parser.add_argument(
        "--only", default="abcd", help="the measurements to make, e.g. 'b' or 'bd' (default all)"
    )
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="client-rate-") as tmp,
        Procs(Path(tmp) / "logs", Ports()) as procs,
    ):
        if "a" in args.only:
            _, url = procs.dispatcher("dispatcher-a", Path(tmp) / "a.db")
            single_submits(url, args.submits, args.pairs)
        # a fresh database for the runs with workers: (a)'s tasks are not theirs to run
        _, url = procs.dispatcher("dispatcher-b", Path(tmp) / "b.db")
        workers = [procs.worker(f"worker-{i}", url, Path(tmp) / f"cache-{i}") for i in range(1, 5)]
        with RawClient(url) as raw:
            wait_until(
                lambda: sum(w["status"] == "alive" for w in raw.workers()) == len(workers),
                120,
                lambda: f"workers not all alive: {raw.workers()}",
            )
        if "b" in args.only:
            mapped(url, args.map, args.max_in_flight)
        if "c" in args.only:
            completed(url, args.map)
        if "d" not in args.only:
            return 0
        # (d) the queue without the client, W1's way, on this machine: the tasks are
        # stored first, then 4 workers start; tasks/s from their launch to the last result
        _, url = procs.dispatcher("dispatcher-c", Path(tmp) / "c.db")
        with Client(url, "") as client:
            client.submit_many(("compute", noop(i)) for i in range(args.map))
            start = time.perf_counter()
            for i in range(1, 5):
                procs.worker(f"worker-c{i}", url, Path(tmp) / f"cache-c{i}")
            wait_until(
                lambda: client.stats()["tasks"]["completed"] == args.map,
                300,
                lambda: f"not all completed: {client.stats()['tasks']}",
            )
            elapsed = time.perf_counter() - start
        print(
            f"(d) W1-like, no client: {args.map} no-ops stored, then 4 workers launched: "
            f"{args.map / elapsed:.0f} tasks/s from their launch ({elapsed:.2f} s)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
