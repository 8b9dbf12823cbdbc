"""The dispatcher's HTTP API as Python calls; what workers and CLIs use.

A lean keep-alive client on the standard library's http.client: one connection per
Client (use one Client per thread), headers and body in one packet, TCP_NODELAY, and a
pooled connection checked for a server-side close before it is reused, so a request is
never sent twice. (requests costs ~150 ms to import and ~0.3 ms a call more; the
worker's start-up and every hop of a task's round trip pay for that.)

Errors come in two kinds: DispatcherUnreachable (no answer, or a 5xx: try again later)
and ApiError (the dispatcher refused the request: 4xx with its message).

Several dispatchers: DISPATCHER_URL may be a comma-separated list of base URLs (they
share one database). A `Dispatchers` holds the position in the list, chosen at random
so that workers spread over it; Clients given the same one (a worker's threads share
theirs) talk to the same dispatcher and move together. A request that gets no answer there
goes to the next URL, once per URL; DispatcherUnreachable only when none answers. The
process moves on with it and logs one line saying so. What may be sent again:

- a request that never reached the dispatcher (the connection was refused, reset or
  timed out before the whole request was written) goes to the next URL, whatever it is;
- a request that was sent but whose reply was lost goes to the next URL only when
  repeating it is harmless: reads, get-task, heartbeat, release, submit-result(s), and
  submit-task(s) when every task has an idempotency_key. Other submissions raise
  DispatcherUnreachable, as with one URL: the task may or may not have been stored.
- an HTTP answer, even a 5xx, is the dispatcher's word: it goes back to the caller.
With one URL nothing is ever sent twice, exactly as before lists existed.

A worker gives its Clients one shared CircuitBreaker (common/breaker.py): each call is
one success (any answer below 500) or one failure (DispatcherUnreachable), whatever URLs
it tried; while the breaker is open a call raises DispatcherUnreachable at once, without
a connection attempt. The CLIs use no breaker.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote, urlencode

from common.breaker import BreakerOpen, CircuitBreaker
from common.logs import new_request_id
from common.tls import tls_context
from common.urls import Target, split_urls

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0

# Requests that may be sent again after their reply was lost (see the module docstring).
REPEATABLE = frozenset({"/get-task", "/heartbeat", "/release", "/submit-result", "/submit-results"})

log = logging.getLogger("client")
log.addHandler(logging.NullHandler())  # silent in the CLIs; the worker's logging shows it


class DispatcherUnreachable(Exception):
    """No answer (or a 5xx). `failures` lists (url, why) for each dispatcher tried."""

    def __init__(self, message: str, failures: Sequence[tuple[str, str]] = ()):
        super().__init__(message)
        self.failures = list(failures)


class BreakerRefused(DispatcherUnreachable):
    """No call was made: the circuit breaker is open after failed calls (it says nothing
    the failures before it did not)."""


class ApiError(Exception):
    """`retry_after`: seconds the dispatcher asked to wait (a 429's Retry-After), or None."""

    def __init__(self, status: int, message: str, retry_after: float | None = None):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after


class Dispatchers:
    """A list of dispatchers and the one in use, shared by the Clients of a process.

    `ca_file` (DISPATCHER_CA_FILE): https URLs are verified against this PEM bundle,
    else against the system's store; verification cannot be turned off."""

    def __init__(self, urls: str | Sequence[str], start: int | None = None, ca_file: str = ""):
        text = urls if isinstance(urls, str) else ",".join(urls)
        self.targets = [Target.parse(u) for u in split_urls(text)]
        n = len(self.targets)
        self.current = random.randrange(n) if start is None else start % n
        self._lock = threading.Lock()
        self.ca_file = ca_file
        self._tls: ssl.SSLContext | None = None

    def tls_context(self) -> ssl.SSLContext:
        """One context for the process's Clients (made at the first https connection)."""
        if self._tls is None:
            self._tls = tls_context(self.ca_file)
        return self._tls

    @property
    def urls(self) -> list[str]:
        return [t.url for t in self.targets]

    def order(self) -> list[int]:
        """Indices to try: the one in use, then the others in list order."""
        first, n = self.current, len(self.targets)
        return [(first + step) % n for step in range(n)]

    def moved(self, was: int, now: int, failures: list[tuple[str, str]]) -> None:
        """A request that started at `was` got its answer from `now`; the first Client
        to see it moves everybody, with one log line."""
        with self._lock:
            if self.current != was:  # another thread already moved
                return
            self.current = now
        if len(failures) == 1:
            what, why = f"dispatcher {failures[0][0]}", failures[0][1]
        else:
            what = "dispatchers " + ", ".join(url for url, _ in failures)
            why = "; ".join(f"{url}: {reason}" for url, reason in failures)
        log.warning("%s did not answer (%s); using %s now", what, why, self.targets[now].url)


class Client:
    def __init__(
        self,
        base_url: str | Dispatchers,
        token: str = "",
        breaker: CircuitBreaker | None = None,
        retry_429_for: float = 0.0,
        pause: Callable[[float], bool] | None = None,
        on_429: Callable[[ApiError, float], None] | None = None,
        read_timeout: float = READ_TIMEOUT,
        ca_file: str = "",
    ):
        """`base_url`: one URL or a comma-separated list (DISPATCHER_URL), or a
        Dispatchers shared with other Clients (a worker's threads share one, so they
        move together; tests use one to choose the start). `breaker`: a circuit breaker
        shared by the process's Clients (the worker's); while it is open, calls raise
        DispatcherUnreachable at once, without touching the network.

        `retry_429_for`: for this many seconds from a call's first 429 (a full queue,
        MAX_PENDING_TASKS, or a dispatcher holding all the polls it may), the call is
        sent again after the reply's Retry-After; then the 429 is raised as ApiError.
        `pause(seconds)` waits (True: stop waiting and raise now; default time.sleep),
        `on_429(exc, seconds)` is told before each wait.

        `read_timeout`: seconds to wait for an answer (a held request: its wait more).
        `ca_file`: DISPATCHER_CA_FILE, for a `base_url` that is not a Dispatchers.
        `token`: API_TOKEN; of a comma-separated list (a rotation), the first is sent."""
        self.breaker = breaker
        self.read_timeout = read_timeout
        self.retry_429_for = retry_429_for
        self._pause = pause
        self._on_429 = on_429
        self._aborted = False  # abort() ended the request in flight
        if isinstance(base_url, Dispatchers):
            self.dispatchers = base_url
        else:
            try:
                self.dispatchers = Dispatchers(base_url, ca_file=ca_file)
            except ValueError as exc:
                raise ValueError(f"not a list of http(s) URLs: {base_url!r}: {exc}") from None
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        token = token.split(",")[0].strip()  # API_TOKEN may list several: send the first
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._conn: http.client.HTTPConnection | None = None
        self._conn_index = -1  # which target self._conn talks to
        self.last_request_id = ""  # the X-Request-ID of the latest call

    @property
    def base_url(self) -> str:
        """The dispatcher in use (the first to try for the next request)."""
        return self.dispatchers.targets[self.dispatchers.current].url

    @property
    def urls(self) -> list[str]:
        return self.dispatchers.urls

    # -- transport ------------------------------------------------------------------

    def _connection(self, index: int) -> http.client.HTTPConnection:
        conn = self._conn
        if conn is not None and self._conn_index != index:
            self.close()
            conn = None
        if conn is not None and conn.sock is not None and _closed_by_peer(conn.sock):
            conn.close()
            conn = None
        if conn is None:
            target = self.dispatchers.targets[index]
            if target.https:  # verified: see tls_context
                conn = http.client.HTTPSConnection(
                    target.host,
                    target.port,
                    timeout=CONNECT_TIMEOUT,
                    context=self.dispatchers.tls_context(),
                )
            else:
                conn = http.client.HTTPConnection(target.host, target.port, timeout=CONNECT_TIMEOUT)
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conn, self._conn_index = conn, index
        return conn

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict | None = None,
        read_timeout: float | None = None,
        repeatable: bool | None = None,
    ) -> Any:
        """One request, to the dispatcher in use or, when it does not answer, the next.
        `repeatable`: may it be sent again after its reply was lost (default: reads and
        the REPEATABLE paths)? With a breaker, one call (whatever URLs it tried) is one
        success (any answer below 500) or one failure (DispatcherUnreachable). A 429
        is tried again for up to `retry_429_for` seconds (see __init__)."""
        if read_timeout is None:
            read_timeout = self.read_timeout
        if self.retry_429_for <= 0:
            return self._call_once(method, path, body, params, read_timeout, repeatable)
        deadline = None
        while True:
            try:
                return self._call_once(method, path, body, params, read_timeout, repeatable)
            except ApiError as exc:
                if exc.status != 429:
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self.retry_429_for
                left = deadline - now
                if left <= 0:
                    raise
                # nothing of a 429 was stored: sending it again is always safe
                delay = min(left, (exc.retry_after or 1.0) * random.uniform(1.0, 1.25))
                if self._on_429 is not None:
                    self._on_429(exc, delay)
                if self._pause is None:
                    time.sleep(delay)
                elif self._pause(delay):
                    raise

    def _call_once(
        self,
        method: str,
        path: str,
        body: Any,
        params: dict | None,
        read_timeout: float,
        repeatable: bool | None,
    ) -> Any:
        breaker = self.breaker
        if breaker is None:
            return self._send(method, path, body, params, read_timeout, repeatable)
        try:
            breaker.allow()
        except BreakerOpen as exc:
            raise BreakerRefused(str(exc)) from None
        self._aborted = False
        try:
            data = self._send(method, path, body, params, read_timeout, repeatable)
        except DispatcherUnreachable as exc:
            if self._aborted:  # ended by abort(): says nothing about the dispatcher
                breaker.release()
            else:
                breaker.failure(exc)
            raise
        except ApiError:
            breaker.success()  # a 4xx (429 too) is the dispatcher answering
            raise
        except BaseException:
            breaker.release()
            raise
        breaker.success()
        return data

    def _send(
        self,
        method: str,
        path: str,
        body: Any,
        params: dict | None,
        read_timeout: float,
        repeatable: bool | None,
    ) -> Any:
        if repeatable is None:
            repeatable = method in ("GET", "HEAD") or path in REPEATABLE
        query = f"?{urlencode(params)}" if params else ""
        payload = None if body is None else json.dumps(body).encode()
        # one id per call (kept when the call goes to the next dispatcher): the
        # dispatcher's log lines for it carry it, and it echoes it back
        self.last_request_id = new_request_id()
        headers = {**self._headers, "X-Request-ID": self.last_request_id}
        order = self.dispatchers.order()
        several = len(order) > 1
        failures: list[tuple[str, str]] = []
        for index in order:
            target = self.dispatchers.targets[index]
            try:  # until the whole request is written, the dispatcher has not seen it
                conn = self._connection(index)
                conn.sock.settimeout(read_timeout)
                conn.request(method, target.prefix + path + query, payload, headers)
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                failures.append((target.url, _why(exc)))
                continue
            try:
                response = conn.getresponse()
                raw = response.read()
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                failures.append((target.url, _why(exc)))
                if several and repeatable:
                    continue
                raise _unreachable(failures) from exc
            break
        else:
            raise _unreachable(failures)
        if index != order[0]:
            self.dispatchers.moved(order[0], index, failures)
        if response.will_close:
            self.close()
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        status = response.status
        if status >= 500 or not isinstance(data, dict):
            message = (
                data.get("error") if isinstance(data, dict) else raw[:200].decode(errors="replace")
            )
            raise DispatcherUnreachable(f"{target.url}{path}: HTTP {status} {message}")
        if status >= 400:
            retry_after = _seconds(response.getheader("Retry-After"))
            raise ApiError(status, data.get("error", response.reason), retry_after)
        return data

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
            self._conn_index = -1

    def abort(self) -> None:
        """From another thread: end the request this Client is waiting on (a held
        claim), which then fails as DispatcherUnreachable."""
        conn = self._conn
        sock = conn.sock if conn is not None else None
        if sock is not None:
            self._aborted = True
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- workers ------------------------------------------------------------------

    def get_task(
        self,
        worker_id: str,
        instance_id: str,
        queues: tuple[str, ...],
        wait: float,
        max_tasks: int,
    ) -> list[dict]:
        body = {
            "worker_id": worker_id,
            "queues": list(queues),
            "wait": wait,
            "max_tasks": max_tasks,
        }
        if instance_id:
            body["instance_id"] = instance_id
        return self.call("POST", "/get-task", body, read_timeout=wait + self.read_timeout)["tasks"]

    def submit_results(self, results: list[dict]) -> list[dict]:
        return self.call("POST", "/submit-results", {"results": results})["results"]

    def submit_results_and_claim(self, results: list[dict], claim: dict) -> dict:
        """Results and the worker's next claim (a /get-task body) in one request; the
        answer: `results`, and `tasks` (the claimed ones) or `claim_error` (refused).
        A dispatcher older than claims sent with results answers neither."""
        body = {"results": results, "claim": claim}
        wait = claim.get("wait") or 0.0
        return self.call("POST", "/submit-results", body, read_timeout=wait + self.read_timeout)

    def heartbeat(
        self,
        worker_id: str,
        instance_id: str,
        task_ids: list[str],
        state: str | None = None,
        concurrency: int | None = None,
        progress: dict[str, dict] | None = None,
    ) -> dict:
        """`state`: "stopping" (claims nothing more) or "stopped" (gone, not dead);
        `concurrency`: the tasks it runs at once (shown by GET /workers); `progress`:
        {task_id: {"fraction", "message"}} its tasks reported since the last heartbeat."""
        body: dict[str, Any] = {"worker_id": worker_id, "task_ids": task_ids}
        if instance_id:
            body["instance_id"] = instance_id
        if state:
            body["state"] = state
        if concurrency:
            body["concurrency"] = concurrency
        if progress:
            body["progress"] = progress
        return self.call("POST", "/heartbeat", body)

    def release(self, worker_id: str, tasks: list[tuple[str, str]]) -> int:
        items = [{"task_id": t, "lease_token": lease} for t, lease in tasks]
        return self.call("POST", "/release", {"worker_id": worker_id, "tasks": items})["released"]

    # -- clients ------------------------------------------------------------------

    def submit_task(self, task: dict) -> str:
        keyed = bool(task.get("idempotency_key"))
        return self.call("POST", "/submit-task", task, repeatable=keyed)["task_id"]

    def submit_tasks(self, tasks: list[dict]) -> list[str]:
        keyed = all(t.get("idempotency_key") for t in tasks)
        return self.call("POST", "/submit-tasks", {"tasks": tasks}, repeatable=keyed)["task_ids"]

    def task(self, task_id: str, wait: float = 0.0) -> dict:
        params = {"wait": f"{wait:g}"} if wait else None
        path = f"/task/{quote(task_id, safe='')}"
        return self.call("GET", path, params=params, read_timeout=wait + self.read_timeout)

    def wait_tasks(self, task_ids: list[str], wait: float = 0.0) -> tuple[list[dict], list[str]]:
        """The finished tasks among `task_ids` (held up to `wait` seconds until one is),
        and the ids of no stored task."""
        body = {"task_ids": task_ids, "wait": wait}
        answer = self.call(
            "POST", "/wait-tasks", body, read_timeout=wait + self.read_timeout, repeatable=True
        )
        return answer["tasks"], answer["missing"]

    def tasks(
        self, status: str | None = None, type_: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[dict]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            params["status"] = status
        if type_:
            params["type"] = type_
        return self.call("GET", "/tasks", params=params)["tasks"]

    def cancel(self, task_id: str) -> str:
        return self.call("POST", f"/task/{quote(task_id, safe='')}/cancel")["status"]

    def retry(self, task_id: str) -> str:
        return self.call("POST", f"/task/{quote(task_id, safe='')}/retry")["status"]

    def stats(self) -> dict:
        return self.call("GET", "/stats")

    def workers(self) -> list[dict]:
        return self.call("GET", "/workers")["workers"]

    def task_types(self) -> list[dict]:
        return self.call("GET", "/task-types")["task_types"]

    # -- periodic tasks (docs/SCHEDULING.md) --------------------------------------------

    def schedules(self) -> list[dict]:
        return self.call("GET", "/schedules")["schedules"]

    def schedule(self, name: str) -> dict:
        return self.call("GET", f"/schedules/{quote(name, safe='')}")

    def create_schedule(self, body: dict) -> dict:
        return self.call("POST", "/schedules", body)

    def update_schedule(self, name: str, body: dict) -> dict:
        return self.call("PUT", f"/schedules/{quote(name, safe='')}", body, repeatable=True)

    def delete_schedule(self, name: str) -> None:
        self.call("DELETE", f"/schedules/{quote(name, safe='')}")

    # -- queue controls (docs/SCHEDULING.md) ------------------------------------------

    def queues(self) -> list[dict]:
        return self.call("GET", "/queues")["queues"]

    def set_queue(self, name: str, changes: dict) -> dict:
        # a PUT sets what it names: sending it again after a lost reply is harmless
        path = f"/queues/{quote(name, safe='')}"
        return self.call("PUT", path, changes, repeatable=True)


def _seconds(header: str | None) -> float | None:
    """A Retry-After header in seconds (the HTTP-date form is not used by the dispatcher)."""
    try:
        return max(0.0, float(header)) if header else None
    except ValueError:
        return None


def _why(exc: BaseException) -> str:
    return f"{exc.__class__.__name__}: {exc}"


def _unreachable(failures: list[tuple[str, str]]) -> DispatcherUnreachable:
    """`url: why`, or `url: why; url: why` when several were tried."""
    return DispatcherUnreachable("; ".join(f"{u}: {w}" for u, w in failures), failures)


def _closed_by_peer(sock: socket.socket) -> bool:
    """An idle keep-alive socket that is readable has been closed by the server (or holds
    garbage): either way it must not carry the next request."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
