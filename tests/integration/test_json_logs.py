"""LOG_FORMAT=json with real processes: the dispatcher (gunicorn's own lines included)
and a worker write only JSON objects on stderr, the task's lines carry its task_id, and
X-Request-ID is echoed and carried by the dispatcher's log line for that request."""

from __future__ import annotations

import http.client
import json
import subprocess

import pytest
from harness import wait_for

from common import logs
from common.config import PROJECT_ROOT

pytestmark = pytest.mark.integration

REQUIRED = ("ts", "level", "logger", "message")


def request(url: str, method: str, path: str, body=None, rid: str | None = None):
    """One request over a fresh connection: (status, X-Request-ID, JSON body)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    headers = {"Content-Type": "application/json"}
    if rid is not None:
        headers["X-Request-ID"] = rid
    try:
        conn.request(method, path, None if body is None else json.dumps(body), headers)
        response = conn.getresponse()
        return response.status, response.getheader("X-Request-ID"), json.loads(response.read())
    finally:
        conn.close()


def entries(proc) -> list[dict]:
    """Every complete line the process wrote, each parsed as JSON (fails on any other)."""
    text = proc.log_path.read_text(errors="replace")
    return parsed(proc.name, text[: text.rfind("\n") + 1])  # not a line being written


def parsed(name: str, text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            raise AssertionError(f"{name} wrote a line that is not JSON: {line!r}") from None
        assert isinstance(entry, dict), f"{name}: not an object: {line!r}"
        missing = [k for k in REQUIRED if k not in entry]
        assert not missing, f"{name}: {missing} missing in {line!r}"
        out.append(entry)
    return out


def test_json_logs_and_request_ids_end_to_end(make_cluster):
    c = make_cluster(LOG_FORMAT="json")
    dispatcher = c.start_dispatcher()
    worker = c.start_worker("w-json")
    c.wait_worker_alive(worker)

    rid = "test-submit.0001"
    task = {"type": "compute", "payload": {"operation": "double", "value": 21}}
    status, echoed, body = request(c.url, "POST", "/submit-task", task, rid)
    assert (status, echoed) == (201, rid), body
    task_id = body["task_id"]
    assert c.wait_status(task_id, "completed")["result"] is not None

    for bad in ("has space", "x" * 129, "a/b"):
        status, echoed, _ = request(c.url, "GET", "/health", rid=bad)
        assert status == 200 and echoed != bad and logs.valid_request_id(echoed), echoed
    _, fresh, _ = request(c.url, "GET", "/health")
    assert logs.valid_request_id(fresh)

    def lines_seen():
        d, w = entries(dispatcher), entries(worker)
        submitted = [e for e in d if e.get("request_id") == rid and e.get("task_id") == task_id]
        claimed = [e for e in d if e.get("task_id") == task_id and e.get("worker_id") == "w-json"]
        ran = [e for e in w if e.get("task_id") == task_id and e.get("worker_id") == "w-json"]
        return (d, w) if submitted and claimed and ran else None

    d, w = wait_for(
        lines_seen,
        30,
        lambda: f"log lines for task {task_id} / request {rid} missing:\n{c.logs()}",
    )
    # the claim came from the worker's client, which names its request
    claim = next(e for e in d if e.get("task_id") == task_id and "claimed" in e["message"])
    assert logs.valid_request_id(claim.get("request_id")), claim
    assert claim["attempt"] == 1
    # gunicorn's own lines (boot, listening) are JSON too
    assert any(e["logger"].startswith("gunicorn") for e in d), d
    # every line of the worker names it
    assert all(e.get("worker_id") == "w-json" for e in w), w
    # the reaper and start-up lines, outside any request, carry no request_id
    assert any("request_id" not in e for e in d)

    # a CLI too: add_task.py --wait says what it does as JSON lines (no progress bar)
    done = subprocess.run(
        ["python3", str(PROJECT_ROOT / "add_task.py"), "--wait", "1", "1000"],
        cwd=c.tmp,
        env={**c.user_env(), "LOG_FORMAT": "json"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{done.returncode}\n{done.stdout}\n{done.stderr}"
    said = parsed("add_task.py", done.stderr)
    assert any(e["logger"] == "cli" and "submitted 1 task" in e["message"] for e in said), said
