"""Connections that tie up a server, opened for real on 127.0.0.1, and the probes that
must still be answered while they are open (tests/integration/test_floods.py,
bench/floods.py).

Each attack is a context manager: it opens its connections on entry (and keeps the slow
ones trickling from a thread of its own) and closes them all on exit.
"""

from __future__ import annotations

import json
import resource
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

PROBE_TIMEOUT_S = 1.0  # what the issue asks: each probe answered within a second


def raise_open_files(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def _request(path: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"{extra}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


class Attack:
    """`count` connections of one kind against 127.0.0.1:`port`."""

    name = "attack"

    def __init__(self, port: int, count: int):
        self.port = port
        self.count = count
        self.socks: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Attack:
        raise_open_files(self.count + 512)
        for _ in range(self.count):
            sock = _connect(self.port)
            self.opened(sock)
            self.socks.append(sock)
        if type(self).trickle is not Attack.trickle:
            self._thread = threading.Thread(target=self._trickle_loop, daemon=True)
            self._thread.start()
        return self

    def opened(self, sock: socket.socket) -> None:
        """What the connection sends once open."""

    def trickle(self, sock: socket.socket) -> None:
        """What it sends every second afterwards (only the slow-header attack)."""

    def _trickle_loop(self) -> None:
        while not self._stop.wait(1.0):
            for sock in self.socks:
                try:
                    self.trickle(sock)
                except OSError:
                    pass  # cut off by the server: what it should do, in the end

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for sock in self.socks:
            sock.close()


class SlowHeaders(Attack):
    """A request head sent one byte a second (slowloris)."""

    name = "slow headers (1 byte/s)"
    HEAD = b"POST /submit-task HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 4000

    def __init__(self, port: int, count: int):
        super().__init__(port, count)
        self.sent: dict[int, int] = {}

    def opened(self, sock: socket.socket) -> None:
        sock.sendall(self.HEAD[:1])

    def trickle(self, sock: socket.socket) -> None:
        n = self.sent.get(sock.fileno(), 1)
        sock.sendall(self.HEAD[n : n + 1])
        self.sent[sock.fileno()] = n + 1


class Silent(Attack):
    """Connected, never a byte."""

    name = "silent connections"


class ShortBody(Attack):
    """A Content-Length of 1,000 and 10 bytes of body, then nothing."""

    name = "short bodies"

    def opened(self, sock: socket.socket) -> None:
        head = _request("/submit-task", b"")
        head = head.replace(b"Content-Length: 0", b"Content-Length: 1000")
        sock.sendall(head + b'{"type": "')


class Unterminated(Attack):
    """A chunked body whose last chunk never comes."""

    name = "unterminated chunked bodies"

    def opened(self, sock: socket.socket) -> None:
        sock.sendall(
            b"POST /submit-task HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'a\r\n{"type": "\r\n'
        )


class HeldPolls(Attack):
    """Workers holding `POST /get-task` on a queue with nothing in it."""

    name = "held long polls"

    def __init__(self, port: int, count: int, wait: float, queue: str = "idle"):
        super().__init__(port, count)
        self.wait = wait
        self.queue = queue
        self.started = 0.0

    def __enter__(self) -> HeldPolls:
        self.started = time.monotonic()
        return super().__enter__()

    def opened(self, sock: socket.socket) -> None:
        n = len(self.socks)
        body = json.dumps(
            {"worker_id": f"poller-{n}", "queues": [self.queue], "wait": self.wait}
        ).encode()
        sock.sendall(_request("/get-task", body))

    def wait_held(self, client, timeout: float) -> None:
        """Until the dispatcher has taken every poll's first claim (each registers its
        worker), so the polls are held rather than still arriving."""
        deadline = time.monotonic() + timeout
        names = {f"poller-{n}" for n in range(self.count)}
        while time.monotonic() < deadline:
            seen = {w["worker_id"] for w in client.workers()}
            if names <= seen:
                return
            time.sleep(0.05)  # polling interval, not synchronisation
        raise AssertionError(f"{len(names - seen)} polls not taken after {timeout} s")

    def answers(self, timeout: float) -> list[tuple[int, dict | None, str]]:
        """Each poll's answer: (status, body, error); status 0 when none came."""
        out = []
        deadline = time.monotonic() + timeout
        for sock in self.socks:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                out.append(read_response(sock))
            except OSError as exc:
                out.append((0, None, f"{type(exc).__name__}: {exc}"))
        return out


def read_response(sock: socket.socket) -> tuple[int, dict | None, str]:
    """One HTTP response off a raw socket: (status, JSON body, "")."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the body")
        rest += chunk
    return status, json.loads(rest[:length]) if length else None, ""


@dataclass
class Probes:
    """Worst time of each probe over the rounds run, and anything that went wrong."""

    worst: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def note(self, name: str, seconds: float) -> None:
        self.worst[name] = max(self.worst.get(name, 0.0), seconds)


@contextmanager
def _timed(probes: Probes, name: str):
    started = time.monotonic()
    try:
        yield
    except Exception as exc:
        probes.failures.append(f"{name}: {type(exc).__name__}: {exc}")
    finally:
        probes.note(name, time.monotonic() - started)


def probe(
    port: int,
    probes: Probes,
    queue: str = "work",
    worker_id: str = "probe-worker",
    timeout: float = PROBE_TIMEOUT_S,
):
    """One round, each call on a fresh connection with a read time-out of `timeout` (1 s):
    /health, a submission to `queue`, and a worker's claim of it and its result."""

    def call(method: str, path: str, body: dict | None = None) -> dict:
        with _connect(port) as sock:
            sock.settimeout(timeout)
            data = json.dumps(body).encode() if body is not None else b""
            if method == "GET":
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            else:
                sock.sendall(_request(path, data))
            status, answer, _ = read_response(sock)
            if status >= 300:
                raise AssertionError(f"{method} {path}: HTTP {status} {answer}")
            return answer or {}

    with _timed(probes, "GET /health"):
        call("GET", "/health")
    task_id = None
    with _timed(probes, "POST /submit-task"):
        task = {"type": "compute", "payload": {"operation": "double", "value": 21}}
        task_id = call("POST", "/submit-task", {**task, "queue": queue})["task_id"]
    claimed: list[dict] = []
    with _timed(probes, "worker claim (another queue)"):
        claimed = call(
            "POST", "/get-task", {"worker_id": worker_id, "queues": [queue], "max_tasks": 10}
        )["tasks"]
        if not any(t["task_id"] == task_id for t in claimed):
            raise AssertionError(f"the claim did not return {task_id}: {claimed}")
    with _timed(probes, "worker result"):
        results = [
            {
                "task_id": t["task_id"],
                "worker_id": worker_id,
                "lease_token": t["lease_token"],
                "status": "completed",
                "result": {"value": 42},
            }
            for t in claimed
        ]
        answers = call("POST", "/submit-results", {"results": results})["results"]
        if any(a.get("status") != "completed" for a in answers):
            raise AssertionError(f"results refused: {answers}")
