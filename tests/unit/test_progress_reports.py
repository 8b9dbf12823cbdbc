"""Task progress on the worker's side (worker/progress.py): the board of the latest
reports, a pool process's outbox, the pool's channel (real pool processes), and a real
Worker carrying a report to a dispatcher served in this process (served_dispatcher.py).
Every wait is a poll with a deadline that shows the state seen."""

from __future__ import annotations

import pickle
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from served_dispatcher import describe, wait_for

from tasks import TaskType, accept_object, registry
from tasks.context import TaskContext, current
from worker.pool import TaskPool, outcomes
from worker.progress import Board, Outbox

T = 1_000.0  # a monotonic time for the fake clocks


# -- the board -----------------------------------------------------------------------


def test_a_heartbeat_takes_each_changed_report_once():
    changes = []
    board = Board(on_change=lambda: changes.append(1))
    assert board.take(["a"], since=0) is None and not board.waiting
    board.put("a", 0.25, "first")
    board.put("a", 0.5, "second")  # the newest wins
    board.put("b", 1, "")
    assert board.waiting and len(changes) == 3
    assert board.take(["a", "b"], since=0) == {
        "a": {"fraction": 0.5, "message": "second"},
        "b": {"fraction": 1.0, "message": ""},
    }
    assert not board.waiting
    assert board.take(["a", "b"], since=0) is None  # nothing changed since


def test_a_report_not_delivered_goes_with_the_next_heartbeat():
    board = Board()
    board.put("a", 0.5, "halfway")
    taken = board.take(["a"], since=0)
    board.not_sent(taken)
    assert board.take(["a"], since=0) == taken


def test_reports_of_tasks_no_longer_held_are_forgotten_unless_newer_than_the_list():
    board = Board()
    board.put("done", 0.5, "")
    board.put("started", 0.1, "")
    listed_at = float("-inf")  # the list was read before either report came
    assert board.take([], since=listed_at) is None  # "started" may just have started
    assert board.take(["started"], since=listed_at) == {"started": {"fraction": 0.1, "message": ""}}
    assert board.take([], since=float("inf")) is None
    assert board._latest == {}  # both forgotten now


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan"), True, "0.5", None])
def test_a_report_the_dispatcher_would_refuse_is_dropped(fraction):
    board = Board()
    board.put("a", fraction, "x")
    assert not board.waiting


def test_a_long_message_is_cut_to_what_the_dispatcher_takes():
    board = Board()
    board.put("a", 0.5, "x" * 500)
    assert board.take(["a"], since=0)["a"]["message"] == "x" * 200


# -- a pool process's outbox -----------------------------------------------------------


class Clock:
    def __init__(self, now: float = T):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def pair():
    receiver, sender = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.settimeout(10)
    yield receiver, sender
    receiver.close()
    sender.close()


def received(receiver: socket.socket) -> tuple:
    task_id, fraction, message, _ = pickle.loads(receiver.recv(65536))
    return task_id, fraction, message


def test_reports_made_sooner_than_the_interval_wait_and_the_newest_is_sent(pair):
    receiver, sender = pair
    clock = Clock()
    outbox = Outbox(sender, clock)
    outbox.report("t", 0.1, "first")  # sent at once
    assert received(receiver) == ("t", 0.1, "first")
    outbox.report("t", 0.2, "held")
    outbox.report("t", 0.3, "newest")
    receiver.setblocking(False)
    with pytest.raises(BlockingIOError):  # nothing more before the interval is over
        receiver.recv(65536)
    receiver.settimeout(10)
    clock.now = T + 1  # the helper thread sends the newest when it looks again
    assert received(receiver) == ("t", 0.3, "newest")


def test_a_report_to_a_full_socket_is_sent_once_there_is_room(pair):
    receiver, sender = pair
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    filler = 0
    while True:  # the worker reads nothing: its socket fills up
        try:
            sender.send(b"x" * 512, socket.MSG_DONTWAIT)
            filler += 1
        except BlockingIOError:
            break
    clock = Clock()
    outbox = Outbox(sender, clock)
    outbox.report("t", 0.5, "kept")  # does not wait, is not lost
    for _ in range(filler):
        receiver.recv(65536)
    clock.now = T + 1
    assert received(receiver) == ("t", 0.5, "kept")


# -- the pool's channel, with real pool processes ----------------------------------------

REPORTER = "unit_reports_progress"


def reports_progress(payload: dict[str, Any]) -> dict[str, Any]:
    """A low-level run(payload) that reaches its TaskContext through current()."""
    context = current()
    assert context is not None
    context.progress(payload["fraction"], payload["message"])
    return {"task_id": context.task_id, "attempt": context.attempt, "queue": context.queue}


@pytest.fixture
def reporter_task(monkeypatch):
    """REPORTER registered for this test only (forked pool processes share the registry)."""
    monkeypatch.setitem(
        registry._types, REPORTER, TaskType(REPORTER, accept_object, reports_progress)
    )
    return REPORTER


def test_a_task_reaches_its_context_and_its_progress_reaches_the_worker(reporter_task):
    reports: list[tuple] = []
    seen = threading.Event()

    def on_progress(task_id, fraction, message, at):
        reports.append((task_id, fraction, message))
        seen.set()

    pool = TaskPool(1, 0, (), on_progress=on_progress)
    try:
        payload = {"fraction": 0.5, "message": "halfway"}
        future = pool.start([("t1", 2, "fast", reporter_task, payload)], timeout=30)
        assert outcomes(future, 30) == [
            {"status": "completed", "result": {"task_id": "t1", "attempt": 2, "queue": "fast"}}
        ]
        wait_for(seen.is_set, 10, lambda: f"no report; reports: {reports}")
        assert reports == [("t1", 0.5, "halfway")]
        # a renewed pool (pebble gave up on the old one) reports on the same channel
        pool._renew()
        seen.clear()
        future = pool.start([("t2", 1, "default", reporter_task, payload)], timeout=30)
        assert outcomes(future, 30)[0]["status"] == "completed"
        wait_for(seen.is_set, 10, lambda: f"no report after renewal; reports: {reports}")
        assert reports[-1] == ("t2", 0.5, "halfway")
    finally:
        pool.stop()
    assert current() is None  # in this process, no task runs


def test_a_task_that_reports_nothing_sends_nothing(reporter_task):
    reports: list[tuple] = []
    pool = TaskPool(1, 0, (), on_progress=lambda *report: reports.append(report))
    try:
        quick = [("t", 1, "default", "compute", {"operation": "double", "value": 1})] * 50
        assert [o["status"] for o in outcomes(pool.start(quick, 30), 30)] == ["completed"] * 50
        marker = [("m", 1, "default", reporter_task, {"fraction": 1, "message": "last"})]
        assert outcomes(pool.start(marker, 30), 30)[0]["status"] == "completed"
        wait_for(lambda: reports, 10, lambda: "the marker's report never came")
    finally:
        pool.stop()
    assert [r[0] for r in reports] == ["m"]  # the 50 quiet tasks sent nothing before it


def test_called_directly_a_context_only_records_its_progress():
    context = TaskContext()
    context.progress(0.5, "halfway")
    assert context.last_progress["message"] == "halfway"
    with pytest.raises(ValueError):
        context.progress(2)


# -- a real worker, a served dispatcher --------------------------------------------------

GATE = "unit_progress_then_wait"


def progress_then_wait(payload: dict[str, Any]) -> dict[str, Any]:
    context = current()
    assert context is not None
    context.progress(payload["fraction"], payload["message"])
    gate = Path(payload["path"])
    while not gate.exists():
        time.sleep(0.005)  # inside the task's process: the task's own work
    return {"queue": context.queue}


@pytest.fixture
def progress_gate(monkeypatch):
    monkeypatch.setitem(registry._types, GATE, TaskType(GATE, accept_object, progress_then_wait))
    return GATE


def test_progress_goes_sooner_than_the_heartbeat_interval_and_stays(
    served, workers, progress_gate, tmp_path
):
    """WORKER_HEARTBEAT_INTERVAL is 60 s: the report arrives because a waiting report
    brings the next heartbeat forward to a second after the last."""
    dispatcher = served()
    gate = tmp_path / "gate"
    payload = {"fraction": 0.5, "message": "halfway", "path": str(gate)}
    task_id = dispatcher.submit(progress_gate, payload, queue="q1", timeout=60)
    run = workers(dispatcher.worker_config(worker_heartbeat_interval=60.0, worker_queues="q1"))
    seen: dict = {}

    def shows_progress():
        seen.update(dispatcher.task(task_id))
        return seen["progress"]

    progress = wait_for(shows_progress, 20, lambda: f"task: {seen}; {describe(run.worker)}")
    assert seen["status"] == "in_progress"
    assert (progress["fraction"], progress["message"]) == (0.5, "halfway")
    gate.touch()

    def finished():
        seen.update(dispatcher.task(task_id))
        return seen["status"] == "completed"

    wait_for(finished, 20, lambda: f"task: {seen}; {describe(run.worker)}")
    assert run.stop() == 0
    assert seen["result"] == {"queue": "q1"}
    assert seen["progress"] == progress  # the last report stays with the finished task
