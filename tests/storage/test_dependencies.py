"""Dependencies between tasks (deps.py), on both backends: the contract suite's fixtures
(a real SQLite file, a fresh schema of a real PostgreSQL server)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from dispatcher.errors import Conflict, UnknownDependency, http_status
from dispatcher.storage import Result, open_storage
from tests.storage import test_contract as contract
from tests.storage.test_contract import FOREVER, LEASE, T0, claim, new_task, reap, submit

config = contract.config  # the contract suite's fixture: SQLite, then PostgreSQL


@pytest.fixture
def storage(config):
    store = open_storage(config)
    yield store
    store.close()


def chain(storage, n: int, now: float = T0) -> list[str]:
    """n tasks in one batch, each depending on the one before."""
    tasks = [new_task()] + [new_task(depends_on=[i]) for i in range(n - 1)]
    return [task_id for task_id, _ in storage.submit(tasks, now=now)]


def status(storage, *ids: str) -> list[str]:
    return [storage.status_of(t) for t in ids]


def run(storage, task_id: str, outcome: str = "completed", result=None, now: float = T0 + 1):
    """Claim exactly `task_id` (the next ready task) and report `outcome` for it."""
    [c] = claim(storage, now=now)
    assert c["task_id"] == task_id
    item = Result(task_id, c["lease_token"], "w1", outcome, result=result, error="boom")
    [moved] = storage.finish([item], now=now)
    return c, moved


def test_waiting_until_the_last_dependency_completes(storage):
    a, b, c = chain(storage, 3)
    assert status(storage, a, b, c) == ["pending", "waiting", "waiting"]
    assert storage.stats(now=T0, dead_after=FOREVER)["tasks"]["waiting"] == 2
    assert [t["task_id"] for t in storage.list_tasks("waiting", None, 10, 0)] == [b, c]
    run(storage, a, result={"n": 1})
    assert status(storage, b, c) == ["pending", "waiting"]
    claimed, _ = run(storage, b, result={"n": 2})
    assert claimed["dependencies"] == {a: {"n": 1}}
    claimed, _ = run(storage, c, result=3)
    assert claimed["dependencies"] == {b: {"n": 2}}
    task = storage.get(c)
    assert task["depends_on"] == [b] and task["status"] == "completed"
    assert storage.get(a)["dependents"] == [b]


def test_a_task_without_dependencies_is_claimed_without_them(storage):
    task_id = submit(storage)
    [c] = claim(storage)
    assert c["task_id"] == task_id and "dependencies" not in c
    assert storage.get(task_id)["depends_on"] == [] and storage.get(task_id)["dependents"] == []


def test_fan_in_waits_for_all(storage):
    ids = [t for t, _ in storage.submit([new_task() for _ in range(3)], now=T0)]
    [(join, _)] = storage.submit([new_task(depends_on=ids)], now=T0)
    assert storage.status_of(join) == "waiting"
    for i in range(len(ids)):
        assert storage.status_of(join) == "waiting"
        [c] = claim(storage, now=T0 + 1)
        storage.finish([Result(c["task_id"], c["lease_token"], "w1", "completed", i)], T0 + 1)
    assert storage.status_of(join) == "pending"
    [c] = claim(storage, now=T0 + 2)
    assert c["task_id"] == join
    assert c["dependencies"] == {t: ids.index(t) for t in ids}


def test_fan_out_releases_every_dependent(storage):
    root = submit(storage)
    batch = [new_task(depends_on=[root]) for _ in range(4)]
    leaves = [t for t, _ in storage.submit(batch, now=T0)]
    assert storage.get(root)["dependents"] == sorted(leaves)
    run(storage, root)
    assert status(storage, *leaves) == ["pending"] * 4


@pytest.mark.parametrize("size", [1, 6])  # per result, and PostgreSQL's FINISH_CURRENT
def test_completed_in_a_batch_release_dependents(storage, size):
    firsts = [t for t, _ in storage.submit([new_task() for _ in range(size)], now=T0)]
    both = storage.submit([new_task(depends_on=[t]) for t in firsts for _ in range(2)], now=T0)
    seconds = [t for t, _ in both]
    claimed = claim(storage, now=T0 + 1, max_tasks=size)
    items = [
        Result(c["task_id"], c["lease_token"], "w1", "completed", i) for i, c in enumerate(claimed)
    ]
    outcomes = storage.finish(items, now=T0 + 1)
    assert outcomes == ["completed"] * size
    assert status(storage, *seconds) == ["pending"] * (2 * size)


@pytest.mark.parametrize("size", [1, 6])
def test_failed_for_good_in_a_batch_cancels_dependents(storage, size):
    tops = [t for t, _ in storage.submit([new_task(max_retries=0) for _ in range(size)], now=T0)]
    mids = [t for t, _ in storage.submit([new_task(depends_on=[t]) for t in tops], now=T0)]
    lows = [t for t, _ in storage.submit([new_task(depends_on=[t]) for t in mids], now=T0)]
    claimed = claim(storage, now=T0 + 1, max_tasks=size)
    items = [Result(c["task_id"], c["lease_token"], "w1", "failed", error="x") for c in claimed]
    assert storage.finish(items, now=T0 + 1) == ["failed"] * size
    for top, mid, low in zip(tops, mids, lows, strict=True):
        m, lo = storage.get(mid), storage.get(low)
        assert (m["status"], m["error"], m["attempts"]) == (
            "cancelled",
            f"dependency {top} failed",
            0,
        )
        assert (lo["status"], lo["error"], lo["attempts"]) == (
            "cancelled",
            f"dependency {mid} was cancelled",
            0,
        )
        assert m["finished_at"] == T0 + 1 and lo["finished_at"] == T0 + 1


def test_a_failure_with_retries_left_cancels_nothing(storage):
    a, b = chain(storage, 2)
    _, moved = run(storage, a, "failed")
    assert moved == "pending" and storage.status_of(b) == "waiting"


def test_cancel_cascades_transitively(storage):
    a, b, c, d = chain(storage, 4)
    storage.cancel(b, now=T0 + 1)
    assert status(storage, a, b, c, d) == ["pending", "cancelled", "cancelled", "cancelled"]
    got = storage.get(c), storage.get(d)
    assert [(t["error"], t["attempts"]) for t in got] == [
        (f"dependency {b} was cancelled", 0),
        (f"dependency {c} was cancelled", 0),
    ]
    run(storage, a)  # completing a later moves nothing back
    assert status(storage, b, c, d) == ["cancelled"] * 3


def test_cancelling_a_running_task_cascades(storage):
    a, b = chain(storage, 2)
    claim(storage)
    storage.cancel(a, now=T0 + 1)
    assert storage.get(b)["error"] == f"dependency {a} was cancelled"


def test_reaper_expiry_of_the_last_attempt_cascades(storage):
    [(a, _)] = storage.submit([new_task(max_retries=0)], now=T0)
    [(b, _)] = storage.submit([new_task(depends_on=[a])], now=T0)
    [(c, _)] = storage.submit([new_task(depends_on=[b])], now=T0)
    [claimed] = claim(storage)
    report = reap(storage, now=T0 + LEASE + 1)
    assert report.expired == [a]
    assert status(storage, a, b, c) == ["failed", "cancelled", "cancelled"]
    assert storage.get(b)["error"] == f"dependency {a} failed"
    assert storage.get(c)["error"] == f"dependency {b} was cancelled"
    # a late real result completes the task, but its dependents stay cancelled
    late = Result(a, claimed["lease_token"], "w1", "completed", 1)
    assert storage.finish([late], now=T0 + LEASE + 2) == ["completed"]
    assert status(storage, b, c) == ["cancelled", "cancelled"]


def test_dead_worker_on_the_last_attempt_cascades(storage):
    [(a, _)] = storage.submit([new_task(max_retries=0)], now=T0)
    [(b, _)] = storage.submit([new_task(depends_on=[a])], now=T0)
    claim(storage)
    reap(storage, now=T0 + 100, dead_after=10)
    assert status(storage, a, b) == ["failed", "cancelled"]


def test_bulk_cancel_cascades(storage):
    from dispatcher.storage.browse import TaskFilter

    a, b = chain(storage, 2)
    moved = storage.move_matching("cancel", TaskFilter(), now=T0 + 1)
    assert sum(moved.values()) == 1
    assert storage.get(b)["error"] == f"dependency {a} was cancelled"


def test_an_unknown_dependency_stores_nothing(storage):
    before = storage.stats(now=T0, dead_after=FOREVER)["tasks"]
    missing = "0" * 32
    with pytest.raises(UnknownDependency) as refused:
        storage.submit([new_task(), new_task(depends_on=[0]), new_task(depends_on=[missing])], T0)
    assert str(refused.value) == f"tasks[2]: 'depends_on': task {missing} not found"
    assert http_status(refused.value) == 400
    assert storage.stats(now=T0, dead_after=FOREVER)["tasks"] == before


def test_dependencies_already_finished_at_submission(storage):
    done, failed, cancelled = (submit(storage, T0 + i / 10, max_retries=0) for i in range(3))
    run(storage, done)
    run(storage, failed, "failed")
    storage.cancel(cancelled, now=T0 + 1)
    [(ready, _), (f, _), (c, _), (two, _)] = storage.submit(
        [
            new_task(depends_on=[done]),
            new_task(depends_on=[done, failed]),
            new_task(depends_on=[cancelled]),
            new_task(depends_on=[2]),  # on the batch's task stored cancelled
        ],
        now=T0 + 2,
    )
    assert storage.status_of(ready) == "pending"
    got = [storage.get(t) for t in (f, c, two)]
    assert [(t["status"], t["error"], t["attempts"], t["finished_at"]) for t in got] == [
        ("cancelled", f"dependency {failed} failed", 0, T0 + 2),
        ("cancelled", f"dependency {cancelled} was cancelled", 0, T0 + 2),
        ("cancelled", f"dependency {c} was cancelled", 0, T0 + 2),
    ]
    [claimed] = claim(storage, now=T0 + 3)
    assert claimed["task_id"] == ready and claimed["dependencies"] == {done: None}


def test_duplicates_collapse(storage):
    a = submit(storage)
    [(b, _)] = storage.submit([new_task(depends_on=[a, a])], now=T0)
    assert storage.get(b)["depends_on"] == [a]
    run(storage, a)
    assert storage.status_of(b) == "pending"


def test_idempotent_repeat_and_batch_reference(storage):
    a = submit(storage, idempotency_key="first")
    [(same, created), (b, _)] = storage.submit(
        [new_task(idempotency_key="first"), new_task(depends_on=[0])], now=T0
    )
    assert (same, created) == (a, False)
    assert storage.get(b)["depends_on"] == [a] and storage.status_of(b) == "waiting"
    run(storage, a)
    assert storage.status_of(b) == "pending"


def test_waiting_tasks_are_never_claimed(storage):
    a, b = chain(storage, 2)
    storage.submit([new_task(depends_on=[a], delay=0)], now=T0)
    [c] = claim(storage, max_tasks=10)
    assert c["task_id"] == a
    assert claim(storage, max_tasks=10, now=T0 + 10_000) == []


def test_delay_counts_from_submission(storage):
    [(a, _), (b, _)] = storage.submit([new_task(), new_task(depends_on=[0], delay=100)], T0)
    run(storage, a)
    assert storage.status_of(b) == "pending"
    assert claim(storage, now=T0 + 50) == []
    assert claim(storage, now=T0 + 100)[0]["task_id"] == b


def test_retry_of_a_failed_dependency_and_its_dependents(storage):
    [(a, _), (b, _)] = storage.submit([new_task(max_retries=0), new_task(depends_on=[0])], T0)
    run(storage, a, "failed")
    assert storage.status_of(b) == "cancelled"
    with pytest.raises(Conflict):  # its dependency failed: retry that first
        storage.retry(b, now=T0 + 2)
    assert storage.retry(a, now=T0 + 2) == "pending"
    assert storage.status_of(b) == "cancelled"  # retrying a moves nothing else
    assert storage.retry(b, now=T0 + 2) == "waiting"  # waits for a again
    run(storage, a, now=T0 + 3)
    assert storage.status_of(b) == "pending"


def test_cancelling_a_waiting_task(storage):
    a, b, c = chain(storage, 3)
    assert storage.cancel(b, now=T0 + 1) == "cancelled"
    assert status(storage, a, b, c) == ["pending", "cancelled", "cancelled"]
    with pytest.raises(Conflict):
        storage.cancel(b, now=T0 + 1)


def test_retention_deletes_the_edges_of_deleted_tasks(storage):
    a, b = chain(storage, 2)
    run(storage, a)
    run(storage, b)
    report = reap(storage, now=T0 + 10_000, retention_s=100)
    assert report.deleted == 2
    assert storage.dependents(a) == []


# -- races: a submission or a second result in another transaction at the same moment --


def test_a_dependent_submitted_while_its_dependency_completes_never_stays_waiting(storage):
    """Submitting B (depends on A) and completing A at once, many times over: whichever
    commits first, B ends pending (the submission locks A; the result then sees B)."""
    for round_ in range(15):
        now = T0 + round_
        a = submit(storage, now)
        [c] = claim(storage, now=now)
        result = Result(a, c["lease_token"], "w1", "completed", round_)
        with ThreadPoolExecutor(2) as pool:
            finished = pool.submit(storage.finish, [result], now)
            submitted = pool.submit(storage.submit, [new_task(depends_on=[a])], now)
            assert finished.result() == ["completed"]
            [(b, _)] = submitted.result()
        assert storage.status_of(b) == "pending", f"round {round_}: {storage.get(b)}"
        [c] = claim(storage, now=now)  # out of the way of the next round
        assert c["task_id"] == b and c["dependencies"] == {a: round_}
        storage.finish([Result(b, c["lease_token"], "w1", "completed", None)], now)


def test_the_last_two_dependencies_completing_at_once_release_the_fan_in(storage):
    for round_ in range(10):
        now = T0 + round_
        [(a, _), (b, _), (join, _)] = storage.submit(
            [new_task(), new_task(), new_task(depends_on=[0, 1])], now=now
        )
        claimed = {c["task_id"]: c for c in claim(storage, now=now, max_tasks=2)}
        results = [Result(t, claimed[t]["lease_token"], "w1", "completed", t) for t in (a, b)]
        with ThreadPoolExecutor(2) as pool:
            outcomes = list(pool.map(lambda r, now=now: storage.finish([r], now), results))
        assert outcomes == [["completed"], ["completed"]]
        assert storage.status_of(join) == "pending", f"round {round_}: {storage.get(join)}"
        [c] = claim(storage, now=now)
        assert c["task_id"] == join and c["dependencies"] == {a: a, b: b}
        storage.finish([Result(join, c["lease_token"], "w1", "completed", None)], now)


def test_max_pending_counts_the_tasks_stored_pending(storage):
    """MAX_PENDING_TASKS: a dependent submission counts the tasks it stores pending (a
    waiting task counts once it becomes pending, as a delayed one does)."""
    from dispatcher.errors import QueueFull

    storage.max_pending = 2
    a, b = (submit(storage, T0 + i) for i in range(2))
    with pytest.raises(QueueFull):
        storage.submit([new_task(), new_task(depends_on=[0])], now=T0 + 2)
    [(waiting, _)] = storage.submit([new_task(depends_on=[a, b])], now=T0 + 2)
    assert storage.status_of(waiting) == "waiting"
    assert storage.stats(now=T0 + 2, dead_after=FOREVER)["tasks"]["pending"] == 2


def test_an_expired_waiting_task_cancels_what_waits_on_it(storage):
    """Expiry (flow.py) of a task still waiting for its dependencies: it never started,
    so it expires, and what waits on it is cancelled with it, transitively."""
    tasks = [
        new_task(queue="never"),  # no worker serves it: a never completes
        new_task(depends_on=[0], expires_in=5),
        new_task(depends_on=[1]),
        new_task(depends_on=[2]),
    ]
    a, b, c, d = [task_id for task_id, _ in storage.submit(tasks, now=T0)]
    assert status(storage, a, b, c, d) == ["pending", "waiting", "waiting", "waiting"]
    report = storage.reap(now=T0 + 6, dead_after=FOREVER, retention_s=0)
    assert len(report.unstarted) == 1
    assert status(storage, a, b, c, d) == ["pending", "cancelled", "cancelled", "cancelled"]
    assert storage.get(b)["error"] == "expired: not started within 5 s"
    assert storage.get(c)["error"] == f"dependency {b} was cancelled"
    assert storage.get(d)["error"] == f"dependency {c} was cancelled"
    assert [storage.get(t)["attempts"] for t in (b, c, d)] == [0, 0, 0]
    assert storage.stats(now=T0 + 6, dead_after=FOREVER)["tasks"]["waiting"] == 0
