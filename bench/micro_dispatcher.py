"""Microbenchmarks of the dispatcher's hot paths, in-process (no server, no network).

    .venv/bin/python bench/micro_dispatcher.py [--quick] [--profile OP]

Each operation is a real request through the Flask app's WSGI callable (what gunicorn
calls), on a fresh SQLite file with the dispatcher's settings (WAL, synchronous=FULL),
LOG_LEVEL=WARNING as in peerbench. It prints, per call, the median wall time and the
mean CPU time of this process (wall includes the fsync of each commit), each the best of
five rounds, as other load on the machine only ever adds time. A trivial Flask
app driven the same way shows the framework's own floor. `--profile OP` runs one
operation under cProfile and prints where its time went.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask import Flask, request  # noqa: E402

from common.config import Config  # noqa: E402
from dispatcher.app import create_app  # noqa: E402

WORKER = "bench-w1"


def noop(i: int) -> dict:
    """peerbench's no-op task."""
    return {"type": "compute", "payload": {"operation": "double", "value": i}}


class Driver:
    """POST JSON to a WSGI app the way gunicorn hands it a request."""

    def __init__(self, app):
        self.app = app.wsgi_app

    def post_raw(self, path: str, data: bytes) -> tuple[int, dict]:
        environ = {
            "REQUEST_METHOD": "POST",
            "SCRIPT_NAME": "",
            "PATH_INFO": path,
            "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "5000",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(data)),
            "HTTP_HOST": "127.0.0.1:5000",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(data),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        status = []
        chunks = self.app(environ, lambda s, h, exc_info=None: status.append(s))
        try:
            out = b"".join(chunks)
        finally:
            getattr(chunks, "close", lambda: None)()
        return int(status[0].split()[0]), json.loads(out)


def timed(fn, calls: int, rounds: int = 5) -> dict:
    """Run fn() `calls` times in `rounds` rounds; per call, the best round's median wall
    ms and mean CPU ms (the best round is the least disturbed by other load)."""
    walls, cpus = [], []
    for r in range(rounds):
        times = []
        cpu0 = time.process_time()
        for _ in range(calls // rounds + (r < calls % rounds)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        cpus.append((time.process_time() - cpu0) / len(times))
        walls.append(statistics.median(times))
    return {"wall_ms": min(walls) * 1e3, "cpu_ms": min(cpus) * 1e3, "calls": calls}


def echo_app() -> Flask:
    """The HTTP floor's app (peerbench's apps/flask_echo.py)."""
    app = Flask("echo")

    @app.post("/echo")
    def echo():
        body = request.get_json()
        return {"ok": True, "value": body.get("value")}

    return app


class Bench:
    def __init__(self, workdir: Path, quick: bool):
        config = Config(database_url=f"sqlite:///{workdir}/tasks.db", log_level="WARNING")
        self.app = create_app(config, background=False)
        self.http = Driver(self.app)
        self.n = 300 if quick else 2000
        self.batches = 5 if quick else 20

    def close(self):
        ctx = self.app.extensions["taskqueue"]
        ctx.wakeup.stop()
        ctx.storage.close()

    def _check(self, answer, code=200):
        assert answer[0] == code, answer

    # -- the operations: each sets up the state it needs, returns (one call, calls) ----

    def echo(self):
        driver = Driver(echo_app())
        body = json.dumps(noop(1)).encode()
        return lambda: driver.post_raw("/echo", body), self.n

    def submit_task(self):
        body = json.dumps(noop(7)).encode()
        return lambda: self._check(self.http.post_raw("/submit-task", body), 201), self.n

    def submit_tasks(self):
        body = json.dumps({"tasks": [noop(i) for i in range(1000)]}).encode()
        return lambda: self._check(self.http.post_raw("/submit-tasks", body), 201), self.batches

    def _fill(self, n: int):
        body = json.dumps({"tasks": [noop(i) for i in range(1000)]}).encode()
        for _ in range(0, n, 1000):
            self._check(self.http.post_raw("/submit-tasks", body), 201)

    def get_task(self):
        self._fill(100 * self.batches)
        body = json.dumps({"worker_id": WORKER, "max_tasks": 100}).encode()
        self.claimed = []

        def one():
            code, answer = self.http.post_raw("/get-task", body)
            assert code == 200 and len(answer["tasks"]) == 100, (code, answer)
            self.claimed.append(answer["tasks"])

        return one, self.batches

    def submit_results(self):
        bodies = [
            json.dumps(
                {
                    "results": [
                        {
                            "task_id": t["task_id"],
                            "lease_token": t["lease_token"],
                            "worker_id": WORKER,
                            "status": "completed",
                            "result": {"operation": "double", "value": 1, "result": 2},
                        }
                        for t in tasks
                    ]
                }
            ).encode()
            for tasks in self.claimed
        ]
        it = iter(bodies)

        def one():
            code, answer = self.http.post_raw("/submit-results", next(it))
            assert code == 200 and all(a.get("status") == "completed" for a in answer["results"])

        return one, len(bodies)

    def claim_sync(self):
        """storage.claim of one task at a time (the W2 path): the commit's cost."""
        storage = self.app.extensions["taskqueue"].storage
        self._fill(1000)
        return (
            lambda: storage.claim(WORKER, "", ("default",), 1, now=time.time(), lease_s=60),
            min(self.n, 1000),
        )


OPERATIONS = {
    "echo (Flask floor)": Bench.echo,
    "submit-task": Bench.submit_task,
    "submit-tasks x1000": Bench.submit_tasks,
    "get-task x100": Bench.get_task,
    "submit-results x100": Bench.submit_results,
    "storage.claim x1": Bench.claim_sync,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls")
    parser.add_argument("--profile", choices=list(OPERATIONS), help="cProfile one operation")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="micro-dispatcher-") as tmp:
        bench = Bench(Path(tmp), args.quick)
        try:
            if args.profile:
                return profile(bench, args.profile)
            print(f"{'operation':<22} {'wall ms/call':>13} {'cpu ms/call':>12} {'calls':>6}")
            for name, op in OPERATIONS.items():
                r = timed(*op(bench))
                print(f"{name:<22} {r['wall_ms']:>13.3f} {r['cpu_ms']:>12.3f} {r['calls']:>6}")
        finally:
            bench.close()
    return 0


def profile(bench: Bench, name: str) -> int:
    ops = list(OPERATIONS)
    for before in ops[1 : ops.index(name)]:  # the state the operation needs
        timed(*OPERATIONS[before](bench))
    fn, calls = OPERATIONS[name](bench)
    profiler = cProfile.Profile()
    profiler.runcall(timed, fn, calls)
    stats = pstats.Stats(profiler).strip_dirs().sort_stats("tottime")
    stats.print_stats(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
