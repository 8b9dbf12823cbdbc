"""A state-machine property test of the storage layer (hypothesis RuleBasedStateMachine).

Random sequences of submit (single and batch, priorities, delays, retries, idempotency
keys), schedules created, replaced (from fresh and stale reads), fired (from fresh and
stale reads: only the first firing of a tick creates its tasks, one per tick whose key is
free) and deleted, claim (several workers and instances, max_tasks, queues), heartbeat (with and
without task_ids), results (by the live lease, a stale one, another task's, a forged
one, several in one batch), release, cancel, retry, worker takeover by a new instance,
and reap (expired leases, dead workers, retention), while the test moves the clock.

The test keeps a model of every task and worker and predicts each operation's answer
and each row it changes from the SPEC's rules; after every step it compares the model
with what storage says. On top of that it checks the SPEC's invariants directly:

- a task has at most one live lease: only `pending` tasks are claimed; an in-progress
  task has exactly one open attempt; once a result finished a task, a result under any
  other lease is refused (LeaseConflict), so storage accepts a finish from one token;
- a completed task's result never changes;
- the status counts of stats() add up to the tasks submitted minus those deleted by
  retention;
- attempts never exceed max_retries + 1;
- payloads and results come back exactly as they went in (key order, int vs float,
  quotes, NUL bytes, lone surrogates).

Every example gets a fresh database. `KINDS` lists the backends it runs against.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from common.config import Config
from dispatcher.errors import (
    Conflict,
    LeaseConflict,
    ScheduleNotFound,
    TaskNotFound,
    UnknownDependency,
    WorkerTakenOver,
)
from dispatcher.storage import (
    FINISHED,
    STATUSES,
    Moved,
    NewTask,
    Result,
    Storage,
    open_storage,
)
from dispatcher.storage.schedules import tick_key
from dispatcher.storage.sqlite import TOUCH_EVERY_S
from tests.pg import fresh_schema_url

KINDS = ["sqlite", "postgres"]

T0 = 1_700_000_000.0
BACKOFF_BASE = 4.0
BACKOFF_CAP = 20.0
FOREVER = 10.0**9  # a dead_after no worker reaches
EXPIRED_ERROR = "lease expired"  # the SPEC: "a worker crash reads 'lease expired'"
RETIRED_KEEP_S = 86_400.0  # a retired instance id is refused for a day
MAX_TASKS = 14  # submissions stop here, so each step's full comparison stays cheap

SETTINGS = settings(
    max_examples=150,
    stateful_step_count=30,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the project; a failure prints its steps
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
# a round trip to a server costs ~10x a SQLite read: fewer examples keep it as short
EXAMPLES = {"sqlite": 100, "postgres": 40}

# -- values full of what breaks hand-built SQL and lossy codecs ------------------------

NASTY = [
    "'",
    '"',
    ";",
    "'; DROP TABLE tasks; --",
    '"); DELETE FROM tasks; --',
    "\x00",
    "a\x00b",
    "\\",
    "%_",
    "e\u0301",  # combining accent
    "\u202eRTL\u202c",
    "שלום",
    "🙂👍🏽",
    "",
]
# ids, names and keys hold no NUL (the API refuses it: PostgreSQL text cannot hold one)
WORKERS = ("w1", "w2", "w'; DROP TABLE workers; --🙂")
QUEUES = ("default", "q'\"; --", "\\q\u202e")
KEYS = ("k1", "k2", "k'; DROP TABLE tasks; --", "k\\🙂")
LEASES = (10.0, 30.0)

# text that SQL text columns can hold (no lone surrogates: the HTTP layer refuses them);
# error messages, which may hold NUL characters
text = st.one_of(
    st.sampled_from(NASTY),
    st.lists(st.sampled_from(NASTY) | st.text(max_size=3), max_size=3).map("".join),
)
# text inside JSON may also hold lone surrogates: JSON escapes them
json_text = text | st.text(st.characters(categories=["Cs", "Lu", "Nd"]), max_size=3)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)  # past 64 bits: stays exact
    | st.floats(allow_nan=False, allow_infinity=False)
    | json_text
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(json_text, inner, max_size=3),
    max_leaves=6,
)
payloads = st.dictionaries(json_text, json_values, max_size=4)
new_tasks = st.builds(
    NewTask,
    type=st.sampled_from(["echo", "t'; DROP TABLE tasks; --", "🙂\\"]),
    payload=payloads,
    queue=st.sampled_from(QUEUES[:2]) | st.sampled_from(QUEUES),
    priority=st.integers(-2, 2),
    delay=st.sampled_from([0.0, 0.0, 0.0, 5.0, 50.0]),
    max_retries=st.integers(0, 2),
    timeout=st.sampled_from([1.0, 300.0]),
    idempotency_key=st.none() | st.none() | st.sampled_from(KEYS),
)


def canon(value) -> str:
    """JSON text that tells apart what == does not: 1 / 1.0 / True, key order."""
    return json.dumps(value)


@contextmanager
def database_url(kind: str, tmp: Path) -> Iterator[str]:
    """A fresh, empty database of `kind`: a file under `tmp`, or a PostgreSQL schema of
    its own (tests/pg.py: skipped when no server is reachable, failed on CI)."""
    if kind == "sqlite":
        tmp.mkdir(parents=True, exist_ok=True)
        yield f"sqlite:///{tmp}/tasks.db"
        shutil.rmtree(tmp, ignore_errors=True)
    elif kind == "postgres":
        with fresh_schema_url() as url:
            yield url
    else:
        raise ValueError(f"no test database for {kind!r}")


def make_storage(kind: str, tmp: Path) -> tuple[Storage, Callable[[], None]]:
    """Storage on a fresh database, and the function that closes it and drops the database."""
    stack = ExitStack()
    url = stack.enter_context(database_url(kind, tmp))
    config = Config(
        database_url=url, retry_backoff_base=BACKOFF_BASE, retry_backoff_cap=BACKOFF_CAP
    )
    try:
        storage = open_storage(config)
    except BaseException:
        stack.close()
        raise
    stack.callback(storage.close)  # runs first: a schema is dropped after its connections
    return storage, stack.close


def stored_error(kind: str, error: str) -> str:
    """An error message as the backend keeps it: PostgreSQL text holds no NUL, so it
    stores U+FFFD there (dispatcher/storage/postgres.py)."""
    return error.replace("\x00", "\ufffd") if kind == "postgres" else error


# -- the model ------------------------------------------------------------------------

# what the model predicts of each task, field by field, after every step
MODEL_FIELDS = (
    "status",
    "attempts",
    "worker_id",
    "error",
    "run_at",
    "started_at",
    "finished_at",
    "type",
    "queue",
    "priority",
    "max_retries",
    "created_at",
)


@dataclass
class Task:
    type: str
    queue: str
    payload: str  # canon() of the payload
    priority: int
    max_retries: int
    timeout: float
    created_at: float
    run_at: float
    status: str = "pending"
    attempts: int = 0
    lease: str | None = None  # the live lease token, while in progress
    expires: float | None = None
    worker_id: str | None = None
    result: str | None = None  # canon() of the stored result
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    finished_lease: str | None = None  # the lease whose result finished it
    by_expiry: bool = False  # failed only because a lease expired
    tokens: list[str] = field(default_factory=list)  # every lease it was issued

    @classmethod
    def submitted(cls, item: NewTask, now: float) -> Task:
        """The model of a task stored from `item` at `now` (ready at its delay's end)."""
        return cls(
            type=item.type,
            queue=item.queue,
            payload=canon(item.payload),
            priority=item.priority,
            max_retries=item.max_retries,
            timeout=item.timeout,
            created_at=now,
            run_at=now + item.delay,
        )


@dataclass
class Worker:
    instance: str
    alive: bool
    last_heartbeat: float
    retired: dict[str, float] = field(default_factory=dict)  # instance -> retired at


@dataclass
class ScheduleModel:
    next_run_at: float | None
    version: float  # its updated_at
    enabled: bool
    last_task_id: str | None = None


# periodic tasks: storage stores a definition as given, and knows no cron
SCHEDULES = ("tick", "t'; DROP TABLE schedules; --🙂")
SCHEDULE = {"cron": None, "every": 10, "timezone": "UTC", "catch_up": "all", "task": {}}
SCHEDULE_TASK = NewTask("echo", {"tick": "'; --"}, max_retries=1, timeout=300.0)


class StorageMachine(RuleBasedStateMachine):
    def __init__(self, kind: str, storage: Storage, cleanup: Callable[[], None]):
        super().__init__()
        self.kind = kind
        self.storage = storage
        self.cleanup = cleanup
        self.now = T0
        # Draws pick from lists in an order that never depends on the random ids and
        # tokens storage makes, so hypothesis can replay and shrink an example.
        self.tasks: dict[str, Task] = {}  # in order of submission
        self.deleted: dict[str, None] = {}  # in order of deletion
        self.keys: dict[str, str] = {}  # idempotency key -> task id
        self.tokens: dict[str, str] = {}  # every lease token issued -> its task, in order
        self.workers: dict[str, Worker] = {}
        self.completed: dict[str, str] = {}  # task id -> the result it completed with
        self.instance_numbers = itertools.count(1)
        self.checked: dict[str, tuple] = {}  # task id -> the model state last compared
        self.history: dict[str, list[dict]] = {}  # task id -> its history then
        self.schedules: dict[str, ScheduleModel] = {}

    def teardown(self) -> None:
        self.cleanup()

    # -- helpers --------------------------------------------------------------------

    def all_ids(self) -> list[str]:
        return [*self.tasks, *self.deleted, "no-such-task", "'; DROP TABLE tasks; --"]

    def draw_task_id(self, data) -> str:
        live = list(self.tasks)
        if live:
            return data.draw(st.sampled_from(live) | st.sampled_from(self.all_ids()))
        return data.draw(st.sampled_from(self.all_ids()))

    def draw_instance(self, data, worker_id: str) -> str:
        w = self.workers.get(worker_id)
        choices = ["", f"{worker_id}#0"] if w is None else [w.instance, w.instance, ""]
        if w is not None and w.retired:
            choices.append(data.draw(st.sampled_from(sorted(w.retired))))
        return data.draw(st.sampled_from(choices))

    def retired_instance(self, instance: str) -> bool:
        return bool(instance) and any(instance in w.retired for w in self.workers.values())

    def touch(self, worker_id: str, instance: str) -> None:
        """The model of registering or refreshing a worker (a new instance takes over)."""
        w = self.workers.get(worker_id)
        if w is None:
            self.workers[worker_id] = Worker(instance, True, self.now)
            return
        if instance and w.instance != instance:
            if w.instance:
                w.retired[w.instance] = self.now
            # in id order, as storage rescues them (a cascade names the first it ended)
            for _, task in sorted(self.tasks.items()):
                if task.status == "in_progress" and task.worker_id == worker_id:
                    self.expire(task)
            w.instance = instance
        w.alive = True
        w.last_heartbeat = self.now

    def idle_poll(self, worker_id: str, instance: str, queues) -> bool:
        """SQLite's claim that writes nothing (TOUCH_EVERY_S): nothing ready, and the worker
        is the live instance, seen less than TOUCH_EVERY_S ago."""
        if self.kind != "sqlite":
            return False
        w = self.workers.get(worker_id)
        ready = any(
            t.status == "pending" and t.queue in queues and t.run_at <= self.now
            for t in self.tasks.values()
        )
        return (
            not ready
            and w is not None
            and w.alive
            and (not instance or w.instance == instance)
            and self.now - w.last_heartbeat < TOUCH_EVERY_S
        )

    def expire(self, task: Task) -> None:
        """A lease ends without a result: back to pending, or failed on the last attempt."""
        task.error = EXPIRED_ERROR
        task.lease = task.expires = None
        if task.attempts > task.max_retries:
            task.status = "failed"
            task.finished_at = self.now
            task.by_expiry = True
        else:
            task.status = "pending"
            task.run_at = self.now
            task.worker_id = None
        self.settle()

    def settle(self) -> None:
        """What the tasks waiting on others do after a step (DependencyMachine)."""

    def retried_status(self, task_id: str) -> str | None:
        """The status a retry gives a failed or cancelled task (None: Conflict)."""
        return "pending"

    def finish_task(self, task: Task, status: str, token: str, worker_id: str) -> None:
        task.status = status
        task.finished_at = self.now
        task.finished_lease = token
        task.lease = task.expires = None
        task.by_expiry = False
        task.worker_id = worker_id

    # -- rules ----------------------------------------------------------------------

    @rule(dt=st.sampled_from([0.0, 1.0, 2.0, 5.0, 9.0, 10.0, 11.0, 25.0, 31.0, 100.0, 90_000.0]))
    def tick(self, dt):
        self.now += dt

    @precondition(lambda self: any(t.status == "in_progress" for t in self.tasks.values()))
    @rule(data=st.data(), past=st.sampled_from([0.0, 0.5, 1.0]))
    def move_to_lease_end(self, data, past):
        """Time goes exactly to (or just past) the end of a live lease."""
        leased = [t for t in self.tasks.values() if t.status == "in_progress"]
        task = data.draw(st.sampled_from(leased))
        self.now = max(self.now, task.expires + past)

    @initialize(items=st.lists(new_tasks, min_size=1, max_size=6))
    def first_tasks(self, items):
        self.submit(items)

    @precondition(lambda self: len(self.tasks) < MAX_TASKS)
    @rule(items=st.lists(new_tasks, min_size=1, max_size=4))
    def submit(self, items):
        answers = self.storage.submit(items, now=self.now)
        assert len(answers) == len(items)
        for item, (task_id, created) in zip(items, answers, strict=True):
            known = self.keys.get(item.idempotency_key) if item.idempotency_key else None
            if known is not None:
                assert (task_id, created) == (known, False), "an idempotency key made a task"
                continue
            assert created, f"task {item} not created"
            assert isinstance(task_id, str) and task_id
            assert task_id not in self.tasks and task_id not in self.deleted, "id reused"
            self.tasks[task_id] = Task.submitted(item, self.now)
            if item.idempotency_key:
                self.keys[item.idempotency_key] = task_id

    @rule(
        data=st.data(),
        worker_id=st.sampled_from(WORKERS),
        queues=st.permutations(QUEUES).flatmap(
            lambda qs: st.integers(1, len(qs)).map(lambda n: tuple(qs[:n]))
        ),
        max_tasks=st.integers(1, 4),
        lease_s=st.sampled_from(LEASES),
    )
    def claim(self, data, worker_id, queues, max_tasks, lease_s):
        self.do_claim(self.draw_instance(data, worker_id), worker_id, queues, max_tasks, lease_s)

    def do_claim(self, instance, worker_id, queues, max_tasks, lease_s):
        if self.retired_instance(instance):
            with pytest.raises(WorkerTakenOver):
                self.storage.claim(worker_id, instance, queues, max_tasks, self.now, lease_s)
            return
        idle = self.idle_poll(worker_id, instance, queues)
        claimed = self.storage.claim(worker_id, instance, queues, max_tasks, self.now, lease_s)
        if not idle:
            self.touch(worker_id, instance)
        ids = [c["task_id"] for c in claimed]
        assert len(set(ids)) == len(ids), f"a task claimed twice in one claim: {ids}"
        rank = {}
        position = 0
        for queue in queues:
            ready = {
                task_id
                for task_id, t in self.tasks.items()
                if t.status == "pending" and t.queue == queue and t.run_at <= self.now
            }
            want = min(max_tasks - position, len(ready))
            mine = ids[position : position + want]
            position += want
            assert set(mine) <= ready, f"claimed tasks not ready in {queue!r}: {set(mine) - ready}"
            for task_id in ready:
                t = self.tasks[task_id]
                rank[task_id] = (-t.priority, t.run_at)
            order = [rank[task_id] for task_id in mine]
            assert order == sorted(order), "a claim's tasks are not in priority order"
            passed_over = [rank[task_id] for task_id in ready - set(mine)]
            if mine and passed_over:
                assert max(order) <= min(passed_over), "a better ready task was passed over"
        assert position == len(ids), f"claim returned {len(ids)} tasks, expected {position}"
        order_of = {task_id: n for n, task_id in enumerate(self.tasks)}
        for item in sorted(claimed, key=lambda c: order_of[c["task_id"]]):
            task = self.tasks[item["task_id"]]
            token = item["lease_token"]
            assert isinstance(token, str) and token and token not in self.tokens, "token reused"
            task.status = "in_progress"
            task.attempts += 1
            task.lease = token
            task.expires = self.now + lease_s
            task.worker_id = worker_id
            task.started_at = self.now
            task.by_expiry = False
            task.tokens.append(token)
            self.tokens[token] = item["task_id"]
            assert item["attempt"] == task.attempts
            assert item["type"] == task.type
            assert canon(item["payload"]) == task.payload, "payload changed on its way out"
            assert item["timeout"] == task.timeout
            assert item["lease_expires_at"] == task.expires

    @rule(worker_id=st.sampled_from(WORKERS), op=st.sampled_from(["claim", "heartbeat"]))
    def takeover(self, worker_id, op):
        """A worker restarts under the same id: a new instance."""
        instance = f"{worker_id}#{next(self.instance_numbers)}"
        if op == "claim":
            self.do_claim(instance, worker_id, QUEUES, 2, LEASES[0])
        else:
            self.do_heartbeat(instance, worker_id, None, LEASES[0])

    @rule(
        data=st.data(),
        worker_id=st.sampled_from(WORKERS),
        listed=st.booleans(),
        lease_s=st.sampled_from(LEASES),
    )
    def heartbeat(self, data, worker_id, listed, lease_s):
        task_ids = None
        if listed:
            mine = [t for t, m in self.tasks.items() if m.worker_id == worker_id]
            ids = st.sampled_from(self.all_ids())
            if mine:
                ids = st.sampled_from(mine) | ids
            task_ids = data.draw(st.lists(ids, max_size=4))
            if mine and data.draw(st.booleans()):
                task_ids = mine  # the usual heartbeat: everything it holds
        self.do_heartbeat(self.draw_instance(data, worker_id), worker_id, task_ids, lease_s)

    def do_heartbeat(self, instance, worker_id, task_ids, lease_s):
        if self.retired_instance(instance):
            with pytest.raises(WorkerTakenOver):
                self.storage.heartbeat(worker_id, instance, task_ids, self.now, lease_s)
            return
        abandon = self.storage.heartbeat(worker_id, instance, task_ids, self.now, lease_s)
        self.touch(worker_id, instance)
        if task_ids is None:
            targets = [t for t in self.tasks.values() if t.worker_id == worker_id]
        else:
            targets = [self.tasks[t] for t in set(task_ids) if t in self.tasks]
        for task in targets:
            if task.status == "in_progress" and task.worker_id == worker_id:
                task.expires = self.now + lease_s
        expected = []
        for task_id in task_ids or ():
            task = self.tasks.get(task_id)
            mine = task is not None and task.status == "in_progress" and task.worker_id == worker_id
            counts = task is not None and (
                task.status == "pending" or (task.status == "failed" and task.by_expiry)
            )
            if not mine and not counts:
                expected.append(task_id)
        assert abandon == expected, f"abandon {abandon}, expected {expected}"

    def draw_result(self, data, task_id: str, token: str, worker_id: str) -> Result:
        if data.draw(st.booleans()):
            return Result(task_id, token, worker_id, "completed", data.draw(json_values))
        return Result(task_id, token, worker_id, "failed", error=data.draw(text.filter(bool)))

    def send_results(self, items: list[Result]) -> None:
        outcomes = self.storage.finish(items, now=self.now)
        assert len(outcomes) == len(items)
        for item, outcome in zip(items, outcomes, strict=True):
            self.judge_result(item, outcome)
        self.settle()

    @precondition(lambda self: any(t.lease for t in self.tasks.values()))
    @rule(data=st.data())
    def finish(self, data):
        """The usual case: results (one, or a batch) from the workers holding the leases."""
        leased = [t for t, m in self.tasks.items() if m.lease]
        chosen = data.draw(st.lists(st.sampled_from(leased), min_size=1, max_size=3))
        items = []
        for task_id in chosen:  # a task twice in one batch: the second is a re-send
            task = self.tasks[task_id]
            items.append(self.draw_result(data, task_id, task.lease, task.worker_id))
        self.send_results(items)

    @precondition(lambda self: self.tokens)
    @rule(data=st.data(), size=st.integers(1, 3))
    def finish_under_other_leases(self, data, size):
        """Results under an earlier lease of the same task, another task's lease, a forged
        one; from the lease's worker or another; for live, deleted and unknown tasks."""
        items = []
        for _ in range(size):
            task_id = self.draw_task_id(data)
            task = self.tasks.get(task_id)
            choices = [data.draw(st.sampled_from(list(self.tokens))), "f" * 32]
            if task is not None and task.tokens:
                choices += [data.draw(st.sampled_from(task.tokens))] * 3
            if task is not None and task.lease:
                choices.append(task.lease)
            token = data.draw(st.sampled_from(choices))
            worker_id = data.draw(st.sampled_from(WORKERS))
            if task is not None and task.worker_id and data.draw(st.booleans()):
                worker_id = task.worker_id
            items.append(self.draw_result(data, task_id, token, worker_id))
        self.send_results(items)

    def judge_result(self, item: Result, outcome) -> None:
        """The SPEC's rules for one result, applied to the model and held against what
        storage answered."""
        task = self.tasks.get(item.task_id)
        if task is None:
            assert isinstance(outcome, TaskNotFound), f"{item}: {outcome!r}, not TaskNotFound"
            return
        if item.lease_token not in task.tokens:
            assert isinstance(outcome, LeaseConflict), f"forged lease accepted: {outcome!r}"
            return
        status = task.status
        expect: str | None = None  # None: refused with LeaseConflict
        moves = True  # does this result move the task (storage answers a Moved then)?
        if item.status == "completed":
            if status in ("pending", "in_progress") or (status == "failed" and task.by_expiry):
                # the first finished result wins, and a real result replaces an expiry
                expect = "completed"
                self.finish_task(task, "completed", item.lease_token, item.worker_id)
                task.result = canon(item.result)
                task.error = None
                assert item.task_id not in self.completed, "a completed task finished again"
                self.completed[item.task_id] = task.result
        elif status == "in_progress" and task.lease == item.lease_token:
            if task.attempts > task.max_retries:
                expect = "failed"
                self.finish_task(task, "failed", item.lease_token, task.worker_id)
            else:
                expect = "pending"
                task.status = "pending"
                task.lease = task.expires = task.worker_id = None
                delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (task.attempts - 1))
                run_at = self.storage.get(item.task_id)["run_at"]
                assert self.now + delay / 2 - 1e-6 <= run_at <= self.now + delay + 1e-6, (
                    f"retry at +{run_at - self.now}, expected within [{delay / 2}, {delay}]"
                )
                task.run_at = run_at
            task.error = stored_error(self.kind, item.error)
        elif status in ("pending", "in_progress"):
            expect = status  # a failure under an earlier lease: history only
            moves = False
        elif status == "failed" and task.by_expiry:
            expect = "failed"  # the worker's real error replaces "lease expired"
            self.finish_task(task, "failed", item.lease_token, item.worker_id)
            task.finished_at = self.now
            task.error = stored_error(self.kind, item.error)
        if expect is None and status in FINISHED and task.finished_lease == item.lease_token:
            expect = status  # the same lease again: harmless
            moves = False
        if expect is None:
            assert isinstance(outcome, LeaseConflict), (
                f"{item.status} under lease {item.lease_token} accepted for a {status} task "
                f"finished by {task.finished_lease}: {outcome!r}"
            )
        else:
            assert outcome == expect, f"{item}: {outcome!r}, expected {expect!r} (was {status})"
            if moves:
                assert isinstance(outcome, Moved), f"{item}: {outcome!r} moved its task"
                assert (outcome.queue, outcome.type) == (task.queue, task.type)
            else:
                assert not isinstance(outcome, Moved), f"{item}: {outcome!r} moved nothing"

    @precondition(lambda self: self.tokens)
    @rule(data=st.data(), worker_id=st.sampled_from(WORKERS))
    def release(self, data, worker_id):
        items = []
        for _ in range(data.draw(st.integers(1, 3))):
            task_id = self.draw_task_id(data)
            task = self.tasks.get(task_id)
            tokens = list(self.tokens) + ([task.lease] * 3 if task and task.lease else [])
            items.append((task_id, data.draw(st.sampled_from(tokens))))
        released = self.storage.release(worker_id, items, now=self.now)
        expected = 0
        for task_id, token in items:
            task = self.tasks.get(task_id)
            if (
                task is not None
                and task.status == "in_progress"
                and task.lease == token
                and task.worker_id == worker_id
            ):
                expected += 1
                task.status = "pending"
                task.attempts -= 1  # a released attempt does not count
                task.lease = task.expires = task.worker_id = None
        assert released == expected

    @rule(
        dead_after=st.sampled_from([5.0, 30.0, FOREVER]),
        retention_s=st.sampled_from([0.0, 0.0, 20.0, 200.0]),
    )
    def reap(self, dead_after, retention_s):
        # forgetting old workers is not modelled: never, here (test_contract covers it)
        report = self.storage.reap(
            now=self.now, dead_after=dead_after, retention_s=retention_s, forget_after=math.inf
        )
        dead = []
        rescued = []
        # workers, then their tasks, then expired leases, each in id order, as storage
        # reaps them (a cascade names the dependency it ended first)
        for worker_id, w in sorted(self.workers.items()):
            if w.alive and w.last_heartbeat < self.now - dead_after:
                w.alive = False
                dead.append(worker_id)
                for task_id, t in sorted(self.tasks.items()):
                    if t.status == "in_progress" and t.worker_id == worker_id:
                        self.expire(t)
                        rescued.append(task_id)
        expired = []
        for task_id, t in sorted(self.tasks.items()):
            if t.status == "in_progress" and t.expires < self.now:
                self.expire(t)
                expired.append(task_id)
        gone = []
        if retention_s > 0:
            cutoff = self.now - retention_s
            gone = [
                task_id
                for task_id, t in self.tasks.items()
                if t.status in FINISHED and t.finished_at < cutoff
            ]
        if dead or expired or gone:  # an idle sweep writes nothing
            for w in self.workers.values():
                w.retired = {
                    i: at for i, at in w.retired.items() if at >= self.now - RETIRED_KEEP_S
                }
        for task_id in gone:
            with pytest.raises(TaskNotFound):
                self.storage.get(task_id)
            del self.tasks[task_id]
            self.deleted[task_id] = None
            self.completed.pop(task_id, None)
        self.keys = {k: t for k, t in self.keys.items() if t in self.tasks}
        assert sorted(report.dead_workers) == sorted(dead)
        assert sorted(report.rescued) == sorted(rescued)
        assert sorted(report.expired) == sorted(expired)
        named = sorted(zip(report.expired, report.expired_queues, strict=True))
        assert named == sorted((t, self.tasks[t].queue) for t in expired)
        assert report.deleted == len(gone)

    @rule(data=st.data(), op=st.sampled_from(["cancel", "retry"]))
    def operator(self, data, op):
        """An operator cancels or retries a task (live, deleted or unknown; a URL may carry
        a NUL character)."""
        task_id = self.draw_task_id(data) if data.draw(st.integers(0, 9)) else "a\x00b"
        task = self.tasks.get(task_id)
        call = self.storage.cancel if op == "cancel" else self.storage.retry
        allowed = ("waiting", "pending", "in_progress") if op == "cancel" else FINISHED[1:]
        if task is None:
            with pytest.raises(TaskNotFound):
                call(task_id, now=self.now)
            return
        retried = self.retried_status(task_id) if op == "retry" else "cancelled"
        if task.status not in allowed or retried is None:
            with pytest.raises(Conflict):
                call(task_id, now=self.now)
            return
        moved = call(task_id, now=self.now)
        assert isinstance(moved, Moved), f"{op} {task_id}: {moved!r} is not a Moved"
        assert (moved.queue, moved.type) == (task.queue, task.type)
        if op == "cancel":
            assert moved == "cancelled"
            task.status = "cancelled"
            task.finished_at = self.now
            task.lease = task.expires = None
            self.settle()
        else:
            assert moved == retried
            task.status = retried
            task.attempts = 0
            task.run_at = self.now
            task.result = task.error = task.finished_at = task.started_at = None
            task.finished_lease = task.worker_id = None
            task.by_expiry = False

    # -- periodic tasks (docs/SCHEDULING.md) ----------------------------------------

    @rule(name=st.sampled_from(SCHEDULES), enabled=st.booleans(), stale=st.booleans())
    def put_schedule(self, name, enabled, stale):
        """Create a schedule, or replace one (from a fresh read, or a stale one: refused)."""
        s = self.schedules.get(name)
        first = math.floor(self.now) + 10.0 if enabled else None
        if s is None:
            made = self.storage.create_schedule(name, SCHEDULE, enabled, first, now=self.now)
            assert (made["next_run_at"], made["updated_at"]) == (first, self.now)
            self.schedules[name] = ScheduleModel(first, self.now, enabled)
            return
        if stale:
            with pytest.raises(Conflict):
                self.storage.update_schedule(
                    name, SCHEDULE, enabled, first, now=self.now, version=s.version - 1
                )
            return
        with pytest.raises(Conflict):  # the name is taken
            self.storage.create_schedule(name, SCHEDULE, enabled, first, now=self.now)
        changed = self.storage.update_schedule(
            name, SCHEDULE, enabled, first, now=self.now, version=s.version
        )
        s.next_run_at, s.enabled = first, enabled
        s.version = max(self.now, s.version + 1e-6)
        assert (changed["next_run_at"], changed["updated_at"]) == (first, s.version)

    @rule(name=st.sampled_from(SCHEDULES), ticks=st.integers(0, 2), stale=st.booleans())
    def fire_schedule(self, name, ticks, stale):
        """Fire a schedule's due ticks: only from the row as it is (next_run_at, version,
        enabled) does it move and create a task per tick whose key is free."""
        s = self.schedules.get(name)
        expected = math.floor(self.now) if s is None or s.next_run_at is None else s.next_run_at
        version = self.now if s is None else s.version - (1 if stale else 0)
        wins = s is not None and s.enabled and s.next_run_at is not None and not stale
        due = [expected + 10.0 * i for i in range(ticks)]
        after = expected + 10.0 * (ticks + 1)
        got = self.storage.fire_schedule(
            name, expected, version, after, [(t, SCHEDULE_TASK) for t in due], now=self.now
        )
        if not wins:
            assert got is None, f"a firing from a stale read of {name!r} created {got}"
            return
        assert got is not None, f"{name!r} was not fired"
        fresh = [t for t in due if tick_key(name, t) not in self.keys]
        assert len(got) == len(fresh), f"{name!r}: created {got} for the free ticks {fresh}"
        for task_id, tick in zip(got, fresh, strict=True):
            assert task_id not in self.tasks and task_id not in self.deleted, "id reused"
            self.tasks[task_id] = Task.submitted(SCHEDULE_TASK, self.now)
            self.keys[tick_key(name, tick)] = task_id
        s.next_run_at = after
        if got:
            s.last_task_id = got[-1]

    @rule(name=st.sampled_from(SCHEDULES))
    def delete_schedule(self, name):
        """Deleted (its tasks stay); made again later, its ticks' keys still guard."""
        if name not in self.schedules:
            with pytest.raises(ScheduleNotFound):
                self.storage.delete_schedule(name)
            return
        self.storage.delete_schedule(name)
        del self.schedules[name]

    @invariant()
    def schedules_match_the_model(self):
        got = {
            s["name"]: (s["next_run_at"], s["updated_at"], s["enabled"], s["last_task_id"])
            for s in self.storage.schedules()
        }
        want = {
            name: (m.next_run_at, m.version, m.enabled, m.last_task_id)
            for name, m in self.schedules.items()
        }
        assert got == want

    # -- invariants -----------------------------------------------------------------

    @invariant()
    def invariants_hold(self):
        """After every step. One list_tasks() reads every task; get() reads the history
        of those whose model changed since their last check."""
        stored = {t["task_id"]: t for t in self.storage.list_tasks(None, None, 1000, 0)}
        assert set(stored) == set(self.tasks), "tasks appeared or vanished"
        for task_id, m in self.tasks.items():
            version = (m.status, m.attempts, len(m.tokens), m.lease, m.finished_at)
            if self.checked.get(task_id) != version:
                got = self.storage.get(task_id)
                shown = {k: v for k, v in got.items() if k not in ("history", "dependents")}
                assert shown == stored[task_id]
                self.history[task_id] = got["history"]
                self.checked[task_id] = version
            stored[task_id]["history"] = self.history[task_id]
        self.storage_matches_the_model(stored)
        self.a_completed_result_never_changes(stored)
        self.one_live_lease_at_most(stored)
        self.status_counts_add_up()
        self.attempts_within_max_retries(stored)
        self.workers_match_the_model()

    def storage_matches_the_model(self, stored: dict[str, dict]) -> None:
        for task_id, m in self.tasks.items():
            got = stored[task_id]
            seen = {key: got[key] for key in MODEL_FIELDS}
            want = {key: getattr(m, key) for key in MODEL_FIELDS}
            assert seen == want, f"task {task_id}: storage {seen}, model {want}"
            assert canon(got["payload"]) == m.payload, f"task {task_id}: payload changed"
            result = None if m.result is None else json.loads(m.result)
            assert canon(got["result"]) == canon(result), f"task {task_id}: result differs"
            assert len(got["history"]) == len(m.tokens), f"task {task_id}: {got['history']}"

    def a_completed_result_never_changes(self, stored: dict[str, dict]) -> None:
        for task_id, result in self.completed.items():  # those not deleted by retention
            got = stored[task_id]
            assert got["status"] == "completed", f"completed task {task_id} is {got['status']}"
            assert canon(got["result"]) == result, f"the result of {task_id} changed"

    def one_live_lease_at_most(self, stored: dict[str, dict]) -> None:
        """An in-progress task has exactly one open attempt (one lease a heartbeat keeps
        and a failure moves); any other task has none. That storage accepts a finished
        result from one lease only is checked by judge_result on every result."""
        for task_id, m in self.tasks.items():
            got = stored[task_id]
            open_attempts = [h for h in got["history"] if h["outcome"] is None]
            in_progress = got["status"] == "in_progress"
            assert len(open_attempts) == in_progress, (
                f"task {task_id} is {got['status']} with open attempts {open_attempts}"
            )
            assert (m.lease is not None) == in_progress

    def status_counts_add_up(self) -> None:
        stats = self.storage.stats(now=self.now, dead_after=FOREVER)
        want = dict.fromkeys(STATUSES, 0)
        for m in self.tasks.values():
            want[m.status] += 1
        assert stats["tasks"] == want
        assert sum(stats["tasks"].values()) == len(self.tasks)  # submitted - deleted
        alive = sum(w.alive for w in self.workers.values())
        dead = len(self.workers) - alive
        assert stats["workers"] == {"alive": alive, "dead": dead, "stopped": 0}

    def attempts_within_max_retries(self, stored: dict[str, dict]) -> None:
        for task_id, got in stored.items():
            assert 0 <= got["attempts"] <= got["max_retries"] + 1, f"task {task_id}: {got}"

    def workers_match_the_model(self) -> None:
        found = {w["worker_id"]: w for w in self.storage.workers(now=self.now, dead_after=FOREVER)}
        assert set(found) == set(self.workers)
        for worker_id, m in self.workers.items():
            w = found[worker_id]
            holds = sorted(
                t
                for t, task in self.tasks.items()
                if task.status == "in_progress" and task.worker_id == worker_id
            )
            assert w["instance_id"] == m.instance
            assert w["last_heartbeat"] == m.last_heartbeat
            assert w["status"] == ("alive" if m.alive else "dead")
            assert sorted(w["current_tasks"]) == holds


@pytest.fixture
def scratch(tmp_path):
    """A directory for the examples' databases: in memory (/dev/shm) where there is one,
    since each example makes a new database and fsyncs every commit."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="taskqueue-state-machine-", dir=shm))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_machine(machine: type, kind: str, path: Path, examples: int) -> None:
    """Run a machine as a test: each example on a fresh storage under `path`."""
    made = itertools.count()

    def fresh_machine():
        storage, cleanup = make_storage(kind, path / f"example-{next(made)}")
        return machine(kind, storage, cleanup)

    run_state_machine_as_test(fresh_machine, settings=settings(SETTINGS, max_examples=examples))


@pytest.mark.parametrize("kind", KINDS)
def test_storage_keeps_the_lifecycle_rules(kind, scratch):
    run_machine(StorageMachine, kind, scratch / "lifecycle", EXAMPLES.get(kind, 100))


# -- dependencies (issue 18) --------------------------------------------------------------
#
# The same machine, plus submissions with depends_on (existing ids, ids of no stored task,
# and "#N" as the int N, an earlier task of the batch). The model is state-based: after
# every step that may finish a task (results, expiry, a dead or taken-over worker's
# tasks, cancel), `settle` moves each waiting task whose dependencies all completed (or
# were deleted) to pending at max(run_at, now), and each one with a dependency failed or
# cancelled to cancelled, attempts 0, with the error `dependency <id> failed` / `was
# cancelled` naming one such dependency (which one a step names depends on the order in
# which storage ended them; the model checks it is one of them), until nothing moves.
# Invariants: a waiting task has a dependency not completed; a waiting task is never
# claimed (the base claim's check: only ready pending tasks are claimed); stored
# depends_on is what was submitted, repeats dropped.

ENDED = ("failed", "cancelled")
CASCADE_ERROR = re.compile(r"dependency ([0-9a-f]+) (failed|was cancelled)")


class DependencyMachine(StorageMachine):
    def __init__(self, kind: str, storage: Storage, cleanup: Callable[[], None]):
        super().__init__(kind, storage, cleanup)
        self.deps: dict[str, list[str]] = {}  # task id -> its dependencies (deleted: kept)

    @precondition(lambda self: len(self.tasks) < MAX_TASKS)
    @rule(data=st.data(), items=st.lists(new_tasks, min_size=1, max_size=4))
    def submit_dependent(self, data, items):
        live = list(self.tasks)
        for i, item in enumerate(items):
            refs = st.sampled_from(self.all_ids())
            if live:
                refs = st.sampled_from(live) | st.sampled_from(live) | refs
            if i:
                refs = refs | st.integers(0, i - 1)
            item.depends_on = data.draw(st.lists(refs, max_size=3)) or None
        unknown = [
            d
            for item in items
            for d in item.depends_on or ()
            if isinstance(d, str) and d not in self.tasks
        ]
        if unknown:
            with pytest.raises(UnknownDependency):
                self.storage.submit(items, now=self.now)
            return
        answers = self.storage.submit(items, now=self.now)
        ids: list[str] = []
        for item, (task_id, created) in zip(items, answers, strict=True):
            ids.append(task_id)
            known = self.keys.get(item.idempotency_key) if item.idempotency_key else None
            if known is not None:
                assert (task_id, created) == (known, False), "an idempotency key made a task"
                continue
            assert created and task_id not in self.tasks and task_id not in self.deleted
            given = item.depends_on or ()
            refs = list(dict.fromkeys(d if isinstance(d, str) else ids[d] for d in given))
            status = {d: self.tasks[d].status for d in refs}
            ended = sorted(d for d in refs if status[d] in ENDED)
            task = Task.submitted(item, self.now)
            if ended:
                verb = "failed" if status[ended[0]] == "failed" else "was cancelled"
                task.status, task.error = "cancelled", f"dependency {ended[0]} {verb}"
                task.finished_at = self.now
            elif any(s != "completed" for s in status.values()):
                task.status = "waiting"
            self.tasks[task_id] = task
            self.deps[task_id] = refs
            if item.idempotency_key:
                self.keys[item.idempotency_key] = task_id

    def settle(self) -> None:
        moved = True
        while moved:
            moved = False
            for task_id, task in self.tasks.items():
                if task.status != "waiting":
                    continue
                deps = [d for d in self.deps.get(task_id, ()) if d in self.tasks]
                ended = [d for d in deps if self.tasks[d].status in ENDED]
                if ended:
                    got = self.storage.get(task_id)
                    match = CASCADE_ERROR.fullmatch(got["error"] or "")
                    assert match and match[1] in ended, f"{task_id}: {got['error']!r}, {ended}"
                    verb = "failed" if self.tasks[match[1]].status == "failed" else "was cancelled"
                    assert match[2] == verb, f"{task_id}: {got['error']!r}"
                    assert got["attempts"] == 0
                    task.status, task.error = "cancelled", got["error"]
                    task.attempts, task.finished_at = 0, self.now
                    moved = True
                elif all(self.tasks[d].status == "completed" for d in deps):
                    task.status = "pending"
                    task.run_at = max(task.run_at, self.now)
                    moved = True

    def retried_status(self, task_id: str) -> str | None:
        deps = [d for d in self.deps.get(task_id, ()) if d in self.tasks]
        if any(self.tasks[d].status in ENDED for d in deps):
            return None
        if any(self.tasks[d].status != "completed" for d in deps):
            return "waiting"
        return "pending"

    @invariant()
    def dependencies_hold(self):
        for task_id, task in self.tasks.items():
            if task_id not in self.deps and task.status != "waiting":
                continue
            got = self.storage.get(task_id)
            assert got["depends_on"] == self.deps.get(task_id, []), task_id
            if task.status == "waiting":
                assert any(
                    d in self.tasks and self.tasks[d].status != "completed"
                    for d in self.deps[task_id]
                ), f"task {task_id} waits for nothing"


@pytest.mark.parametrize("kind", KINDS)
def test_storage_keeps_the_dependency_rules(kind, scratch):
    run_machine(DependencyMachine, kind, scratch / "deps", EXAMPLES.get(kind, 100))


# == queue controls and expiry (issue 18) ===============================================
#
# A machine of its own, beside the lifecycle machine above: random submissions (some
# with expires_in) to two queues, claims by three workers, results (completed, or failed
# with a retry left), releases, pause / resume / max_in_flight / rate_limit changes, the
# reaper, and time moving. Its model predicts, for every claim, exactly how many tasks
# each queue gives (the least of what is asked, what is ready, and the queue's
# allowance), that none is an expired not-started task, and that has_ready says what a
# claim would find; after every step every task's status, attempts and error match.

FLOW_QUEUES = ("a", "b")
FLOW_WORKERS = ("w1", "w2", "w3")
KEEP = "keep"  # a setting a change leaves out
RATE = ("count", "per_seconds")


@dataclass
class FlowTask:
    queue: str
    created_at: float
    run_at: float
    expires_at: float | None
    max_retries: int
    status: str = "pending"
    attempts: int = 0
    lease: str | None = None
    error: str | None = None


@dataclass
class QueueModel:
    paused: bool = False
    max_in_flight: int | None = None
    rate: tuple[int, float] | None = None  # (count, per_seconds)
    # (time, n, count, per_seconds) of each claim since the rate was set, with the limit
    # in force then
    claims: list[tuple[float, int, int, float]] = field(default_factory=list)


class FlowMachine(RuleBasedStateMachine):
    def __init__(self, kind: str, storage: Storage, cleanup: Callable[[], None]):
        super().__init__()
        self.kind, self.storage, self.cleanup = kind, storage, cleanup
        self.now = T0
        self.tasks: dict[str, FlowTask] = {}
        self.queues = {q: QueueModel() for q in FLOW_QUEUES}
        self.seen: dict[str, float] = {}  # worker -> its last claim that wrote

    def teardown(self) -> None:
        self.cleanup()

    # -- the model's rules ------------------------------------------------------------

    def running(self, queue: str) -> int:
        return sum(t.status == "in_progress" and t.queue == queue for t in self.tasks.values())

    def allowance(self, queue: str) -> int | None:
        """What a claim may take from `queue` now (None: no limit)."""
        q = self.queues[queue]
        if q.paused:
            return 0
        room = None
        if q.max_in_flight is not None:
            room = max(0, q.max_in_flight - self.running(queue))
        if q.rate is not None:
            count, per = q.rate
            used = sum(c[1] for c in q.claims if c[0] > self.now - per)
            left = max(0, count - used)
            room = left if room is None else min(room, left)
        return room

    def expire_due(self) -> None:
        """Every not-started task past its expiry -> cancelled (a claim, the reaper)."""
        for t in self.tasks.values():
            if (
                t.status == "pending"
                and t.attempts == 0
                and t.expires_at is not None
                and t.expires_at <= self.now
            ):
                t.status = "cancelled"
                n = f"{round(t.expires_at - t.created_at, 3):.3f}".rstrip("0").rstrip(".")
                t.error = f"expired: not started within {n} s"

    def ready(self, queue: str) -> list[str]:
        return [
            task_id
            for task_id, t in self.tasks.items()
            if t.status == "pending" and t.queue == queue and t.run_at <= self.now
        ]

    # -- rules ------------------------------------------------------------------------

    @rule(dt=st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0, 7.0, 20.0]))
    def tick(self, dt):
        self.now += dt

    @precondition(lambda self: len(self.tasks) < 16)
    @rule(
        queue=st.sampled_from(FLOW_QUEUES),
        n=st.integers(1, 3),
        expires_in=st.none() | st.sampled_from([0.5, 1.0, 2.5, 6.0]),
        delay=st.sampled_from([0.0, 0.0, 1.0]),
        max_retries=st.integers(0, 1),
    )
    def submit(self, queue, n, expires_in, delay, max_retries):
        item = NewTask(
            "echo",
            {},
            queue=queue,
            delay=delay,
            max_retries=max_retries,
            expires_in=expires_in,
        )
        for task_id, created in self.storage.submit([item] * n, now=self.now):
            assert created
            expires_at = None if expires_in is None else self.now + expires_in
            self.tasks[task_id] = FlowTask(
                queue, self.now, self.now + delay, expires_at, max_retries
            )

    @rule(
        queue=st.sampled_from(FLOW_QUEUES),
        paused=st.sampled_from([KEEP, True, False]),
        cap=st.sampled_from([KEEP, None, 1, 2]),
        rate=st.sampled_from([KEEP, None, (1, 2.0), (2, 5.0)]),
    )
    def set_queue(self, queue, paused, cap, rate):
        """KEEP leaves a setting out of the change; None removes a limit."""
        changes = {}
        q = self.queues[queue]
        if paused is not KEEP:
            changes["paused"] = q.paused = paused
        if cap is not KEEP:
            changes["max_in_flight"] = q.max_in_flight = cap
        if rate is not KEEP:
            changes["rate_limit"] = None if rate is None else dict(zip(RATE, rate, strict=True))
            if q.rate is None or rate is None:
                q.claims = []  # a new limit's window starts empty; none is kept without one
            q.rate = rate
        if not changes:
            return
        got = self.storage.set_queue(queue, changes, now=self.now)
        assert (got["paused"], got["max_in_flight"]) == (q.paused, q.max_in_flight)
        rate_now = None if q.rate is None else dict(zip(RATE, q.rate, strict=True))
        assert got["rate_limit"] == rate_now

    @rule(
        worker=st.sampled_from(FLOW_WORKERS),
        queues=st.sampled_from([("a",), ("b",), ("a", "b"), ("b", "a")]),
        max_tasks=st.integers(1, 4),
    )
    def claim(self, worker, queues, max_tasks):
        said_ready = self.storage.has_ready(queues, self.now)
        # has_ready: a pending task due in a queue that allows a claim now (an expired
        # one still counts: the claim cancels it) - what a held poll wakes up for
        open_ready = any(self.ready(q) and self.allowance(q) != 0 for q in queues)
        assert said_ready == open_ready, (said_ready, queues, self.queues)
        claimed = self.storage.claim(worker, "", queues, max_tasks, self.now, 1000.0)
        # SQLite's claim with nothing claimable for a worker seen within TOUCH_EVERY_S
        # writes nothing (no expiry either: the reaper's); any other runs the claim
        idle = (
            self.kind == "sqlite"
            and not said_ready
            and self.now - self.seen.get(worker, -FOREVER) < TOUCH_EVERY_S
        )
        if idle:
            assert claimed == []
            return
        self.seen[worker] = self.now
        self.expire_due()
        by_queue: dict[str, list[str]] = {}
        for c in claimed:
            by_queue.setdefault(c["queue"], []).append(c["task_id"])
        left = max_tasks
        for queue in queues:
            room = self.allowance(queue)
            ready = self.ready(queue)
            want = min(left, len(ready) if room is None else min(room, len(ready)))
            got = by_queue.get(queue, [])
            assert len(got) == want, (queue, got, want, self.queues[queue], ready)
            assert set(got) <= set(ready), "an unready or expired task was handed out"
            left -= want
            for task_id in got:
                t = self.tasks[task_id]
                t.status, t.attempts = "in_progress", t.attempts + 1
                t.lease = next(c["lease_token"] for c in claimed if c["task_id"] == task_id)
            if got and self.queues[queue].rate is not None:
                self.queues[queue].claims.append((self.now, len(got), *self.queues[queue].rate))

    @precondition(lambda self: any(t.status == "in_progress" for t in self.tasks.values()))
    @rule(data=st.data(), outcome=st.sampled_from(["completed", "failed", "released"]))
    def finish(self, data, outcome):
        running = [i for i, t in self.tasks.items() if t.status == "in_progress"]
        task_id = data.draw(st.sampled_from(running))
        t = self.tasks[task_id]
        if outcome == "released":
            assert self.storage.release("w?", [(task_id, t.lease)], now=self.now) == 0
            worker = self.storage.get(task_id)["worker_id"]
            assert self.storage.release(worker, [(task_id, t.lease)], now=self.now) == 1
            t.status, t.attempts, t.lease = "pending", t.attempts - 1, None
            return
        worker = self.storage.get(task_id)["worker_id"]
        item = Result(task_id, t.lease, worker, outcome, result=1, error="boom")
        [moved] = self.storage.finish([item], now=self.now)
        if outcome == "completed":
            t.status = "completed"
        elif t.attempts > t.max_retries:
            t.status, t.error = "failed", "boom"
        else:  # back to pending after a back-off: it has started, so it never expires
            t.status, t.error = "pending", "boom"
            t.run_at = self.now + min(BACKOFF_CAP, BACKOFF_BASE)
        assert moved == t.status
        t.lease = None

    @rule()
    def reap(self):
        report = self.storage.reap(now=self.now, dead_after=FOREVER, retention_s=0)
        before = {i for i, t in self.tasks.items() if t.status == "cancelled"}
        self.expire_due()
        after = {i for i, t in self.tasks.items() if t.status == "cancelled"}
        assert len(report.unstarted) == len(after - before)

    # -- what must hold after every step -------------------------------------------------

    @invariant()
    def tasks_match_the_model(self):
        for task_id, t in self.tasks.items():
            got = self.storage.get(task_id)
            assert (got["status"], got["attempts"]) == (t.status, t.attempts), (task_id, got, t)
            if t.status == "cancelled":
                assert got["error"] == t.error and got["attempts"] == 0

    @invariant()
    def limits_hold(self):
        for queue, q in self.queues.items():
            # the window of per_seconds that ends with each claim holds no more claims
            # than the limit in force at that claim
            for i, (at, _, count, per) in enumerate(q.claims):  # (in commit order)
                inside = sum(c[1] for c in q.claims[: i + 1] if at - per < c[0] <= at)
                assert inside <= count, (queue, q.claims)


@pytest.mark.parametrize("kind", KINDS)
def test_storage_keeps_the_queue_control_and_expiry_rules(kind, scratch):
    run_machine(FlowMachine, kind, scratch / "flow", EXAMPLES.get(kind, 100) // 2)
