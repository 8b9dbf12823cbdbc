"""Real dispatcher and worker processes for the benchmark, started by the project's own
scripts, each in its own process group (common/procs.py, as in the integration tests),
and always stopped (killpg) by `Procs.close()`.

Ports come from 5400-5499 only (the range this machine gives the benchmark).
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from common.procs import Proc, clean_environ, poll, wait_healthy

PORT_RANGE = range(5400, 5500)
START_TIMEOUT_S = 120.0  # the first start may create .venv
STOP_GRACE_S = 5.0
WORKER_GRACE_S = 1.0

# What every benchmark process runs with, on top of .env's defaults: quiet logs (per-task
# INFO lines cost every queue some throughput; peerbench runs us with WARNING too).
QUIET = {"LOG_LEVEL": "WARNING", "DISPATCHER_HOST": "127.0.0.1"}


class BenchError(Exception):
    """A benchmark step failed or ran past its deadline; str(exc) says what was seen."""


def _give_up(message: str) -> NoReturn:
    raise BenchError(message)


def wait_until(predicate: Callable[[], object], timeout: float, describe: Callable[[], str]):
    """Poll `predicate` every 20 ms until it returns something truthy, or raise BenchError
    with `describe()` (the last state seen) after `timeout` seconds."""
    return poll(predicate, timeout, describe, _give_up, every=0.02)


class Ports:
    """Hands out free TCP ports from PORT_RANGE, never the same one twice in a run (a
    just-stopped server's port may linger)."""

    def __init__(self, ports: range = PORT_RANGE):
        self._ports = iter(ports)

    def take(self) -> int:
        for port in self._ports:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
        raise BenchError(f"no free port left in {PORT_RANGE.start}-{PORT_RANGE.stop - 1}")


class Procs:
    """The processes of one benchmark step; a context manager that stops them all."""

    def __init__(self, logs: Path, ports: Ports):
        self.logs = logs
        self.ports = ports
        self.started: list[tuple[str, Proc]] = []  # (kind, process)
        logs.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop every process: workers first (SIGTERM to all at once, SIGKILL after
        WORKER_GRACE_S: a worker's graceful stop waits for its held long poll, which the
        benchmark has no use for), then the dispatchers (STOP_GRACE_S)."""
        for kind, grace in (("worker", WORKER_GRACE_S), ("dispatcher", STOP_GRACE_S)):
            group = [p for k, p in self.started if k == kind]
            for proc in group:
                proc.signal_group(signal.SIGTERM)
            deadline = time.monotonic() + grace
            for proc in group:
                proc.close(deadline)
            self.started = [(k, p) for k, p in self.started if k != kind]

    def start(self, name: str, kind: str, args: list[str], settings: dict[str, str]) -> Proc:
        """Start a script; `kind` ("dispatcher" or "worker") says when close() stops it."""
        env = {**clean_environ(), **{k: str(v) for k, v in settings.items()}}
        proc = Proc(name, args, env, self.logs / f"{name}.log")
        self.started.append((kind, proc))
        return proc

    def dispatcher(
        self, name: str, db_path: Path, port: int | None = None, **settings: str
    ) -> tuple[Proc, str]:
        """Start ./start_dispatcher.sh on `db_path` and wait until /health answers."""
        port = port or self.ports.take()
        url = f"http://127.0.0.1:{port}"
        env = {
            **QUIET,
            "DISPATCHER_PORT": str(port),
            "DATABASE_URL": f"sqlite:///{db_path.resolve()}",
            "DISPATCHER_URL": url,
            **settings,
        }
        proc = self.start(name, "dispatcher", ["./start_dispatcher.sh"], env)
        wait_healthy(proc, url, START_TIMEOUT_S, _give_up, every=0.02)
        return proc, url

    def worker(self, name: str, url: str, cache_dir: Path, **settings: str) -> Proc:
        """Start ./start_worker.sh NAME against `url` (returns at once, not waiting)."""
        env = {**QUIET, "DISPATCHER_URL": url, "WORKER_CACHE_DIR": str(cache_dir), **settings}
        return self.start(name, "worker", ["./start_worker.sh", name], env)


def children(pid: int) -> list[int]:
    """The pids whose parent is `pid` (gunicorn's worker processes under its master)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields_after_name = stat[stat.rfind(")") + 2 :].split()
        if int(fields_after_name[1]) == pid:  # state, ppid, ...
            found.append(int(entry.name))
    return sorted(found)
