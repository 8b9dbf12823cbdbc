"""The client library (taskqueue.Client, TaskHandle) against a real dispatcher served in
a thread and Workers run in threads (served_dispatcher.py): real HTTP, a real SQLite
file. The same against real processes, failover and the docs' example:
tests/integration/test_client.py."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from flask import request
from served_dispatcher import GATE, free_port, wait_for

import taskqueue
from common.config import PROJECT_ROOT, ConfigError
from taskqueue import (
    ApiError,
    Client,
    Conflict,
    DispatcherUnreachable,
    InvalidPayload,
    InvalidRequest,
    NotFound,
    TaskCancelled,
    TaskFailed,
    TaskHandle,
    Unauthorized,
)
from tasks import TaskType, accept_object, registry

ODD = "unit_fail_on_odd"


def fail_on_odd(payload: dict) -> dict:
    """The task of ODD: fails for an odd `v`, else returns it."""
    if payload["v"] % 2:
        raise TaskFailed(f"odd {payload['v']}")
    return {"v": payload["v"]}


class Double:
    """A stand-in for a typed task object: `.name` and `.check(payload) -> payload`."""

    name = "compute"

    def __init__(self) -> None:
        self.checked: list[dict] = []

    def check(self, payload: dict) -> dict:
        value = payload.get("value")
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidPayload(f"compute field 'value' must be a whole number, not {value!r}")
        self.checked.append(payload)
        return {"operation": "double", "value": value}


def double(value: int) -> dict:
    return {"operation": "double", "value": value}


@pytest.fixture
def odd_task(monkeypatch):
    monkeypatch.setitem(registry._types, ODD, TaskType(ODD, accept_object, fail_on_odd))
    return ODD


@pytest.fixture
def client_for():
    """client_for(dispatcher_or_url, **kwargs): a Client closed at the end of the test."""
    made: list[Client] = []

    def make(where, token: str = "", **kwargs) -> Client:
        c = Client(getattr(where, "url", where), token, **kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def record_batches(sizes: list[int | None]):
    """A dispatcher setup hook: the number of tasks of each POST /submit-tasks."""

    def setup(app) -> None:
        @app.before_request
        def count() -> None:
            if request.path == "/submit-tasks":
                body = request.get_json(silent=True) or {}
                sizes.append(len(body.get("tasks", [])) if isinstance(body, dict) else None)

    return setup


def test_the_package_exports_what_the_issue_names():
    for name in ("Client", "TaskHandle", "TaskFailed", "TaskCancelled", "ApiError"):
        assert name in taskqueue.__all__
    from tasks.errors import TaskCancelled as Cancelled
    from tasks.errors import TaskFailed as Failed

    assert (taskqueue.TaskFailed, taskqueue.TaskCancelled) == (Failed, Cancelled)
    assert issubclass(InvalidRequest, ApiError) and issubclass(InvalidRequest, ValueError)
    assert issubclass(NotFound, LookupError) and issubclass(Unauthorized, PermissionError)


# -- submitting ----------------------------------------------------------------------------


def test_an_unknown_option_is_a_type_error_before_anything_is_sent(client_for):
    client = client_for(f"http://127.0.0.1:{free_port()}")  # nothing listens: never asked
    with pytest.raises(TypeError, match="unexpected keyword argument 'prio'"):
        client.submit("compute", double(1), prio=5)
    with pytest.raises(TypeError, match="'prio'"):
        client.submit_many([("compute", double(1))], prio=5)
    with pytest.raises(TypeError, match="item 1: unknown field 'prio'"):
        client.submit_many([{"type": "compute"}, {"type": "compute", "prio": 5}])
    with pytest.raises(TypeError, match="'prio'"):
        client.map("compute", [double(1)], prio=5)  # at the call, not at the first result
    with pytest.raises(TypeError, match="a task is named by its type"):
        client.submit(42, {})


def test_options_reach_the_stored_task(served, client_for):
    dispatcher = served()
    client = client_for(dispatcher)
    handle = client.submit(
        "compute", double(2), queue="q", priority=7, delay=60, max_retries=1, timeout=9
    )
    task = handle.refresh()
    assert (task["queue"], task["priority"], task["max_retries"]) == ("q", 7, 1)
    assert handle.status() == "pending"
    again = client.submit("compute", double(2), idempotency_key="k")
    assert client.submit("compute", double(2), idempotency_key="k") == again


def test_a_task_object_checks_the_payload_here_before_anything_is_sent(served, client_for):
    dispatcher = served()
    client = client_for(dispatcher)
    typed = Double()
    with pytest.raises(InvalidPayload, match="'value' must be a whole number"):
        client.submit(typed, {"value": "x"})
    with pytest.raises(InvalidPayload):
        client.submit_many([(typed, {"value": 1}), {"type": typed, "payload": {"value": None}}])
    assert sum(client.stats()["tasks"].values()) == 0  # nothing reached the dispatcher
    handle = client.submit(typed, {"value": 21})
    assert handle.refresh()["payload"] == {"operation": "double", "value": 21}


def test_a_refusal_is_invalid_request_with_the_dispatchers_sentence(served, client_for):
    client = client_for(served())
    with pytest.raises(InvalidRequest) as caught:
        client.submit("nope", {})
    assert caught.value.status == 400
    assert caught.value.message.startswith("unknown task type 'nope'")
    with pytest.raises(ValueError, match="'priority' must be between"):
        client.submit("compute", double(1), priority=10**9)


def test_submit_many_sends_batches_of_at_most_batch_size_in_order(served, client_for):
    sizes: list[int | None] = []
    client = client_for(served(record_batches(sizes)))
    items = [("compute", double(i)) for i in range(5)]
    items += [{"type": "compute", "payload": double(i), "priority": 3} for i in range(5, 7)]
    handles = client.submit_many(items, batch_size=3, queue="bulk")
    assert sizes == [3, 3, 1]
    tasks = [h.refresh() for h in handles]
    assert [t["payload"]["value"] for t in tasks] == list(range(7))
    assert {t["queue"] for t in tasks} == {"bulk"}
    assert [t["priority"] for t in tasks] == [0] * 5 + [3, 3]  # an item's own option wins


def test_submit_many_follows_a_dispatcher_whose_max_batch_is_smaller(served, client_for):
    sizes: list[int | None] = []
    client = client_for(served(record_batches(sizes), max_batch=3))
    assert client.max_batch == 1000  # our default: the dispatcher says otherwise
    handles = client.submit_many([("compute", double(i)) for i in range(7)])
    assert sizes == [7, 3, 3, 1]  # the first was refused whole, nothing stored
    assert [h.refresh()["payload"]["value"] for h in handles] == list(range(7))
    assert client.max_batch == 3


def test_a_refused_batch_names_its_item_in_the_whole_list_and_keeps_what_was_stored(
    served, client_for
):
    client = client_for(served())
    items = [("compute", double(i)) for i in range(5)]
    items[3] = ("compute", {"operation": "double"})
    with pytest.raises(InvalidRequest) as caught:
        client.submit_many(items, batch_size=2)
    assert caught.value.message.startswith("tasks[3]: "), caught.value.message
    stored = caught.value.submitted
    assert [h.refresh()["payload"]["value"] for h in stored] == [0, 1]
    assert client.stats()["tasks"]["pending"] == 2


def test_chain_group_and_depends_on_are_one_batch_each(served, client_for):
    sizes: list[int | None] = []
    client = client_for(served(record_batches(sizes), max_batch=4))
    steps = client.chain(("compute", double(1)), {"type": "compute", "payload": double(2)})
    assert [h.status() for h in steps] == ["pending", "waiting"]
    assert steps[1].refresh()["depends_on"] == [steps[0].id]
    fan = client.group(("compute", double(3)), ("compute", double(4))).then(
        "compute", double(5), priority=2, depends_on=steps[-1]
    )
    assert len(fan) == 3 and fan[-1].refresh()["priority"] == 2
    assert fan[-1].record["depends_on"] == [steps[1].id, fan[0].id, fan[1].id]
    alone = client.group(("compute", double(6))).submit()
    later = client.submit("compute", double(7), depends_on=[alone[0], steps[0].id])
    assert later.refresh()["depends_on"] == [alone[0].id, steps[0].id]
    assert sizes == [2, 3, 1]  # one POST /submit-tasks each
    with pytest.raises(ValueError, match="more than the dispatcher takes in one batch"):
        client.chain(*(("compute", double(i)) for i in range(5)))
    with pytest.raises(ValueError, match="at least one task"):
        client.chain()
    with pytest.raises(InvalidRequest, match="'depends_on': task f+ not found"):
        client.submit("compute", double(8), depends_on="f" * 32)


def test_submit_many_keeps_batch_references_across_its_batches(served, client_for):
    """A list longer than MAX_BATCH is sent in several batches; "#N" still names the
    N-th item of the whole list (an earlier batch's task by its id)."""
    sizes: list[int | None] = []
    client = client_for(served(record_batches(sizes), max_batch=3))
    items = [{"type": "compute", "payload": double(i)} for i in range(6)]
    items[4]["depends_on"] = ["#3"]  # same batch (the second)
    items[5]["depends_on"] = ["#1", "#4"]  # an earlier batch's task, and one of its own
    handles = client.submit_many(items)
    assert sizes == [6, 3, 3]  # refused whole (MAX_BATCH 3: nothing stored), then split
    assert handles[4].refresh()["depends_on"] == [handles[3].id]
    assert handles[5].refresh()["depends_on"] == [handles[1].id, handles[4].id]
    assert [h.status() for h in handles] == ["pending"] * 4 + ["waiting"] * 2


def test_refusals_and_outages_have_their_own_exceptions(served, client_for):
    dispatcher = served(api_token="right")
    with pytest.raises(Unauthorized):
        client_for(dispatcher, "wrong").submit("compute", double(1))
    client = client_for(dispatcher, "right")
    with pytest.raises(NotFound, match="task nope not found"):
        client.handle("nope").refresh()
    handle = client.submit("compute", double(1))
    assert handle.cancel() == "cancelled"
    with pytest.raises(Conflict, match="cannot be cancelled"):
        handle.cancel()
    nobody = client_for(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(DispatcherUnreachable):
        nobody.submit("compute", double(1))


def test_url_and_token_default_to_the_environment_then_dot_env(tmp_path, monkeypatch):
    port = free_port()
    (tmp_path / ".env").write_text(
        f"DISPATCHER_URL=http://127.0.0.1:{port}\nAPI_TOKEN=from-dotenv\nMAX_BATCH=7\n"
    )
    monkeypatch.chdir(tmp_path)
    before = dict(os.environ)
    with Client() as client:
        assert (client.urls, client.token, client.max_batch) == (
            [f"http://127.0.0.1:{port}"],
            "from-dotenv",
            7,
        )
    assert dict(os.environ) == before  # read, not loaded into the environment
    monkeypatch.setenv("DISPATCHER_URL", "http://a.example:1,http://b.example:2")
    with Client(token="given") as client:  # the environment wins over .env
        assert (client.urls, client.token) == (
            ["http://a.example:1", "http://b.example:2"],
            "given",
        )
    monkeypatch.setenv("MAX_BATCH", "lots")
    with pytest.raises(ConfigError, match="MAX_BATCH"):
        Client()
    with pytest.raises(ValueError, match="not a list of http"):
        Client("ftp://x", "")


def test_the_projects_own_dot_env_is_read_too(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no .env here
    expected = [
        line.split("=", 1)[1]
        for line in (PROJECT_ROOT / ".env").read_text().splitlines()
        if line.startswith("DISPATCHER_URL=")
    ]
    with Client() as client:
        assert client.urls == expected


# -- waiting -------------------------------------------------------------------------------


def test_result_failure_cancel_and_retry(served, workers, client_for, odd_task):
    dispatcher = served(retry_backoff_base=0.0)
    workers(dispatcher.worker_config())
    client = client_for(dispatcher)
    assert client.submit("compute", double(21)).result(timeout=30)["result"] == 42

    failing = client.submit(odd_task, {"v": 1}, max_retries=1)
    with pytest.raises(TaskFailed) as caught:
        failing.result(timeout=30)
    assert caught.value.error == "odd 1" and caught.value.task_id == failing.id
    assert [(a["attempt"], a["outcome"], a["error"]) for a in caught.value.history] == [
        (1, "failed", "odd 1"),
        (2, "failed", "odd 1"),
    ]
    assert failing.done() and failing.record["status"] == "failed"

    later = client.submit("compute", double(5), delay=3600)
    assert later.cancel() == "cancelled"
    with pytest.raises(TaskCancelled) as cancelled:
        later.result(timeout=30)
    assert cancelled.value.task_id == later.id
    assert later.retry() == "pending"  # ready at once: the delay is over
    assert later.result(timeout=30)["result"] == 10
    with pytest.raises(Conflict, match="only failed or cancelled tasks can be retried"):
        later.retry()


def test_a_result_not_there_in_time_is_a_timeout_error(served, client_for):
    client = client_for(served())  # no worker
    handle = client.submit("compute", double(1))
    with pytest.raises(TimeoutError, match=f"task {handle.id} is still pending after 0.2 s"):
        handle.result(timeout=0.2)
    with pytest.raises(TimeoutError):
        handle.result(timeout=0)
    with pytest.raises(TimeoutError, match="1 of 1 tasks not finished after 0.2 s"):
        client.wait_all([handle], timeout=0.2)
    with pytest.raises(TimeoutError):
        list(client.as_completed([handle], timeout=0.2))


def test_a_dispatcher_allowing_shorter_waits_is_followed(served, workers, client_for):
    dispatcher = served(max_wait_seconds=0.5)
    client = client_for(dispatcher)
    handle = client.submit("compute", double(4))
    with pytest.raises(TimeoutError):
        handle.result(timeout=1.2)  # asks wait=1.2, told at most 0.5, keeps waiting
    assert client.max_wait == 0.5
    workers(dispatcher.worker_config(worker_poll_interval=0.2))
    assert handle.result(timeout=30)["result"] == 8


def test_as_completed_yields_each_task_as_it_finishes(
    served, workers, client_for, gate_task, tmp_path
):
    dispatcher = served()
    workers(dispatcher.worker_config(worker_concurrency=2))
    client = client_for(dispatcher)
    gate = tmp_path / "gate"
    slow = client.submit(GATE, {"path": str(gate)})
    quick = client.submit("compute", double(3))
    finished = client.as_completed([slow, quick], timeout=60)
    assert next(finished) is quick  # the slow one is still held at its gate
    assert quick.record["status"] == "completed"
    gate.touch()
    assert next(finished) is slow
    assert slow.result() == {"found": str(gate)}  # from its record: nothing more asked
    with pytest.raises(StopIteration):
        next(finished)
    assert [r["status"] for r in client.wait_all([slow, quick])] == ["completed"] * 2


def record_requests(paths: list[str]):
    """A dispatcher setup hook: the path of every request, `/task/<id>` as `/task/`."""

    def setup(app) -> None:
        @app.before_request
        def count() -> None:
            paths.append("/task/" if request.path.startswith("/task/") else request.path)

    return setup


def without_wait_tasks(app) -> None:
    """A dispatcher setup hook: answer POST /wait-tasks as a dispatcher without it does."""

    @app.before_request
    def refuse():
        if request.path == "/wait-tasks":
            return {"error": "no such endpoint"}, 404
        return None


def test_as_completed_waits_for_many_tasks_with_few_requests(served, workers, client_for):
    paths: list[str] = []
    dispatcher = served(record_requests(paths))
    workers(dispatcher.worker_config(worker_concurrency=2))
    client = client_for(dispatcher)
    handles = client.submit_many([("compute", double(i)) for i in range(60)])
    seen = list(client.as_completed(handles, timeout=60))
    assert sorted(h.id for h in seen) == sorted(h.id for h in handles)
    assert [h.result()["result"] for h in handles] == [2 * i for i in range(60)]
    assert handles[0].record["history"][0]["outcome"] == "completed"  # as GET /task/<id>
    asked = [p for p in paths if p in ("/wait-tasks", "/task/")]
    assert "/task/" not in asked and 1 <= len(asked) < 60, asked
    own = client._conn()  # the test's thread's: submit_many's
    wait_for(lambda: client._open == {own}, 10, lambda: f"pollers' still open: {client._open}")


def test_a_dispatcher_without_wait_tasks_is_asked_for_each_task(served, workers, client_for):
    paths: list[str] = []
    dispatcher = served(lambda app: (record_requests(paths)(app), without_wait_tasks(app)))
    workers(dispatcher.worker_config(worker_concurrency=2))
    client = client_for(dispatcher)
    handles = client.submit_many([("compute", double(i)) for i in range(20)])
    assert [r["result"]["result"] for r in client.wait_all(handles, timeout=60)] == [
        2 * i for i in range(20)
    ]
    assert client.wait_many is False
    assert paths.count("/wait-tasks") == 1 and paths.count("/task/") >= 20
    assert [r["result"] for r in client.map("compute", map(double, range(5)))] == [0, 2, 4, 6, 8]


def test_waiting_for_many_follows_a_dispatcher_whose_max_batch_is_smaller(
    served, workers, client_for
):
    dispatcher = served(max_batch=3)
    workers(dispatcher.worker_config())
    ids = [h.id for h in client_for(dispatcher).submit_many([("compute", double(1))] * 7)]
    fresh = client_for(dispatcher)  # its MAX_BATCH: ours, 1000, until told
    records = fresh.wait_all([fresh.handle(i) for i in ids], timeout=60)
    assert [r["status"] for r in records] == ["completed"] * 7
    assert fresh.max_batch == 3


def test_a_task_that_is_not_stored_is_not_found_when_waited_for(served, client_for):
    client = client_for(served())
    handles = [client.submit("compute", double(1)), client.handle("never-submitted")]
    with pytest.raises(NotFound, match="task never-submitted not found"):
        client.wait_all(handles, timeout=30)


def test_map_yields_in_input_order_with_at_most_max_in_flight_outstanding(
    served, workers, client_for
):
    dispatcher = served()
    workers(dispatcher.worker_config(worker_concurrency=2))
    client = client_for(dispatcher)
    drawn = 0

    def payloads():
        nonlocal drawn
        for i in range(40):
            drawn += 1
            yield double(i)

    results = client.map("compute", payloads(), max_in_flight=5, batch_size=2)
    assert drawn == 0  # lazy: nothing read or sent before the first result is asked for
    for i, result in enumerate(results):
        assert result["result"] == 2 * i
        assert drawn - i <= 5, f"{drawn} payloads read when result {i} was yielded"
        counts = client.stats()["tasks"]
        outstanding = counts["pending"] + counts["in_progress"]
        assert outstanding <= 5, counts
    assert drawn == 40


def test_map_raises_a_failed_task_when_its_turn_comes(served, workers, client_for, odd_task):
    dispatcher = served()
    workers(dispatcher.worker_config())
    client = client_for(dispatcher)
    results = client.map(odd_task, ({"v": v} for v in (0, 2, 3, 4)), max_retries=0)
    assert [next(results), next(results)] == [{"v": 0}, {"v": 2}]
    with pytest.raises(TaskFailed, match="odd 3"):
        next(results)
    typed = Double()
    assert [r["result"] for r in client.map(typed, ({"value": v} for v in range(3)))] == [0, 2, 4]
    assert len(typed.checked) == 3  # each payload checked once, here


def test_one_client_shared_by_threads(served, workers, client_for):
    dispatcher = served()
    workers(dispatcher.worker_config(worker_concurrency=2))
    client = client_for(dispatcher)
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            handles = [client.submit("compute", double(n * 100 + i)) for i in range(10)]
            results[n] = [h.result(timeout=60)["result"] for h in handles]
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert results == {n: [2 * (n * 100 + i) for i in range(10)] for n in range(6)}
    # one connection per thread, closed when its thread is gone
    wait_for(lambda: not client._open, 10, lambda: f"still open: {client._open}")


def test_a_handle_by_id_and_its_equality(served, client_for):
    client = client_for(served())
    handle = client.submit("compute", double(1))
    again = client.handle(handle.id)
    assert again == handle and hash(again) == hash(handle) and again.record is None
    assert repr(again) == f"<TaskHandle {handle.id} ?>"
    assert isinstance(again, TaskHandle) and again.status() == "pending"


def test_the_connections_go_through_common_client(served, client_for):
    """No second HTTP layer: the per-thread connection is common/client.py's Client."""
    from common.client import Client as CommonClient

    client = client_for(served())
    assert isinstance(client._conn(), CommonClient)
    assert client._conn() is client._conn()
    assert Path(taskqueue.__file__).parent == PROJECT_ROOT / "taskqueue"
