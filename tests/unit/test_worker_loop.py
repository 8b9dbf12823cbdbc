"""The worker loop, in the test process, against a real dispatcher served in a thread
(served_dispatcher.py): real HTTP, a real SQLite file, real pool processes. Timings are
short through the config; every wait is a poll with a deadline that shows the state."""

from __future__ import annotations

import logging
import re

from flask import request
from served_dispatcher import describe, wait_for

QUICK = {"type": "compute", "payload": {"operation": "double", "value": 21}}


def finished(dispatcher, task_ids: list[str], timeout: float = 20) -> list[dict]:
    """Every task once it is completed, failed or cancelled (polls GET /task/<id>)."""
    seen: dict[str, dict] = {}

    def done() -> bool:
        for task_id in task_ids:
            if seen.get(task_id, {}).get("status") not in ("completed", "failed", "cancelled"):
                seen[task_id] = dispatcher.task(task_id)
        return all(seen[t]["status"] in ("completed", "failed", "cancelled") for t in task_ids)

    wait_for(
        done,
        timeout,
        lambda: (
            "not finished: "
            + str({t: s["status"] for t, s in seen.items() if s["status"] != "completed"})
        ),
    )
    return [seen[t] for t in task_ids]


def holding(worker, running: set[str] = frozenset(), buffered: int = 0):
    """A predicate: the worker runs `running` and holds `buffered` tasks unstarted."""

    def check() -> bool:
        with worker.cv:
            return running <= set(worker.running) and len(worker.buffer) == buffered

    return check


def record_claims(into: list[tuple[str, int, int]]):
    """A setup hook: each answered claim, a /get-task or one sent with results, as
    (worker_id, max_tasks, tasks given)."""

    def setup(app) -> None:
        @app.after_request
        def record(response):
            if response.status_code != 200:
                return response
            body = None
            if request.path == "/submit-results":
                body = request.get_json().get("claim")
            elif request.path == "/get-task":
                body = request.get_json()
            if body is not None:
                given = len(response.get_json()["tasks"])
                into.append((body["worker_id"], body["max_tasks"], given))
            return response

    return setup


def test_a_fixed_prefetch_claims_again_only_at_its_low_water_mark(served, workers):
    """WORKER_PREFETCH=8, one slot: the first claim fills slot and prefetch (9); later
    claims wait until the buffer is down to half the prefetch (4), so each asks for at
    least 4 tasks: never one claim per finished task."""
    claims: list[tuple[str, int, int]] = []
    dispatcher = served(setup=record_claims(claims))
    slow = {"type": "sleep", "payload": {"duration": 0.02}}  # not quick enough to chunk
    ids = dispatcher.client.submit_tasks([slow] * 30)
    run = workers(dispatcher.worker_config(worker_prefetch="8", worker_concurrency=1))

    tasks = finished(dispatcher, ids)
    assert run.stop() == 0
    assert {t["status"] for t in tasks} == {"completed"}
    asks = [asked for worker_id, asked, _ in claims if worker_id == "w1"]
    assert asks[0] == 9, claims
    assert all(4 <= asked <= 9 for asked in asks), f"a claim below the low-water mark: {claims}"
    given = [n for worker_id, _, n in claims if worker_id == "w1" and n]
    assert sum(given) == 30 and len(given) <= 1 + (30 - 9) // 4 + 1, claims


def test_quick_tasks_go_to_the_pool_in_chunks_and_a_failure_stays_alone(served, workers, caplog):
    """Quick tasks are sent to a pool process several at a time; one failing inside a
    chunk fails alone, the others complete, each on its first attempt."""
    caplog.set_level(logging.DEBUG, logger="worker")
    dispatcher = served()
    bad = {"type": "fail", "payload": {"error_message": "no"}, "max_retries": 0, "priority": 1}
    batch = [dict(QUICK, priority=2)] * 100 + [bad] + [QUICK] * 100
    ids = dispatcher.client.submit_tasks(batch)
    run = workers(dispatcher.worker_config(worker_prefetch="100", worker_concurrency=2))

    tasks = finished(dispatcher, ids)
    assert run.stop() == 0
    assert tasks[100]["status"] == "failed" and tasks[100]["error"] == "no", tasks[100]
    quick = tasks[:100] + tasks[101:]
    assert {t["status"] for t in quick} == {"completed"}
    assert {t["result"]["result"] for t in quick} == {42}
    assert {t["attempts"] for t in tasks} == {1}
    sizes = [int(m) for m in re.findall(r"chunk of (\d+) tasks", caplog.text)]
    assert sizes and max(sizes) > 1, "no chunk of more than one task was sent"


def test_a_task_cancelled_while_it_runs_is_abandoned_at_the_next_heartbeat(
    served, workers, gate_task, tmp_path
):
    """The heartbeat's reply names the cancelled task: its process is killed, no result
    is sent, and the worker goes on with other work."""
    dispatcher = served()
    never = tmp_path / "never-created"
    task_id = dispatcher.submit(gate_task, {"path": str(never)}, timeout=60)
    run = workers(dispatcher.worker_config())
    wait_for(holding(run.worker, {task_id}), 10, lambda: describe(run.worker))

    dispatcher.client.call("POST", f"/task/{task_id}/cancel")
    wait_for(lambda: not run.worker.running, 10, lambda: describe(run.worker))
    after = dispatcher.submit(QUICK["type"], QUICK["payload"])
    [done] = finished(dispatcher, [after])
    assert run.stop() == 0
    assert done["status"] == "completed", done
    cancelled = dispatcher.task(task_id)
    assert cancelled["status"] == "cancelled" and cancelled["result"] is None, cancelled


def test_a_stopping_worker_gives_its_buffered_tasks_back_uncounted(
    served, workers, gate_task, tmp_path
):
    """stop() with one task running and five prefetched: the five go back to `pending`
    at once (their attempt not counted), the running one finishes within the grace, and
    the worker shows `stopped`."""
    dispatcher = served()
    gate = tmp_path / "gate"
    running = dispatcher.submit(gate_task, {"path": str(gate)}, priority=1)
    buffered = dispatcher.client.submit_tasks([QUICK] * 5)
    run = workers(dispatcher.worker_config(worker_prefetch="5", worker_concurrency=1))
    wait_for(holding(run.worker, {running}, buffered=5), 10, lambda: describe(run.worker))

    run.worker.stop("the test stops it")
    wait_for(
        lambda: all(dispatcher.task(t)["status"] == "pending" for t in buffered),
        10,
        lambda: f"{[dispatcher.task(t)['status'] for t in buffered]}; {describe(run.worker)}",
    )
    gate.touch()
    assert run.wait() == 0
    assert dispatcher.task(running)["status"] == "completed"
    for task in (dispatcher.task(t) for t in buffered):
        assert task["attempts"] == 0, task
        assert [h["outcome"] for h in task["history"]] == ["released"], task["history"]
    [shown] = dispatcher.client.workers()
    assert shown["status"] == "stopped", shown


def test_results_cached_while_the_dispatcher_is_down_are_delivered_when_it_is_back(
    served, workers, gate_task, tmp_path
):
    dispatcher = served()
    gate = tmp_path / "gate"
    task_id = dispatcher.submit(gate_task, {"path": str(gate)})
    run = workers(dispatcher.worker_config())
    wait_for(holding(run.worker, {task_id}), 10, lambda: describe(run.worker))
    cache = run.worker.reporter.cache

    dispatcher.stop()
    gate.touch()  # the task ends while nobody answers: its result goes to the cache
    wait_for(lambda: len(cache) == 1, 10, lambda: describe(run.worker))
    assert run.worker.running == {}

    dispatcher.start()  # the same port, the same database
    [task] = finished(dispatcher, [task_id])
    wait_for(lambda: len(cache) == 0, 10, lambda: describe(run.worker))
    assert run.stop() == 0
    assert task["status"] == "completed" and task["result"] == {"found": str(gate)}, task
    assert task["attempts"] == 1, task["history"]


def older_dispatcher(claims_seen: list[int]):
    """A setup hook: the dispatcher as it was before claims sent with results: the
    `claim` of a POST /submit-results body is dropped unread (counted in claims_seen)."""
    import io
    import json

    def setup(app) -> None:
        inner = app.wsgi_app

        def without_claims(environ, start_response):
            if environ.get("PATH_INFO") == "/submit-results":
                length = int(environ.get("CONTENT_LENGTH") or 0)
                body = json.loads(environ["wsgi.input"].read(length) or b"{}")
                if body.pop("claim", None) is not None:
                    claims_seen.append(1)
                raw = json.dumps(body).encode()
                environ["wsgi.input"] = io.BytesIO(raw)
                environ["CONTENT_LENGTH"] = str(len(raw))
            return inner(environ, start_response)

        app.wsgi_app = without_claims

    return setup


def test_a_dispatcher_older_than_claims_with_results_still_gets_every_task_run(served, workers):
    """A new worker against an older dispatcher (which ignores `claim` and answers no
    `tasks`): every task runs once, and after the first such answer the worker stops
    sending claims with its results and claims on its own."""
    ignored: list[int] = []
    dispatcher = served(setup=older_dispatcher(ignored))
    run = workers(dispatcher.worker_config(worker_concurrency=1))
    for i in range(12):  # one at a time: the case where claims go with results
        [task_id] = dispatcher.client.submit_tasks(
            [dict(QUICK, payload={"operation": "double", "value": i})]
        )
        [task] = finished(dispatcher, [task_id])
        assert task["status"] == "completed" and task["result"]["result"] == 2 * i, task
        assert task["attempts"] == 1, task
    assert run.stop() == 0
    assert len(ignored) == 1, f"{len(ignored)} claims sent to a dispatcher that ignores them"
