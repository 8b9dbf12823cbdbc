"""LOG_FORMAT=json: the formatter, the context filter, request-id validation, and the
X-Request-ID the client sends (to a real HTTP server in a thread)."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from common import logs
from common.client import Client


@pytest.fixture(autouse=True)
def restore_log_state():
    fields, source, fmt = dict(logs._fields), list(logs._request_id_source), list(logs._format)
    yield
    logs._fields.clear()
    logs._fields.update(fields)
    logs._request_id_source[:] = source
    logs._format[:] = fmt


def record(message="hello %s", args=("world",), level=logging.INFO, **extra):
    rec = logging.LogRecord("dispatcher", level, __file__, 1, message, args, None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_a_json_line_has_the_required_keys_and_the_known_fields():
    line = logs.JsonFormatter().format(record(task_id="t1", worker_id="w1", attempt=2))
    entry = json.loads(line)
    assert "\n" not in line
    assert entry["level"] == "INFO"
    assert entry["logger"] == "dispatcher"
    assert entry["message"] == "hello world"
    assert entry["ts"].endswith("Z") and "T" in entry["ts"]
    assert entry["task_id"] == "t1" and entry["worker_id"] == "w1" and entry["attempt"] == 2
    assert "queue" not in entry and "request_id" not in entry  # unknown: left out


def test_a_traceback_stays_inside_the_one_json_line():
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        import sys

        rec = record("failed", ())
        rec.exc_info = sys.exc_info()
    line = logs.JsonFormatter().format(rec)
    assert "\n" not in line
    entry = json.loads(line)
    assert "ValueError: boom" in entry["exception"]


def test_the_filter_adds_process_fields_and_the_request_id_without_overriding():
    logs.set_fields(worker_id="w-process")
    logs.set_request_id_source(lambda: "rid-1")
    f = logs.ContextFilter()
    plain = record()
    assert f.filter(plain)
    assert plain.worker_id == "w-process" and plain.request_id == "rid-1"
    own = record(worker_id="w-own", request_id="rid-own")
    f.filter(own)
    assert own.worker_id == "w-own" and own.request_id == "rid-own"


def test_setup_logging_switches_the_root_handler_between_formats():
    root = logging.getLogger()
    level = root.level
    try:
        logs.setup_logging("INFO", "json")
        [ours] = [h for h in root.handlers if getattr(h, "_taskqueue", False)]
        assert isinstance(ours.formatter, logs.JsonFormatter)
        assert logs.json_mode()
        logs.setup_logging("INFO", "text")
        assert not isinstance(ours.formatter, logs.JsonFormatter)
        assert not any(isinstance(f, logs.ContextFilter) for f in ours.filters)
    finally:
        root.setLevel(level)


@pytest.mark.parametrize("value", ["a", "abc-DEF_1.2", "x" * 128, "0" * 32])
def test_valid_request_ids(value):
    assert logs.valid_request_id(value)


@pytest.mark.parametrize("value", [None, "", "x" * 129, "has space", "a/b", "é", "a\tb"])
def test_invalid_request_ids(value):
    assert not logs.valid_request_id(value)


def test_a_new_request_id_is_valid_and_fresh():
    a, b = logs.new_request_id(), logs.new_request_id()
    assert a != b and logs.valid_request_id(a) and len(a) == 32


def test_the_client_sends_a_fresh_x_request_id_on_every_call():
    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            seen.append(self.headers.get("X-Request-ID"))
            body = b'{"tasks": {}}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with Client(f"http://127.0.0.1:{server.server_port}") as client:
            client.stats()
            first = client.last_request_id
            client.stats()
    finally:
        server.shutdown()
        server.server_close()
    assert len(seen) == 2 and seen[0] != seen[1]
    assert all(logs.valid_request_id(s) for s in seen)
    assert seen == [first, client.last_request_id]
