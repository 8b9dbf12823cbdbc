"""The dispatcher's HTTP API as Python calls; what workers and CLIs use.

A lean keep-alive client on the standard library's http.client: one connection per
Client (use one Client per thread), headers and body in one packet, TCP_NODELAY, and a
pooled connection checked for a server-side close before it is reused, so a request is
never sent twice. (requests costs ~150 ms to import and ~0.3 ms a call more; the
worker's start-up and every hop of a task's round trip pay for that.)

Errors come in two kinds: DispatcherUnreachable (no answer, or a 5xx: try again later)
and ApiError (the dispatcher refused the request: 4xx with its message).
"""

from __future__ import annotations

import http.client
import json
import select
import socket
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0


class DispatcherUnreachable(Exception):
    pass


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class Client:
    def __init__(self, base_url: str, token: str = ""):
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._conn: http.client.HTTPConnection | None = None

    # -- transport ------------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        conn = self._conn
        if conn is not None and conn.sock is not None and _closed_by_peer(conn.sock):
            conn.close()
            conn = None
        if conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = cls(self._host, self._port, timeout=CONNECT_TIMEOUT)
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conn = conn
        return conn

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict | None = None,
        read_timeout: float = READ_TIMEOUT,
    ) -> Any:
        url = self._prefix + path + (f"?{urlencode(params)}" if params else "")
        payload = None if body is None else json.dumps(body).encode()
        try:
            conn = self._connection()
            conn.sock.settimeout(read_timeout)
            conn.request(method, url, body=payload, headers=self._headers)
            response = conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise DispatcherUnreachable(
                f"{self.base_url}: {exc.__class__.__name__}: {exc}"
            ) from exc
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
            raise DispatcherUnreachable(f"{self.base_url}{path}: HTTP {status} {message}")
        if status >= 400:
            raise ApiError(status, data.get("error", response.reason))
        return data

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

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
        return self.call("POST", "/get-task", body, read_timeout=wait + READ_TIMEOUT)["tasks"]

    def submit_results(self, results: list[dict]) -> list[dict]:
        return self.call("POST", "/submit-results", {"results": results})["results"]

    def heartbeat(self, worker_id: str, instance_id: str, task_ids: list[str]) -> dict:
        body = {"worker_id": worker_id, "task_ids": task_ids}
        if instance_id:
            body["instance_id"] = instance_id
        return self.call("POST", "/heartbeat", body)

    def release(self, worker_id: str, tasks: list[tuple[str, str]]) -> int:
        items = [{"task_id": t, "lease_token": lease} for t, lease in tasks]
        return self.call("POST", "/release", {"worker_id": worker_id, "tasks": items})["released"]

    # -- clients ------------------------------------------------------------------

    def submit_task(self, task: dict) -> str:
        return self.call("POST", "/submit-task", task)["task_id"]

    def submit_tasks(self, tasks: list[dict]) -> list[str]:
        return self.call("POST", "/submit-tasks", {"tasks": tasks})["task_ids"]

    def task(self, task_id: str, wait: float = 0.0) -> dict:
        params = {"wait": f"{wait:g}"} if wait else None
        path = f"/task/{quote(task_id, safe='')}"
        return self.call("GET", path, params=params, read_timeout=wait + READ_TIMEOUT)

    def stats(self) -> dict:
        return self.call("GET", "/stats")

    def workers(self) -> list[dict]:
        return self.call("GET", "/workers")["workers"]


def _closed_by_peer(sock: socket.socket) -> bool:
    """An idle keep-alive socket that is readable has been closed by the server (or holds
    garbage): either way it must not carry the next request."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
