"""A real dispatcher inside the test process, and Workers run in threads against it.

`create_app(config)` is served over HTTP by werkzeug on a free port, in a thread, on an
SQLite file under tmp_path: real HTTP, real SQLite, no mocks. `stop()` and `start()`
again on the same port make an outage: the listening socket closes and every open
connection is shut, so a worker sees what a dead dispatcher looks like.

The worker's pool processes are forked from the test process; a fork copies every open
socket, and a listening socket kept open in a child would keep the port accepting after
`stop()` (and taken for `start()`). So every socket of these servers is closed in a child
right after the fork.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from common.client import Client
from common.config import Config
from common.procs import poll
from dispatcher.app import create_app
from tasks import TaskType, accept_object, registry
from worker.worker import Worker

# Short timings, so that a test takes a fraction of a second per step; a test overrides
# what it needs.
FAST = {
    "worker_poll_interval": 0.2,
    "worker_heartbeat_interval": 0.1,
    "worker_dead_after": 5.0,
    "worker_shutdown_grace": 5.0,
    "cache_retry_interval": 0.2,
    "retry_backoff_base": 0.05,
    "retry_backoff_cap": 0.2,
    "max_wait_seconds": 5.0,
}
GATE = "unit_wait_for_file"  # the gate task type (see gate_task)

_SOCKETS: dict[socket.socket, BaseWSGIServer] = {}  # listening and accepted, by server


def _close_sockets_in_child() -> None:
    for sock in list(_SOCKETS):
        sock.close()


os.register_at_fork(after_in_child=_close_sockets_in_child)


class _Handler(WSGIRequestHandler):
    """Remembers its connection (to shut it at stop()); logs nothing per request."""

    def setup(self) -> None:
        super().setup()
        _SOCKETS[self.connection] = self.server

    def finish(self) -> None:
        _SOCKETS.pop(self.connection, None)
        super().finish()

    def log_request(self, *args, **kwargs) -> None:
        pass


def wait_for(predicate: Callable[[], object], timeout: float, describe: Callable[[], str]):
    """Poll `predicate` until it returns something truthy; fail with the state seen."""
    return poll(predicate, timeout, describe, pytest.fail, every=0.01)


def free_port() -> int:
    """A port nothing listens on (bound, then closed at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_file(payload: dict) -> dict:
    """The gate task: runs until the file `path` exists (the test opens the gate)."""
    path = Path(payload["path"])
    while not path.exists():
        time.sleep(0.005)  # inside the task's process: the task's own work
    return {"found": str(path)}


class ServedDispatcher:
    """One test's dispatcher: `create_app` on tmp_path/tasks.db, served on 127.0.0.1."""

    def __init__(self, tmp_path: Path, setup: Callable | None = None, **settings):
        self.tmp = tmp_path
        self.config = Config(
            database_url=f"sqlite:///{tmp_path / 'tasks.db'}",
            worker_cache_dir=str(tmp_path / "cache"),
            **{**FAST, **settings},
        )
        self.app = create_app(self.config, background=False)  # no reaper: nothing expires
        if setup is not None:
            setup(self.app)  # hooks are added before the first request
        self.port = 0
        self.server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.start()
        self.client = Client(self.url)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Serve (again, on the same port after stop())."""
        server = make_server(
            "127.0.0.1", self.port, self.app, threaded=True, request_handler=_Handler
        )
        self.server, self.port = server, server.server_port
        _SOCKETS[server.socket] = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop answering: close the listening socket and shut every open connection."""
        server = self.server
        if server is None:
            return
        self.server = None
        server.shutdown()  # serve_forever has returned
        _SOCKETS.pop(server.socket, None)
        server.server_close()
        for sock, owner in list(_SOCKETS.items()):
            if owner is server:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        assert self._thread is not None
        self._thread.join(timeout=10)

    def worker_config(self, **settings) -> Config:
        """The dispatcher's settings, pointed at it, with a worker's own on top."""
        config = replace(self.config, dispatcher_url=self.url, **settings)
        config.check()
        return config

    def task(self, task_id: str) -> dict:
        return self.client.task(task_id)

    def submit(self, type_: str, payload: dict, **options) -> str:
        return self.client.submit_task({"type": type_, "payload": payload, **options})

    def close(self) -> None:
        self.stop()
        self.client.close()
        context = self.app.extensions["taskqueue"]
        context.wakeup.stop()
        context.storage.close()


def describe(worker: Worker) -> str:
    """A worker's state, for failure messages."""
    with worker.cv:
        return (
            f"worker {worker.worker_id}: running={sorted(worker.running)} "
            f"buffer={[c['task_id'] for c in worker.buffer]} inflight={worker.inflight} "
            f"stopping={worker.stopping.is_set()} owed={sorted(worker.owed)} "
            f"cached={len(worker.reporter.cache)}"
        )


class WorkerThread:
    """`worker.run(burst=...)` in a thread; `wait()` gives its exit status."""

    def __init__(self, worker: Worker, burst: bool = False):
        self.worker = worker
        self.status: int | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(burst,), daemon=True)
        self.thread.start()

    def _run(self, burst: bool) -> None:
        try:
            self.status = self.worker.run(burst=burst)
        except BaseException as exc:  # shown by wait()
            self.error = exc

    def wait(self, timeout: float = 30) -> int:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"run() still going: {describe(self.worker)}"
        assert self.error is None, f"run() raised {self.error!r}"
        assert self.status is not None
        return self.status

    def stop(self, timeout: float = 30) -> int:
        self.worker.stop("the test is done")
        return self.wait(timeout)


@pytest.fixture
def gate_task(monkeypatch):
    """Registers GATE for this test only (dispatcher and forked pool processes share the
    registry): a task that runs until the test creates its file."""
    monkeypatch.setitem(registry._types, GATE, TaskType(GATE, accept_object, wait_for_file))
    return GATE


@pytest.fixture
def served(tmp_path):
    """A factory: served(**settings) starts a dispatcher; all are closed at the end."""
    made: list[ServedDispatcher] = []

    def make(setup: Callable | None = None, **settings) -> ServedDispatcher:
        directory = tmp_path / f"d{len(made)}"
        directory.mkdir()
        dispatcher = ServedDispatcher(directory, setup, **settings)
        made.append(dispatcher)
        return dispatcher

    yield make
    for dispatcher in made:
        dispatcher.close()


@pytest.fixture
def workers():
    """A factory: workers(config, worker_id="w1", burst=False) runs a Worker in a
    thread; whatever is still running at the end is stopped, its pool with it."""
    started: list[WorkerThread] = []

    def start(config: Config, worker_id: str = "w1", burst: bool = False) -> WorkerThread:
        handle = WorkerThread(Worker(config, worker_id), burst=burst)
        started.append(handle)
        return handle

    yield start
    for handle in started:
        handle.worker.stop("test teardown")
        handle.thread.join(timeout=30)
        handle.worker.pool.stop()  # stopped already by a run that ended; harmless again
