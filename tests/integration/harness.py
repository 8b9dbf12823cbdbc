"""Real processes on free ports: the dispatcher and workers started by the project's own
scripts, each in its own process group so a test can `kill -9` the whole group (the
processes themselves are common/procs.py's, which the benchmarks use too)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from common.bootstrap import REEXEC_MARK
from common.client import Client, DispatcherUnreachable
from common.procs import Proc, clean_environ, established_ports, poll, wait_healthy
from dispatcher.localwake import LocalWake

# Short timings so crash and outage tests finish in seconds; a test overrides what it needs.
FAST = {
    "LEASE_SECONDS": "3",
    "WORKER_DEAD_AFTER": "2",
    "WORKER_HEARTBEAT_INTERVAL": "0.3",
    "WORKER_POLL_INTERVAL": "1",
    "REAP_INTERVAL": "0.2",
    "CACHE_RETRY_INTERVAL": "0.5",
    "RETRY_BACKOFF_BASE": "0.1",
    "RETRY_BACKOFF_CAP": "1",
    "DISPATCHER_PROCESSES": "2",
    "WORKER_SHUTDOWN_GRACE": "5",
    "LOG_LEVEL": "INFO",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(
    predicate: Callable[[], object], timeout: float, describe: Callable[[], str], every=0.05
):
    """Poll `predicate` until it returns something truthy; fail with the state seen."""
    return poll(predicate, timeout, describe, pytest.fail, every)


class Cluster:
    """One test's dispatcher(s), workers and database, all under tmp_path."""

    def __init__(self, tmp_path: Path, **settings: str):
        self.tmp = tmp_path
        self.port = int(settings.get("DISPATCHER_PORT") or free_port())
        self.db_path = tmp_path / "tasks.db"
        self.settings = {
            **FAST,
            "DISPATCHER_PORT": str(self.port),
            "DATABASE_URL": f"sqlite:///{self.db_path}",
            "DISPATCHER_URL": f"http://127.0.0.1:{self.port}",
            "WORKER_CACHE_DIR": str(tmp_path / "cache"),
            **{k: str(v) for k, v in settings.items()},
        }
        self.procs: list[Proc] = []
        self.client = Client(self.url, ca_file=self.ca_file)

    @property
    def url(self) -> str:
        return self.settings["DISPATCHER_URL"]

    @property
    def ca_file(self) -> str:
        """DISPATCHER_CA_FILE of a cluster served over TLS (test_tls.py), else ""."""
        return self.settings.get("DISPATCHER_CA_FILE", "")

    def env(self, **extra: str) -> dict:
        return {**clean_environ(), **self.settings, **{k: str(v) for k, v in extra.items()}}

    def user_env(self) -> dict:
        """What a user's shell gives a CLI: none of our settings but DISPATCHER_URL, and no
        sign of a venv (so the system python3 re-runs itself inside .venv)."""
        return {**clean_environ({REEXEC_MARK, "VIRTUAL_ENV"}), "DISPATCHER_URL": self.url}

    def _start(self, name: str, args: list[str], **extra: str) -> Proc:
        proc = Proc(name, args, self.env(**extra), self.tmp / f"{name}.log")
        self.procs.append(proc)
        return proc

    def launch_dispatcher(
        self, name: str = "dispatcher", port: int | None = None, **extra: str
    ) -> Proc:
        """Start a dispatcher without waiting for it (start_dispatcher waits); `extra`:
        settings of its own."""
        port = port or self.port
        return self._start(name, ["./start_dispatcher.sh"], DISPATCHER_PORT=str(port), **extra)

    def start_dispatcher(
        self, name: str = "dispatcher", port: int | None = None, **extra: str
    ) -> Proc:
        port = port or self.port
        proc = self.launch_dispatcher(name, port, **extra)
        scheme = "https" if self.url.startswith("https:") else "http"
        url = f"{scheme}://127.0.0.1:{port}"
        wait_healthy(proc, url, 60, pytest.fail, ("ok", "degraded"), ca_file=self.ca_file)
        return proc

    def start_worker(self, worker_id: str, *args: str, **extra: str) -> Proc:
        return self._start(worker_id, ["./start_worker.sh", worker_id, *args], **extra)

    def wait_worker_alive(self, worker: Proc, timeout: float = 60) -> dict:
        """Until GET /workers lists `worker` alive (its first heartbeat registers it)."""
        seen: list[dict] = []

        def listed():
            nonlocal seen
            if not worker.alive():
                code = worker.popen.returncode
                pytest.fail(f"worker {worker.name} exited with {code}:\n{worker.log()}")
            seen = self.client.workers()
            mine = [w for w in seen if w["worker_id"] == worker.name and w["status"] == "alive"]
            return mine[0] if mine else None

        return wait_for(
            listed,
            timeout,
            lambda: f"worker {worker.name} not alive (workers: {seen}):\n{worker.log()}",
        )

    def submit(self, type_: str, payload: dict, **options) -> str:
        return self.client.submit_task({"type": type_, "payload": payload, **options})

    def task(self, task_id: str) -> dict:
        return self.client.task(task_id)

    def wait_status(self, task_id: str, statuses, timeout: float = 30) -> dict:
        statuses = (statuses,) if isinstance(statuses, str) else tuple(statuses)
        seen: dict = {}

        def reached():
            nonlocal seen
            try:
                seen = self.client.task(task_id)
            except DispatcherUnreachable as exc:
                seen = {"unreachable": str(exc)}
                return None
            return seen if seen.get("status") in statuses else None

        return wait_for(
            reached, timeout, lambda: f"task {task_id} not {statuses}: {seen}\n{self.logs()}"
        )

    def wait_all_finished(self, task_ids: list[str], timeout: float = 60) -> list[dict]:
        return [
            self.wait_status(t, ("completed", "failed", "cancelled"), timeout) for t in task_ids
        ]

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log()}" for p in self.procs)

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.close()
        self.client.close()
        # a dispatcher killed with -9 leaves its wake-up socket (and so the directory) in
        # the temporary directory; the test's database is gone, so is their use
        shutil.rmtree(LocalWake(self.db_path).directory, ignore_errors=True)


# -- crash, multi-dispatcher and load tests -------------------------------------------


class SeededRandom(random.Random):
    """A test's randomness, repeatable: TEST_SEED=<n> replays a run; the seed is printed
    (pytest shows it with a failure) and kept in `.seed` for failure messages."""

    def __init__(self, label: str):
        self.seed_value = int(os.environ.get("TEST_SEED") or random.SystemRandom().getrandbits(32))
        super().__init__(self.seed_value)
        print(f"{label}: random seed {self.seed_value} (TEST_SEED={self.seed_value} repeats it)")


def group_connections(pgid: int, port: int) -> int:
    """Established TCP connections from a process group to 127.0.0.1:`port` (a worker
    holding a long poll has one for its fetcher besides its heartbeat's)."""
    return established_ports(pgid).count(port)


def pause(proc: Proc) -> None:
    """SIGSTOP to a whole group: its sockets stay open, nothing answers (a frozen host)."""
    os.killpg(proc.pid, signal.SIGSTOP)


def resume(proc: Proc) -> None:
    os.killpg(proc.pid, signal.SIGCONT)


def all_tasks(client: Client, page: int = 1000) -> list[dict]:
    """Every stored task (GET /tasks, page by page; no history)."""
    out: list[dict] = []
    while True:
        batch = client.call("GET", "/tasks", params={"limit": page, "offset": len(out)})
        out.extend(batch["tasks"])
        if len(batch["tasks"]) < page:
            return out


def fetch_tasks(url: str, task_ids: list[str], threads: int = 4) -> dict[str, dict]:
    """GET /task/<id> for many ids (with history), over a few connections."""

    def fetch(ids: list[str]) -> list[dict]:
        with Client(url) as client:
            return [client.task(t) for t in ids]

    slices = [task_ids[i::threads] for i in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        return {t["task_id"]: t for part in pool.map(fetch, slices) for t in part}


def cache_entries(directory: Path) -> list[Path]:
    """A worker's complete cache entries under `directory` (any depth), without the
    temporary files of a write in progress (`.tmp-*.json`)."""
    return [p for p in Path(directory).rglob("*.json") if not p.name.startswith(".tmp-")]


def wait_started(worker: Proc, task_id: str, timeout: float = 30) -> None:
    """Until `worker` logs that it started `task_id`. `in_progress` alone only says the
    claim was committed: a dispatcher killed before answering it leaves the worker
    without the task (it comes back when its lease ends, not through the worker)."""
    wait_for(
        lambda: f"task {task_id} started" in worker.log(400),
        timeout,
        lambda: f"{worker.name} never started {task_id}:\n{worker.log()}",
    )
