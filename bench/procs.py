"""Real dispatcher and worker processes for the benchmark, started by the project's own
scripts, each in its own process group, and always stopped (killpg) by `Procs.close()`.

Ports come from 5400-5499 only (the range this machine gives the benchmark).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

from common.client import Client, DispatcherUnreachable
from common.config import PROJECT_ROOT, Config

PORT_RANGE = range(5400, 5500)
START_TIMEOUT_S = 120.0  # the first start may create .venv
STOP_GRACE_S = 5.0
WORKER_GRACE_S = 1.0

# What every benchmark process runs with, on top of .env's defaults: quiet logs (per-task
# INFO lines cost every queue some throughput; peerbench runs us with WARNING too).
QUIET = {"LOG_LEVEL": "WARNING", "DISPATCHER_HOST": "127.0.0.1"}


class BenchError(Exception):
    """A benchmark step failed or ran past its deadline; str(exc) says what was seen."""


def wait_until(predicate: Callable[[], object], timeout: float, describe: Callable[[], str]):
    """Poll `predicate` every 20 ms until it returns something truthy, or raise BenchError
    with `describe()` (the last state seen) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"gave up after {timeout:g} s: {describe()}")
        time.sleep(0.02)


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


class Proc:
    """One started script, in its own session (process group = its pid)."""

    def __init__(self, name: str, kind: str, args: list[str], env: dict[str, str], log_path: Path):
        self.name = name
        self.kind = kind  # "dispatcher" or "worker"
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.popen = subprocess.Popen(
            args,
            cwd=PROJECT_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def terminate(self) -> None:
        self._killpg(signal.SIGTERM)

    def kill(self, deadline: float) -> None:
        """Wait for the script to exit until `deadline` (monotonic), then SIGKILL the
        whole group and close the log."""
        try:
            self.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        self._killpg(signal.SIGKILL)
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()

    def _killpg(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


class Procs:
    """The processes of one benchmark step; a context manager that stops them all."""

    def __init__(self, logs: Path, ports: Ports):
        self.logs = logs
        self.ports = ports
        self.started: list[Proc] = []
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
            group = [p for p in self.started if p.kind == kind]
            for proc in group:
                proc.terminate()
            deadline = time.monotonic() + grace
            for proc in group:
                proc.kill(deadline)
                self.started.remove(proc)

    def start(self, name: str, kind: str, args: list[str], settings: dict[str, str]) -> Proc:
        proc = Proc(name, kind, args, process_env(settings), self.logs / f"{name}.log")
        self.started.append(proc)
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

        def healthy() -> bool:
            if not proc.alive():
                raise BenchError(f"{name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
            try:
                with Client(url) as client:
                    return client.call("GET", "/health").get("status") == "ok"
            except DispatcherUnreachable:
                return False

        wait_until(healthy, START_TIMEOUT_S, lambda: f"{name} not healthy:\n{proc.log_tail()}")
        return proc, url

    def worker(self, name: str, url: str, cache_dir: Path, **settings: str) -> Proc:
        """Start ./start_worker.sh NAME against `url` (returns at once, not waiting)."""
        env = {**QUIET, "DISPATCHER_URL": url, "WORKER_CACHE_DIR": str(cache_dir), **settings}
        return self.start(name, "worker", ["./start_worker.sh", name], env)


def process_env(settings: dict[str, str]) -> dict[str, str]:
    """This process's environment without any of the queue's keys (nothing inherited from
    the shell), plus `settings`; .env supplies the other keys' defaults."""
    keys = {f.name.upper() for f in fields(Config)}
    base = {k: v for k, v in os.environ.items() if k not in keys}
    return {**base, **{k: str(v) for k, v in settings.items()}}


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


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB (from /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")
