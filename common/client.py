"""The dispatcher's HTTP API as Python calls; what workers and CLIs use.

One Client per thread (a requests.Session keeps its connection alive). Errors come in
two kinds: DispatcherUnreachable (no answer, or a 5xx: try again later) and ApiError
(the dispatcher refused the request: 4xx with its message).
"""

from __future__ import annotations

from typing import Any

import requests

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
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict | None = None,
        read_timeout: float = READ_TIMEOUT,
    ) -> Any:
        try:
            r = self.session.request(
                method,
                self.base_url + path,
                json=body,
                params=params,
                timeout=(CONNECT_TIMEOUT, read_timeout),
            )
        except requests.RequestException as exc:
            raise DispatcherUnreachable(f"{self.base_url}: {exc.__class__.__name__}") from exc
        try:
            data = r.json()
        except ValueError:
            data = None
        if r.status_code >= 500 or data is None:
            message = data.get("error") if isinstance(data, dict) else r.text[:200]
            raise DispatcherUnreachable(f"{self.base_url}{path}: HTTP {r.status_code} {message}")
        if r.status_code >= 400:
            raise ApiError(r.status_code, data.get("error", r.reason))
        return data

    def close(self) -> None:
        self.session.close()

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
        return self.call("GET", f"/task/{task_id}", params=params, read_timeout=wait + READ_TIMEOUT)

    def stats(self) -> dict:
        return self.call("GET", "/stats")

    def workers(self) -> list[dict]:
        return self.call("GET", "/workers")["workers"]
