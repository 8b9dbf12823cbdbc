"""The client library against real processes: a dispatcher and a worker started by the
project's scripts (results, failures, time-outs, cancel and retry, map's order and bound,
batches, threads), failover across two dispatchers on one database (kill -9), and the
example that opens docs/CLIENT.md, run as written."""

from __future__ import annotations

import re
import subprocess
import sys
import threading

import pytest
from harness import Cluster, free_port, wait_for

from common.config import PROJECT_ROOT
from taskqueue import Client, Conflict, TaskCancelled, TaskFailed

pytestmark = pytest.mark.integration

MAX_BATCH = 50  # the dispatcher's: the client learns it from the first batch it refuses


def double(value: int) -> dict:
    return {"operation": "double", "value": value}


def first_python_block(path) -> str:
    match = re.search(r"```python\n(.*?)```", path.read_text(), re.S)
    assert match, f"no python block in {path}"
    return match[1]


@pytest.fixture(scope="module")
def queue(tmp_path_factory):
    """A dispatcher and one worker running two tasks at once, shared by this module."""
    c = Cluster(tmp_path_factory.mktemp("client"), LOG_LEVEL="WARNING", MAX_BATCH=str(MAX_BATCH))
    try:
        c.start_dispatcher()
        c.wait_worker_alive(c.start_worker("w1", "--concurrency", "2"))
        yield c
    finally:
        c.close()


@pytest.fixture
def client(queue):
    with Client(queue.url, "") as c:
        yield c


def test_the_example_of_client_md_runs_as_written(queue, tmp_path):
    code = first_python_block(PROJECT_ROOT / "docs" / "CLIENT.md")
    assert len([line for line in code.splitlines() if line.strip()]) <= 10  # ten lines
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,  # a user's own directory: DISPATCHER_URL from the environment
        env={**queue.env(), "PYTHONPATH": str(PROJECT_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["2432902008176640000", "[0, 2, 4, 6, 8]", "failed: boom"]


def test_results_failures_with_their_history_and_time_outs(client):
    assert client.submit("compute", double(21)).result(timeout=60)["result"] == 42
    failing = client.submit("fail", {"error_message": "boom"}, max_retries=1)
    with pytest.raises(TaskFailed) as caught:
        failing.result(timeout=60)
    assert caught.value.error == "boom" and caught.value.task_id == failing.id
    assert [(a["outcome"], a["error"]) for a in caught.value.history] == [("failed", "boom")] * 2
    nobody = client.submit("compute", double(1), queue="nobody-serves-this")
    with pytest.raises(TimeoutError, match="still pending"):
        nobody.result(timeout=0.5)
    assert nobody.status() == "pending"


def test_cancel_then_retry(client):
    later = client.submit("compute", double(5), delay=3600)
    assert later.cancel() == "cancelled"
    with pytest.raises(TaskCancelled):
        later.result(timeout=60)
    with pytest.raises(Conflict):
        later.cancel()
    assert later.retry() == "pending"
    assert later.result(timeout=60)["result"] == 10


def test_map_yields_in_order_with_at_most_max_in_flight_outstanding(client):
    drawn = 0
    highest = 0

    def payloads():
        nonlocal drawn
        for i in range(300):
            drawn += 1
            yield double(i)

    for i, result in enumerate(client.map("compute", payloads(), max_in_flight=20)):
        assert result["result"] == 2 * i
        assert drawn - i <= 20, f"{drawn} payloads read when result {i} was yielded"
        if i % 10 == 0:  # what the dispatcher holds: every other task is finished
            counts = client.stats()["queues"]["default"]
            highest = max(highest, counts["pending"] + counts["in_progress"])
    assert drawn == 300
    assert 0 < highest <= 20


def test_submit_many_follows_the_dispatchers_max_batch(client):
    handles = client.submit_many([("compute", double(i)) for i in range(2 * MAX_BATCH + 7)])
    assert client.max_batch == MAX_BATCH
    records = client.wait_all(handles, timeout=120)
    assert [r["result"]["result"] for r in records] == [2 * i for i in range(2 * MAX_BATCH + 7)]
    assert len({h.id for h in handles}) == len(handles)


def test_one_client_shared_by_threads(client):
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            handles = [client.submit("compute", double(n * 1000 + i)) for i in range(20)]
            results[n] = [r["result"] for r in client.map("compute", [double(n)] * 3)]
            results[n] += [h.result(timeout=120)["result"] for h in handles]
        except BaseException as exc:  # reported by the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert not errors, errors
    for n in range(8):
        assert results[n] == [2 * n] * 3 + [2 * (n * 1000 + i) for i in range(20)]


def test_the_client_fails_over_to_the_other_dispatcher_on_one_database(make_cluster):
    cluster = make_cluster()
    port_a, port_b = cluster.port, free_port()
    urls = {port: f"http://127.0.0.1:{port}" for port in (port_a, port_b)}
    cluster.settings["DISPATCHER_URL"] = ",".join(urls.values())
    procs = {
        urls[port_a]: cluster.start_dispatcher("dispatcher-a", port=port_a),
        urls[port_b]: cluster.start_dispatcher("dispatcher-b", port=port_b),
    }
    cluster.wait_worker_alive(cluster.start_worker("w1"))
    with Client(cluster.settings["DISPATCHER_URL"], "") as client:
        before = client.submit("compute", double(1))
        assert before.result(timeout=60)["result"] == 2
        used = client.url
        waiting = client.submit("sleep", {"duration": 1.0})
        outcome: list = []

        def wait() -> None:
            try:
                outcome.append(waiting.result(timeout=120))
            except Exception as exc:  # the test's thread reports it
                outcome.append(exc)

        waiter = threading.Thread(target=wait)
        waiter.start()  # a held wait, most likely, when its dispatcher is killed
        procs[used].kill9()
        # its reply may be lost with the dispatcher (the request written, the connection
        # reset): with a key, sending it again to the next one stores it once
        after = client.submit("compute", double(2), idempotency_key="after the kill")
        assert client.url != used
        assert after.result(timeout=60)["result"] == 4
        assert before.refresh()["status"] == "completed"  # one database behind both
        waiter.join(timeout=120)
        assert outcome == [{"slept": 1.0}], cluster.logs()
        handles = client.submit_many([("compute", double(i)) for i in range(30)])
        mapped = client.map("compute", [double(i) for i in range(5)])
        assert [r["result"] for r in mapped] == [0, 2, 4, 6, 8]
        wait_for(
            lambda: all(h.done() for h in handles), 60, lambda: f"{[h.record for h in handles]}"
        )


def test_a_task_type_of_a_few_lines_from_a_python_shell(make_cluster, monkeypatch):
    """examples/wordcount.py (@task, 14 lines) in a cluster, submitted from this process
    through the task object: .submit / .delay / .map on the default Client."""
    from examples.wordcount import wordcount
    from taskqueue import InvalidPayload
    from taskqueue.client import default_client

    cluster = make_cluster(TASK_MODULES="examples.wordcount", LOG_LEVEL="WARNING")
    cluster.start_dispatcher()
    cluster.wait_worker_alive(cluster.start_worker("w1", WORKER_QUEUES="text"))
    monkeypatch.setenv("DISPATCHER_URL", cluster.url)
    monkeypatch.setenv("API_TOKEN", "")
    default_client.cache_clear()
    try:
        handle = wordcount.submit(text="to be or not to be", top=2)
        assert handle.result(timeout=60) == {"words": 6, "lines": 1, "top": [["be", 2], ["to", 2]]}
        record = handle.refresh()
        assert (record["queue"], record["max_retries"]) == ("text", 2)  # the type's options
        assert record["payload"] == {"text": "to be or not to be", "top": 2}
        assert wordcount.delay(text="a a").result(timeout=60)["top"] == [["a", 2]]
        texts = [{"text": "x " * n} for n in range(1, 6)]
        assert [r["words"] for r in wordcount.map(texts, max_in_flight=2)] == [1, 2, 3, 4, 5]
        stored = default_client().stats()["tasks"]
        with pytest.raises(InvalidPayload, match="'top' must be between 1 and 100, not 0"):
            wordcount.submit(text="x", top=0)  # checked here: nothing is sent
        with pytest.raises(InvalidPayload, match="missing required field 'text'"):
            wordcount.submit(top=3)
        assert default_client().stats()["tasks"] == stored
        assert wordcount("b a b")["top"] == [("b", 2), ("a", 1)]  # a plain call runs here
    finally:
        default_client().close()
        default_client.cache_clear()
