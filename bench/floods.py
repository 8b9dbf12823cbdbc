#!/usr/bin/env python3
"""How the dispatcher answers while connections tie it up (issue 14's attacks).

    python bench/floods.py [--project DIR] [--backend sqlite|postgresql|both] [--timeout S]

For each attack (100 slow-header connections, 200 silent ones, 40 short bodies, 40
unterminated chunked bodies, 500 held long polls) it starts a fresh dispatcher of the
project at DIR (default: this one) with its own settings, opens the connections, runs
--rounds probe rounds (3) (GET /health, a submission, a worker's claim on another queue and its
result, each on a new connection with a read time-out of --timeout, default 15 s) and
prints each probe's worst time, as a markdown table. For the held polls it also counts
the polls that did not end with their normal answer. Attack code: tests/integration/attacks.py.
PostgreSQL: a fresh schema on TEST_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from attacks import (  # noqa: E402
    HeldPolls,
    Probes,
    ShortBody,
    Silent,
    SlowHeaders,
    Unterminated,
    probe,
)

ATTACKS = [
    (SlowHeaders, 100),
    (Silent, 200),
    (ShortBody, 40),
    (Unterminated, 40),
    (HeldPolls, 500),
]
PROBES = ("GET /health", "POST /submit-task", "worker claim (another queue)", "worker result")
POLL_WAIT_S = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Dispatcher:
    def __init__(self, project: Path, database_url: str, log: Path):
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DISPATCHER", "DATABASE"))}
        env.update(
            DISPATCHER_PORT=str(self.port),
            DISPATCHER_HOST="127.0.0.1",
            DATABASE_URL=database_url,
            LOG_LEVEL="WARNING",
        )
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(
            ["./start_dispatcher.sh"],
            cwd=project,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"the dispatcher did not start: see {log}")

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.log.close()


def run_attack(
    project: Path, database_url: str, attack, count: int, timeout: float, rounds: int, tmp: Path
):
    dispatcher = Dispatcher(project, database_url, tmp / f"{attack.__name__}.log")
    probes = Probes()
    wrong = None
    try:
        kwargs = {"wait": POLL_WAIT_S} if attack is HeldPolls else {}
        with attack(dispatcher.port, count, **kwargs) as flood:
            if attack is HeldPolls:
                time.sleep(1.0)  # the polls' first claims are in: they are held now
            for _ in range(rounds):
                probe(dispatcher.port, probes, timeout=timeout)
            if attack is HeldPolls:
                answers = flood.answers(timeout=POLL_WAIT_S + timeout)
                wrong = sum(1 for a in answers if a[0] != 200 or a[1] != {"tasks": []})
    finally:
        dispatcher.stop()
    return probes, wrong


def cell(probes: Probes, name: str, timeout: float) -> str:
    """A probe's worst time, or that it got no answer."""
    failed = [f for f in probes.failures if f.startswith(name)]
    worst = probes.worst.get(name, 0.0)
    if failed and worst >= timeout - 0.01:
        return f"no answer in {timeout:g} s"
    return f"{worst * 1000:,.0f} ms" + (" (error)" if failed else "")


def database_urls(backend: str) -> list[tuple[str, str | None]]:
    out = []
    if backend in ("sqlite", "both"):
        out.append(("SQLite", None))
    if backend in ("postgresql", "both"):
        out.append(
            (
                "PostgreSQL",
                os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
            )
        )
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--project", type=Path, default=ROOT)
    p.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    p.add_argument("--timeout", type=float, default=15.0)
    p.add_argument("--rounds", type=int, default=3, help="probe rounds per attack")
    args = p.parse_args(argv)
    print(f"project {args.project.resolve()}, probe time-out {args.timeout:g} s\n")
    print("| database | attack | " + " | ".join(PROBES) + " | polls not answered normally |")
    print("|---|---|" + "---|" * (len(PROBES) + 1))
    for label, server in database_urls(args.backend):
        for attack, count in ATTACKS:
            with tempfile.TemporaryDirectory() as tmp:
                tmp = Path(tmp)
                schema = None
                if server is None:
                    url = f"sqlite:///{tmp / 'tasks.db'}"
                else:
                    import psycopg

                    schema = f"tq_floods_{uuid.uuid4().hex[:12]}"
                    with psycopg.connect(server, autocommit=True) as admin:
                        admin.execute(f"CREATE SCHEMA {schema}")
                    url = f"{server}?options=-csearch_path%3D{schema}"
                try:
                    probes, wrong = run_attack(
                        args.project, url, attack, count, args.timeout, args.rounds, tmp
                    )
                finally:
                    if schema:
                        with psycopg.connect(server, autocommit=True) as admin:
                            admin.execute(f"DROP SCHEMA {schema} CASCADE")
            cells = [cell(probes, name, args.timeout) for name in PROBES]
            polls = "" if wrong is None else f"{wrong} of {count}"
            row = [label, f"{count} {attack.name}", *cells, polls]
            print("| " + " | ".join(row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
