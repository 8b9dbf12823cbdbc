"""`Worker.run(burst=True)` (`--burst`): run what the queues have ready, deliver every
result, exit; 0 when every task taken ended with its result taken, 1 when the dispatcher
cannot be reached (for WORKER_DEAD_AFTER) or a task taken did not end here. Against a
real dispatcher served in a thread (served_dispatcher.py)."""

from __future__ import annotations

from served_dispatcher import FAST, describe, free_port, wait_for

from common.config import Config

QUICK = {"type": "compute", "payload": {"operation": "double", "value": 21}}


def test_a_burst_runs_what_is_ready_and_exits_0(served, workers):
    """Quick, slow and failing tasks run; a task scheduled for later, one in a queue the
    worker does not serve and one held by another worker are left alone, and do not
    keep the burst from ending."""
    dispatcher = served()
    ready = dispatcher.client.submit_tasks(
        [QUICK] * 20
        + [{"type": "sleep", "payload": {"duration": 0.05}}] * 3
        + [{"type": "fail", "payload": {"error_message": "no"}, "max_retries": 0}]
    )
    later = dispatcher.submit("compute", QUICK["payload"], delay=600)
    elsewhere = dispatcher.submit("compute", QUICK["payload"], queue="other")
    held = dispatcher.submit("compute", QUICK["payload"], priority=9)
    [claim] = dispatcher.client.get_task("someone-else", "", ("default",), wait=0, max_tasks=1)
    assert claim["task_id"] == held

    run = workers(dispatcher.worker_config(worker_concurrency=2), burst=True)
    assert run.wait() == 0
    tasks = [dispatcher.task(t) for t in ready]
    assert [t["status"] for t in tasks] == ["completed"] * 23 + ["failed"], tasks
    assert tasks[-1]["error"] == "no"
    assert {t["worker_id"] for t in tasks} == {"w1"}
    for task_id, status in ((later, "pending"), (elsewhere, "pending"), (held, "in_progress")):
        task = dispatcher.task(task_id)
        assert task["status"] == status and task["worker_id"] != "w1", task
    [shown] = [w for w in dispatcher.client.workers() if w["worker_id"] == "w1"]
    assert shown["status"] == "stopped", shown
    assert len(run.worker.reporter.cache) == 0


def test_a_burst_on_an_empty_queue_exits_0_at_once(served, workers):
    dispatcher = served()
    run = workers(dispatcher.worker_config(), burst=True)
    assert run.wait() == 0
    assert dispatcher.client.stats()["tasks"]["completed"] == 0


def test_a_burst_runs_the_retries_that_are_ready_before_it_ends(served, workers, tmp_path):
    """A failure with retries left and no back-off is ready again at once: the burst
    runs it rather than end with it pending."""
    dispatcher = served(retry_backoff_base=0.0)
    task_id = dispatcher.submit("fail", {"error_message": "again"}, max_retries=2)
    run = workers(dispatcher.worker_config(), burst=True)
    assert run.wait() == 0
    task = dispatcher.task(task_id)
    assert task["status"] == "failed" and task["attempts"] == 3, task


def test_a_burst_exits_1_when_no_dispatcher_answers(tmp_path, workers):
    """Nothing listens: the usual back-off, for WORKER_DEAD_AFTER seconds, then exit 1."""
    config = Config(
        dispatcher_url=f"http://127.0.0.1:{free_port()}",
        worker_cache_dir=str(tmp_path / "cache"),
        **{**FAST, "worker_dead_after": 0.5},
    )
    run = workers(config, burst=True)
    assert run.wait() == 1


def test_a_burst_whose_task_is_cancelled_exits_1(served, workers, gate_task, tmp_path):
    """A task it took that ended otherwise than by its own result: exit status 1."""
    dispatcher = served()
    task_id = dispatcher.submit(gate_task, {"path": str(tmp_path / "never")}, timeout=60)
    run = workers(dispatcher.worker_config(), burst=True)
    wait_for(lambda: task_id in run.worker.running, 10, lambda: describe(run.worker))
    dispatcher.client.call("POST", f"/task/{task_id}/cancel")
    assert run.wait() == 1
    assert dispatcher.task(task_id)["status"] == "cancelled"


def test_a_burst_keeps_what_it_could_not_deliver_and_the_next_burst_delivers_it(
    served, workers, gate_task, tmp_path
):
    """The dispatcher goes away while the task runs: the result is cached, the burst
    gives up after WORKER_DEAD_AFTER with status 1; the next burst of the same worker id
    delivers it first thing and exits 0."""
    dispatcher = served()
    gate = tmp_path / "gate"
    task_id = dispatcher.submit(gate_task, {"path": str(gate)})
    first = workers(dispatcher.worker_config(worker_dead_after=0.5), burst=True)
    wait_for(lambda: task_id in first.worker.running, 10, lambda: describe(first.worker))

    dispatcher.stop()
    gate.touch()
    assert first.wait() == 1
    assert len(first.worker.reporter.cache) == 1

    dispatcher.start()
    assert dispatcher.task(task_id)["status"] == "in_progress"
    second = workers(dispatcher.worker_config(), burst=True)
    assert second.wait() == 0
    task = dispatcher.task(task_id)
    assert task["status"] == "completed" and task["result"] == {"found": str(gate)}, task
    assert len(second.worker.reporter.cache) == 0


def test_a_burst_the_dispatcher_refuses_exits_1(served, workers):
    """A claim refused (here: a wrong API_TOKEN) is not waited out: exit 1 at once."""
    dispatcher = served(api_token="the-right-one")
    run = workers(dispatcher.worker_config(api_token="a-wrong-one"), burst=True)
    assert run.wait() == 1


def test_a_burst_stopped_with_tasks_in_hand_exits_1(served, workers, gate_task, tmp_path):
    """stop() (SIGTERM) while it holds prefetched tasks: they are given back, the
    running one finishes within the grace, and the status says not all it took ended."""
    dispatcher = served()
    gate = tmp_path / "gate"
    running = dispatcher.submit(gate_task, {"path": str(gate)}, priority=1)
    buffered = dispatcher.client.submit_tasks([QUICK] * 3)
    run = workers(dispatcher.worker_config(worker_prefetch="3"), burst=True)

    def holding() -> bool:
        with run.worker.cv:
            return running in run.worker.running and len(run.worker.buffer) == 3

    wait_for(holding, 10, lambda: describe(run.worker))
    run.worker.stop("SIGTERM")
    gate.touch()
    assert run.wait() == 1
    assert dispatcher.task(running)["status"] == "completed"
    assert {dispatcher.task(t)["status"] for t in buffered} == {"pending"}
