"""The project's own scripts run as real processes, for the integration tests
(tests/integration/harness.py) and the benchmarks (bench/procs.py).

Each process runs in its own session, so its process group (a gunicorn master and its
workers, a worker and its pool) can be signalled as one; its output goes to a log file.
No test framework here: a wait that gives up calls the `fail` it is given (pytest.fail
in the tests, a BenchError in the benchmarks). Neither the dispatcher nor the worker
imports this module.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import fields
from pathlib import Path
from typing import NoReturn

from common.client import Client, DispatcherUnreachable
from common.config import PROJECT_ROOT, Config

CONFIG_KEYS = frozenset(f.name.upper() for f in fields(Config))

Fail = Callable[[str], NoReturn]


def clean_environ(drop: Iterable[str] = ()) -> dict[str, str]:
    """This process's environment without any of the queue's keys (nothing inherited from
    the shell; .env supplies their defaults) and without `drop`."""
    unwanted = CONFIG_KEYS.union(drop)
    return {k: v for k, v in os.environ.items() if k not in unwanted}


def poll(
    predicate: Callable[[], object],
    timeout: float,
    describe: Callable[[], str],
    fail: Fail,
    every: float = 0.05,
):
    """Call `predicate` every `every` seconds until it returns something truthy, and
    return that; after `timeout` seconds call `fail` with `describe()`, the last state
    seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            fail(f"gave up after {timeout:g} s: {describe()}")
        time.sleep(every)  # polling interval, not synchronisation


class Proc:
    """One started script, in its own session (its process group id is its pid)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path):
        self.name = name
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

    def log(self, tail: int = 40) -> str:
        """The last `tail` lines the process wrote."""
        self._log.flush()
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-tail:])

    def signal(self, sig: int) -> None:
        """`sig` to the script's own process only."""
        os.kill(self.pid, sig)

    def signal_group(self, sig: int) -> None:
        """`sig` to the whole process group, if any of it is left."""
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def kill9(self) -> None:
        """kill -9 of the whole process group, and wait for the script to go."""
        self.signal_group(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def close(self, deadline: float | None = None) -> None:
        """Let the script exit by itself until `deadline` (time.monotonic(); default: no
        wait), then SIGKILL its whole group (pool processes or gunicorn workers may
        outlive their parent) and close the log."""
        if deadline is not None:
            try:
                self.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        self.signal_group(signal.SIGKILL)
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()


def wait_healthy(
    proc: Proc,
    url: str,
    timeout: float,
    fail: Fail,
    statuses: tuple[str, ...] = ("ok",),
    every: float = 0.05,
    ca_file: str = "",
) -> None:
    """Until the dispatcher `proc` at `url` answers GET /health with one of `statuses`;
    `fail` at once, with its log, if it exits. `ca_file`: DISPATCHER_CA_FILE (https)."""

    def healthy() -> bool:
        if not proc.alive():
            fail(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log()}")
        try:
            with Client(url, ca_file=ca_file) as client:
                return client.call("GET", "/health").get("status") in statuses
        except DispatcherUnreachable:
            return False

    poll(healthy, timeout, lambda: f"{proc.name} never became healthy:\n{proc.log()}", fail, every)


# -- what /proc says of a process group ---------------------------------------------------


def group_pids(pgid: int) -> list[int]:
    """Every live process of a process group (a Proc's group id is its pid)."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            pids.append(int(entry.name))
    return pids


def rss_kib(pid: int) -> int:
    """Resident memory of one process (VmRSS), in KiB: 0 for a zombie, which has none;
    OSError once the process is gone."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def group_rss_kib(pgid: int) -> int:
    """Resident memory of a whole process group (VmRSS summed), in KiB."""
    total = 0
    for pid in group_pids(pgid):
        try:
            total += rss_kib(pid)
        except OSError:  # it ended after group_pids saw it
            continue
    return total


def established_ports(pgid: int) -> list[int]:
    """The remote port of each ESTABLISHED TCP connection (IPv4 or IPv6) that a process
    group holds, one entry a connection."""
    inodes = set()
    for pid in group_pids(pgid):
        try:
            for fd in os.scandir(f"/proc/{pid}/fd"):
                target = os.readlink(fd.path)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "01" and cols[9] in inodes:
                ports.append(int(cols[2].rsplit(":", 1)[1], 16))
    return ports
