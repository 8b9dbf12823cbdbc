"""Crashes with real processes (issue 6, "Promises to prove"): kill -9 of the dispatcher
while clients submit and while workers post results, kill -9 of a worker at each step of
a task, and a dispatcher outage longer than the lease.

Kill moments are random (TEST_SEED=<n> replays a run; the seed is printed with a
failure). Every wait polls with a deadline and says what it saw; nothing asserts a time.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from harness import (
    SeededRandom,
    all_tasks,
    fetch_tasks,
    group_connections,
    pause,
    resume,
    wait_for,
    wait_started,
)

from common.client import ApiError, Client, DispatcherUnreachable

# Quotes, a semicolon, SQL and JSON escapes, non-ASCII: stored and returned byte for byte.
TRICKY = "x?q=%22q%22&s='1';--/*\"é☃😀\\u0000*/"


def _canonical(payload: dict) -> bytes:
    return json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()


# -- dispatcher crash during submission -------------------------------------------------


@dataclass
class Sent:
    payload: dict
    keyed: bool
    acked: set[str] = field(default_factory=set)  # task ids of the 2xx answers
    unanswered: int = 0


class Ledger:
    """What the clients sent and what they were told, across dispatcher crashes."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sent: dict[str, Sent] = {}  # unique marker -> what was sent under it
        self.resend: dict[str, list[list[str]]] = {"single": [], "batch": []}  # keyed, lost
        self.lost_batches: list[list[str]] = []  # unkeyed batches that got no answer
        self.acked = 0
        self.errors: list[str] = []

    def new(self, prefix: str, size: int, keyed: bool) -> list[str]:
        markers = [f"{prefix}-{i}" for i in range(size)]
        with self.lock:
            for m in markers:
                self.sent[m] = Sent(
                    {"url": f"https://example.test/{m}/{TRICKY}", "method": "POST"}, keyed
                )
        return markers

    def item(self, marker: str) -> dict:
        sent = self.sent[marker]
        item = {"type": "http_request", "payload": sent.payload}
        if sent.keyed:
            item["idempotency_key"] = f"key-{marker}"
        return item

    def take_resend(self, kind: str) -> list[str] | None:
        with self.lock:
            return self.resend[kind].pop() if self.resend[kind] else None

    def answered(self, markers: list[str], ids: list[str]) -> None:
        with self.lock:
            for m, task_id in zip(markers, ids, strict=True):
                self.sent[m].acked.add(task_id)
            self.acked += len(markers)

    def no_answer(self, kind: str, markers: list[str]) -> None:
        with self.lock:
            for m in markers:
                self.sent[m].unanswered += 1
            if self.sent[markers[0]].keyed:
                self.resend[kind].append(markers)  # a careful client sends it again
            else:
                self.lost_batches.append(markers)


def _submitter(url: str, ledger: Ledger, kind: str, round_no: int, stop: threading.Event, rng):
    """Submit until the dispatcher stops answering: single tasks (mostly with an
    idempotency key) or batches (keyed and unkeyed); what got no answer and has keys is
    sent again in the next round."""
    n = 0
    with Client(url) as client:
        while not stop.is_set():
            markers = ledger.take_resend(kind)
            if markers is None:
                n += 1
                size = 1 if kind == "single" else rng.randint(2, 40)
                keyed = n % 3 != 0
                markers = ledger.new(f"{kind}{round_no}.{n}", size, keyed)
            items = [ledger.item(m) for m in markers]
            try:
                if kind == "single":
                    ids = [client.submit_task(items[0])]
                else:
                    ids = client.submit_tasks(items)
            except DispatcherUnreachable as exc:
                if "HTTP 5" in str(exc):  # an answer, and a wrong one: not the crash
                    ledger.errors.append(str(exc))
                ledger.no_answer(kind, markers)
                stop.wait()  # the dispatcher is gone: this round is over
                return
            except ApiError as exc:
                ledger.errors.append(str(exc))
                return
            ledger.answered(markers, ids)


def test_kill_9_of_the_dispatcher_during_submission_loses_no_acknowledged_task(cluster):
    rng = SeededRandom("submission crash")
    ledger = Ledger()
    rounds = 3
    for round_no in range(rounds):
        dispatcher = cluster.start_dispatcher(f"dispatcher-{round_no}")
        stop = threading.Event()
        threads = [
            threading.Thread(
                target=_submitter,
                args=(
                    cluster.url,
                    ledger,
                    kind,
                    round_no,
                    stop,
                    random.Random(rng.getrandbits(32)),
                ),
            )
            for kind in ("single", "batch")
        ]
        for t in threads:
            t.start()
        target = ledger.acked + rng.randint(20, 300)  # a random moment of the stream
        wait_for(
            lambda target=target: ledger.acked >= target or ledger.errors,
            60,
            lambda: f"seed {rng.seed_value}: {ledger.acked} acknowledged, errors {ledger.errors}",
        )
        dispatcher.kill9()
        stop.set()
        for t in threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in threads), "a submitter hung after the kill"

    cluster.start_dispatcher("dispatcher-last")  # the same database file, once more
    for kind, groups in ledger.resend.items():  # what got no answer goes again, same keys
        for markers in groups:
            items = [ledger.item(m) for m in markers]
            if kind == "single":
                ids = [cluster.client.submit_task(items[0])]
            else:
                ids = cluster.client.submit_tasks(items)
            ledger.answered(markers, ids)

    stored = all_tasks(cluster.client)
    by_marker: dict[str, list[dict]] = defaultdict(list)
    for task in stored:
        by_marker[task["payload"]["url"].split("/")[3]].append(task)
    problems = [f"{m}: unknown task stored" for m in by_marker if m not in ledger.sent]
    problems += [f"{m}: stored {len(ts)} times" for m, ts in by_marker.items() if len(ts) > 1]
    for marker, sent in ledger.sent.items():
        found = by_marker.get(marker, [])
        if len(sent.acked) > 1:
            problems.append(f"{marker}: answered with different ids {sent.acked}")
        if sent.acked and not found:
            problems.append(f"{marker}: answered {sent.acked}, not stored")
        if sent.acked and found and found[0]["task_id"] not in sent.acked:
            problems.append(f"{marker}: answered {sent.acked}, stored as {found[0]['task_id']}")
        if found and _canonical(found[0]["payload"]) != _canonical(sent.payload):
            problems.append(f"{marker}: payload {found[0]['payload']!r} != {sent.payload!r}")
    for markers in ledger.lost_batches:  # a batch is one transaction: all of it or none
        present = {m in by_marker for m in markers}
        if len(present) > 1:
            problems.append(f"batch {markers[0]}..: only part of it stored")
    lost = [m for m, s in ledger.sent.items() if s.unanswered and not s.keyed]
    summary = (
        f"seed {rng.seed_value}: {len(ledger.sent)} sent, {ledger.acked} acknowledged, "
        f"{sum(s.unanswered for s in ledger.sent.values())} unanswered "
        f"({sum(m in by_marker for m in lost)} of {len(lost)} unkeyed ones stored), "
        f"{len(stored)} stored"
    )
    print(summary)
    assert not ledger.errors, f"{summary}: {ledger.errors}"
    assert not problems, f"{summary}:\n" + "\n".join(problems[:20])
    assert all(s.acked for s in ledger.sent.values() if s.keyed), summary


# -- dispatcher crash while workers post results -----------------------------------------


def _expected(task: dict):
    """The one right result of a task, from its input alone."""
    payload = task["payload"]
    if task["type"] == "sleep":
        return {"slept": payload["duration"]}
    value = payload["value"]
    return {"operation": "double", "value": value, "result": 2 * value}


def _cache_entries(cluster, worker_id: str) -> list[str]:
    """The task ids of a worker's complete cache entries (not the temporary files)."""
    names = (p.name for p in (cluster.tmp / "cache" / worker_id).glob("*.json"))
    return [name.split(".")[0] for name in names if not name.startswith(".tmp-")]


def _cached(cluster, worker_ids) -> int:
    return sum(len(_cache_entries(cluster, w)) for w in worker_ids)


def test_kill_9_of_the_dispatcher_while_workers_post_results(make_cluster):
    """Two crashes while results stream in. The first outage is short. The second
    outlasts the leases, and a worker holding cached results stays frozen until the other
    has run those tasks again: its late results must then be refused, not overwrite the
    completed tasks."""
    rng = SeededRandom("results crash")
    cluster = make_cluster(WORKER_CONCURRENCY="2")
    dispatcher = cluster.start_dispatcher()
    items = [
        {"type": "compute", "payload": {"operation": "double", "value": 10**12 + i}}
        for i in range(150)
    ] + [{"type": "sleep", "payload": {"duration": 0.05 + i / 10000}} for i in range(300)]
    rng.shuffle(items)
    ids = cluster.client.submit_tasks(items)
    workers = ["worker-1", "worker-2"]
    worker_1 = cluster.start_worker(workers[0])
    worker_2 = cluster.start_worker(workers[1])

    def crash_at_random(low: int, high: int) -> float:
        """kill -9 of the dispatcher once low..high more tasks have completed."""
        target = cluster.client.stats()["tasks"]["completed"] + rng.randint(low, high)
        wait_for(
            lambda: cluster.client.stats()["tasks"]["completed"] >= target,
            60,
            lambda: f"seed {rng.seed_value}: {cluster.client.stats()['tasks']}\n{cluster.logs()}",
        )
        dispatcher.kill9()
        return time.time()

    crash_at_random(30, 100)
    wait_for(  # the workers go on, and keep what they cannot deliver
        lambda: _cached(cluster, workers),
        30,
        lambda: f"seed {rng.seed_value}: nothing cached\n{cluster.logs()}",
    )
    dispatcher = cluster.start_dispatcher("dispatcher-1")
    wait_for(  # every cached result delivered before the next crash
        lambda: not _cached(cluster, workers),
        30,
        lambda: f"seed {rng.seed_value}: caches not emptied\n{cluster.logs()}",
    )

    down_since = crash_at_random(20, 60)
    holder = wait_for(  # a worker holding cached results is frozen with them
        lambda: next((w for w in workers if _cache_entries(cluster, w)), None),
        30,
        lambda: f"seed {rng.seed_value}: nothing cached\n{cluster.logs()}",
    )
    frozen_proc = worker_1 if holder == workers[0] else worker_2
    pause(frozen_proc)
    try:
        frozen = sorted(set(_cache_entries(cluster, holder)))
        lease = float(cluster.settings["LEASE_SECONDS"])
        wait_for(lambda: time.time() > down_since + lease + 0.5, 30, lambda: "clock")
        dispatcher = cluster.start_dispatcher("dispatcher-2")
        cluster.wait_all_finished(frozen, 60)  # run again by the other worker (or delivered)
    finally:
        resume(frozen_proc)

    tasks = fetch_tasks(cluster.url, [t["task_id"] for t in cluster.wait_all_finished(ids, 90)])
    problems = []
    for task_id, item in zip(ids, items, strict=True):
        task = tasks[task_id]
        outcomes = [a["outcome"] for a in task["history"]]
        counted = [o for o in outcomes if o != "released"]
        if task["status"] != "completed" or outcomes.count("completed") != 1:
            problems.append(f"{task_id}: {task['status']}, history {outcomes}")
        if task["result"] != _expected(item):  # nobody else's result, nothing overwritten
            problems.append(f"{task_id}: result {task['result']} for {item}")
        if not 1 <= task["attempts"] == len(counted) <= task["max_retries"] + 1:
            problems.append(f"{task_id}: {task['attempts']} attempts, history {outcomes}")
    logs = "\n".join((cluster.tmp / f"{w}.log").read_text() for w in workers)
    via_cache = sum(
        "cached result of task" in line and "delivered" in line for line in logs.splitlines()
    )
    attempts = Counter(t["attempts"] for t in tasks.values())
    summary = f"seed {rng.seed_value}: {via_cache} results via the cache, attempts {attempts}"
    print(summary)
    assert not problems, f"{summary}:\n" + "\n".join(problems[:20])
    assert via_cache, f"{summary}: no result went through a worker's cache"
    wait_for(
        lambda: not _cached(cluster, workers),
        30,
        lambda: f"caches not emptied: {_cached(cluster, workers)} entries left",
    )
    # what the other worker ran again while the holder was frozen: the holder's late
    # results for those were refused (the completed result stands)
    rerun = [t for t in frozen if tasks[t]["worker_id"] != holder]
    log = frozen_proc.log_path.read_text()
    late = [t for t in rerun if f"cached result of task {t} refused worker={holder}" not in log]
    print(f"{len(frozen)} results frozen in {holder}'s cache, {len(rerun)} run again")
    assert not late, f"{summary}: late results not refused: {late}"


# -- worker crash at each step of a task ------------------------------------------------


def test_kill_9_of_a_worker_while_claiming_running_and_posting(make_cluster):
    """Leases far beyond the test's deadline: only dead-worker detection (WORKER_DEAD_AFTER,
    then one reap sweep) can take the tasks back from the three workers killed here, one
    per step: in a held long poll, in a running task, in the post of its result."""
    cluster = make_cluster(LEASE_SECONDS="300", WORKER_POLL_INTERVAL="20")
    dispatcher = cluster.start_dispatcher()
    port = int(cluster.settings["DISPATCHER_PORT"])

    # claiming: the long poll is held (fetcher and heartbeat connections both open)
    claiming = cluster.start_worker("w-claim", "--queues", "claim")
    cluster.wait_worker_alive(claiming)
    wait_for(
        lambda: group_connections(claiming.pid, port) >= 2,
        30,
        lambda: f"no long poll held by w-claim:\n{claiming.log()}",
    )
    claiming.kill9()
    t_claim = cluster.submit("sleep", {"duration": 0.2}, queue="claim")
    # the poll the dead worker left behind takes the task: a claim nobody will run
    zombie = cluster.wait_status(t_claim, "in_progress")
    assert zombie["worker_id"] == "w-claim"

    # running
    running = cluster.start_worker("w-run", "--queues", "run")
    t_run = cluster.submit("sleep", {"duration": 3}, queue="run")
    cluster.wait_status(t_run, "in_progress")
    running.kill9()

    # posting: the dispatcher is frozen while the worker sends its result, and the worker
    # dies before any answer
    posting = cluster.start_worker("w-post", "--queues", "post")
    cluster.wait_worker_alive(posting)
    t_post = cluster.submit("sleep", {"duration": 1.5}, queue="post")
    # started by the worker, not only claimed: a dispatcher frozen between committing the
    # claim and answering it would leave the worker without the task
    wait_for(
        lambda: f"task {t_post} started" in posting.log(),
        30,
        lambda: f"w-post never started {t_post}:\n{posting.log()}",
    )
    pause(dispatcher)
    try:
        wait_for(
            lambda: f"task {t_post} completed" in posting.log(),
            30,
            lambda: f"w-post never finished {t_post}:\n{posting.log()}",
        )
        wait_for(  # the reporter's connection is open: its request is on the wire
            lambda: group_connections(posting.pid, port) >= 3,
            30,
            lambda: f"w-post never connected to post:\n{posting.log()}",
        )
        posting.kill9()
    finally:
        resume(dispatcher)

    # nothing stays in progress past WORKER_DEAD_AFTER + one reap sweep (300 s leases)
    wait_for(
        lambda: cluster.client.stats()["tasks"]["in_progress"] == 0,
        30,
        lambda: f"still in progress: {cluster.client.stats()['tasks']}\n{cluster.logs()}",
    )
    cluster.start_worker("w-rescue", "--queues", "claim,run,post")
    done = {t["task_id"]: t for t in cluster.wait_all_finished([t_claim, t_run, t_post], 60)}
    for task_id in (t_claim, t_run, t_post):
        print(task_id, done[task_id]["status"], done[task_id]["history"])
    assert all(t["status"] == "completed" for t in done.values()), done
    assert [a["outcome"] for a in done[t_claim]["history"]] == ["worker dead", "completed"]
    assert [a["outcome"] for a in done[t_run]["history"]] == ["worker dead", "completed"]
    assert done[t_run]["result"] == {"slept": 3}
    assert done[t_post]["result"] == {"slept": 1.5}
    assert [a["outcome"] for a in done[t_post]["history"]].count("completed") == 1


def test_kill_9_of_busy_workers_at_random_moments_loses_no_task(make_cluster):
    """Quick tasks stream through two workers (claims of many, chunks, batched results);
    one of them is killed at random moments, three times, and a new one takes its place.
    Whatever it held (prefetched, running, being posted) comes back and completes."""
    rng = SeededRandom("busy worker kills")
    cluster = make_cluster(LEASE_SECONDS="300", WORKER_CONCURRENCY="2")
    cluster.start_dispatcher()
    items = [
        {"type": "compute", "payload": {"operation": "double", "value": i}} for i in range(500)
    ] + [{"type": "sleep", "payload": {"duration": 0.005 + i / 50000}} for i in range(500)]
    rng.shuffle(items)
    ids = cluster.client.submit_tasks(items)
    steady = cluster.start_worker("steady")
    victim = cluster.start_worker("victim-0")
    for n, target in enumerate(sorted(rng.sample(range(50, 900), 3))):
        wait_for(
            lambda target=target: cluster.client.stats()["tasks"]["completed"] >= target,
            60,
            lambda: f"seed {rng.seed_value}: {cluster.client.stats()['tasks']}\n{cluster.logs()}",
        )
        victim.kill9()
        victim = cluster.start_worker(f"victim-{n + 1}")

    finished = cluster.wait_all_finished(ids, 90)
    tasks = fetch_tasks(cluster.url, [t["task_id"] for t in finished])
    problems = []
    for task_id, item in zip(ids, items, strict=True):
        task = tasks[task_id]
        outcomes = [a["outcome"] for a in task["history"]]
        if task["status"] != "completed" or outcomes.count("completed") != 1:
            problems.append(f"{task_id}: {task['status']}, history {outcomes}")
        if task["result"] != _expected(item):
            problems.append(f"{task_id}: result {task['result']} for {item}")
        if any(o not in ("completed", "worker dead", "released", "superseded") for o in outcomes):
            problems.append(f"{task_id}: history {outcomes}")
    rescued = sum("worker dead" in str(t["history"]) for t in tasks.values())
    summary = f"seed {rng.seed_value}: {rescued} tasks rescued from killed workers"
    print(summary)
    assert steady.alive(), steady.log()
    assert not problems, f"{summary}:\n" + "\n".join(problems[:20])


def test_a_worker_killed_during_an_outage_sends_its_cache_when_it_starts_again(make_cluster):
    """Results cached on disk outlive the worker process: killed -9 while the dispatcher
    is down, the worker delivers them at start-up (before it claims anything)."""
    cluster = make_cluster(LEASE_SECONDS="300", WORKER_CONCURRENCY="2")
    dispatcher = cluster.start_dispatcher()
    worker = cluster.start_worker("worker-1")
    ids = [cluster.submit("sleep", {"duration": 0.5 + i / 10}) for i in range(2)]
    for task_id in ids:
        cluster.wait_status(task_id, "in_progress")
    wait_started(worker, ids[0])  # the claim was answered, not only committed
    dispatcher.kill9()
    cache = cluster.tmp / "cache" / "worker-1"
    wait_for(lambda: len(_cache_entries(cluster, "worker-1")) == 2, 30, lambda: worker.log())
    worker.kill9()

    cluster.start_dispatcher("dispatcher-2")
    again = cluster.start_worker("worker-1")  # same id, same cache directory
    for task_id, done in zip(ids, cluster.wait_all_finished(ids, 30), strict=True):
        assert done["status"] == "completed", done
        assert done["result"] == {"slept": done["payload"]["duration"]}
        assert [(a["worker_id"], a["outcome"]) for a in done["history"]] == [
            ("worker-1", "completed")
        ], done["history"]
        assert f"cached result of task {task_id} delivered" in again.log()
    assert not list(cache.iterdir())  # nor any temp file a crash left behind


# -- an outage longer than the lease ------------------------------------------------------


def test_an_outage_longer_than_the_lease_the_first_finished_result_wins(make_cluster):
    """Worker A finishes two tasks while the dispatcher is down for longer than their
    leases, and caches the results. A is frozen while the dispatcher comes back: the
    reaper fails one task (no retries left) and requeues the other, which worker B claims
    and runs again. A wakes: its re-sent results win (they finished first), and B lets go
    of its copy. Worker C's cache keeps entries for 1 s only: its result is dropped, logged,
    and never reaches its task."""
    cluster = make_cluster(LEASE_SECONDS="2", WORKER_CONCURRENCY="2")
    dispatcher = cluster.start_dispatcher()
    worker_a = cluster.start_worker("worker-a")
    worker_c = cluster.start_worker("worker-c", "--queues", "ttl", CACHE_TTL_SECONDS="1")
    t1 = cluster.submit("sleep", {"duration": 1}, max_retries=0)  # expiry fails it
    # expiry requeues it; B's run of it must outlast A's re-send after its pause (4 s: a
    # CI run on a busy machine saw B finish first at 2.5 s)
    t2 = cluster.submit("sleep", {"duration": 4}, max_retries=3)
    t3 = cluster.submit("sleep", {"duration": 1}, max_retries=0, queue="ttl")
    for task_id in (t1, t2):
        assert cluster.wait_status(task_id, "in_progress")["worker_id"] == "worker-a"
    assert cluster.wait_status(t3, "in_progress")["worker_id"] == "worker-c"
    dispatcher.kill9()
    down_since = time.time()

    cache_a = cluster.tmp / "cache" / "worker-a"
    wait_for(
        lambda: len(_cache_entries(cluster, "worker-a")) == 2,
        30,
        lambda: f"worker A cached {list(cache_a.iterdir())}:\n{worker_a.log()}",
    )
    dropped = f"cached result of task {t3} dropped worker=worker-c: older than CACHE_TTL_SECONDS"
    # the whole log: C's failed heartbeats (every 0.3 s) push the line out of a short tail
    wait_for(lambda: dropped in worker_c.log(100_000), 30, lambda: worker_c.log())
    assert not _cache_entries(cluster, "worker-c")
    worker_b = cluster.start_worker("worker-b")  # starts during the outage
    wait_for(lambda: "worker worker-b starting" in worker_b.log(), 30, lambda: worker_b.log())
    wait_for(  # down for longer than the lease: A's and C's leases are past
        lambda: time.time() > down_since + 2 * float(cluster.settings["LEASE_SECONDS"]),
        30,
        lambda: "the clock did not move",
    )

    pause(worker_a)  # A's re-sends wait until B holds the second task
    try:
        cluster.start_dispatcher("dispatcher-2")
        expired = cluster.wait_status(t1, "failed")
        assert expired["error"] == "lease expired"
        assert cluster.wait_status(t2, "in_progress")["worker_id"] == "worker-b"
    finally:
        resume(worker_a)

    done1 = cluster.wait_status(t1, "completed", timeout=30)  # the late real result
    done2 = cluster.wait_status(t2, "completed", timeout=30)
    for done in (done1, done2):  # A finished first: its result stands
        assert done["worker_id"] == "worker-a", (done, worker_a.log(), worker_b.log())
        assert done["result"] == {"slept": done["payload"]["duration"]}
    assert [(a["worker_id"], a["outcome"]) for a in done1["history"]] == [("worker-a", "completed")]
    assert [(a["worker_id"], a["outcome"]) for a in done2["history"]] == [
        ("worker-a", "completed"),
        ("worker-b", "superseded"),
    ]
    for task_id in (t1, t2):
        assert f"cached result of task {task_id} delivered worker=worker-a" in worker_a.log(200)
    wait_for(lambda: not _cache_entries(cluster, "worker-a"), 30, lambda: worker_a.log())
    wait_for(  # B lets go of its copy (told to abandon it, or its result refused)
        lambda: (
            f"task {t2} abandoned" in worker_b.log(200)
            or f"result of task {t2} refused" in worker_b.log(200)
        ),
        30,
        lambda: worker_b.log(),
    )
    assert cluster.task(t2)["worker_id"] == "worker-a"

    # C is back in touch (heartbeats, polls) and has nothing left to send: T3 keeps the
    # failure its lease expiry gave it, never the dropped result
    cluster.wait_worker_alive(worker_c)
    failed = cluster.wait_status(t3, "failed", timeout=30)
    assert failed["error"] == "lease expired" and failed["result"] is None, failed
    assert f"task {t3} delivered" not in worker_c.log(200)
    assert not _cache_entries(cluster, "worker-c")
