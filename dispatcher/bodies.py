"""The JSON bodies of the HTTP API, declared once as msgspec Structs.

parse.py converts each request body into its Struct (msgspec checks types, bounds and
required fields) and openapi.py publishes the same Structs, answers included, as the
components of GET /openapi.json. Some request bounds and defaults come from the running
configuration (MAX_BATCH, MAX_WAIT_SECONDS, DEFAULT_MAX_RETRIES, DEFAULT_TASK_TIMEOUT):
`requests(config)` declares those bodies for one configuration.

A field sent as null means the same as a field left out. What a type cannot say is
checked by parse.py: a whole number written as 3.0, text a database cannot hold, nesting.
"""

# No `from __future__ import annotations`: the Structs made in _requests() annotate with
# its arguments, which must be values when the class is made.

import functools
from typing import Annotated, Any, ClassVar, Literal, NamedTuple

import msgspec
from msgspec import Meta, Struct, UnsetType

from common.config import MAX_QUEUES, Config
from common.limits import (  # noqa: F401  (re-exported)
    MAX_ID_LENGTH,
    MAX_PRIORITY,
    MAX_RETRIES,
    MAX_TIMEOUT,
    MIN_TIMEOUT,
    NOT_BLANK,
)
from tasks.context import MAX_MESSAGE

from .storage import STATUSES, WORKER_STATES
from .ticks import MAX_EVERY

MAX_KEY_LENGTH = 200
MAX_ERROR_LENGTH = 10_000
MAX_DELAY = 365 * 86_400.0  # a year
MAX_DEPENDENCIES = 100  # depends_on of one task
MAX_DEPTH = 100  # nesting of a stored payload or result: JSON must hold it on the way out
MAX_EXPIRES_IN = MAX_DELAY  # a submission's expires_in, like its delay
MAX_IN_FLIGHT = 1_000_000  # a queue's max_in_flight, at most
MAX_RATE_COUNT = 1_000_000_000  # a queue's rate_limit count, at most
MAX_RATE_PER_SECONDS = 365 * 86_400.0  # a rate window of a year at most


def _name(description: str, max_len: int = MAX_ID_LENGTH) -> Any:
    """A string the client chooses: not blank, at most `max_len` characters."""
    return Annotated[
        str, Meta(min_length=1, max_length=max_len, pattern=NOT_BLANK, description=description)
    ]


def _field(kind: Any, description: str, **rules: Any) -> Any:
    """`kind` with a description and rules (msgspec.Meta's: ge, le, min_length, ...)."""
    return Annotated[kind, Meta(description=description, **rules)]


WorkerId = _name("the worker's name")
InstanceId = _name("the worker process's random id")
TaskId = _name("the task")
QueueName = Annotated[str, Meta(min_length=1, max_length=MAX_ID_LENGTH)]
HeldId = Annotated[str, Meta(max_length=MAX_ID_LENGTH)]
DependencyRef = _name('a task id, or "#N": the N-th task of the same POST /submit-tasks')
ResultItem = _field(
    Any,
    "a result as for /submit-result (schema Result); "
    "an item that is not one gets its own answer with code 400",
)

# -- request bodies that no setting changes ------------------------------------------


class Body(Struct, gc=False):
    """A request body: made from JSON and dropped with the request, never part of a
    reference cycle, so the garbage collector need not track it (a batch makes 1,000)."""


class Result(Body):
    task_id: TaskId
    worker_id: _name("the worker reporting")
    lease_token: _name("the token of the claim this result comes from")
    status: Literal["completed", "failed"]
    result: _field(Any, f"what the task returned: any JSON, at most {MAX_DEPTH} levels deep") = None
    error: _field(str, f"why it failed; cut at {MAX_ERROR_LENGTH} characters") | None = None


class Lease(Body):
    task_id: TaskId
    lease_token: _name("its lease")


class ProgressReport(Body):
    fraction: _field(float, "how far the task has got, from 0 to 1", ge=0, le=1)
    message: (
        _field(str, f"what it is doing, at most {MAX_MESSAGE} characters", max_length=MAX_MESSAGE)
        | None
    ) = None


class Heartbeat(Body):
    worker_id: WorkerId
    instance_id: InstanceId | None = None
    task_ids: _field(list[HeldId], "the tasks it holds; default: all of them") | None = None
    state: (
        _field(
            Literal[WORKER_STATES],
            "stopping: shutting down, give it no more tasks; "
            "stopped: gone (shown as stopped, not dead)",
        )
        | None
    ) = None
    concurrency: (
        _field(int, "tasks it runs at once (GET /workers shows it)", ge=1, le=100_000) | None
    ) = None
    progress: (
        _field(
            dict[HeldId, ProgressReport],
            "the progress its running tasks reported since its last heartbeat, by task id; "
            "stored for the tasks it holds in progress, ignored for others",
        )
        | None
    ) = None


# periodic tasks (POST /schedules, PUT /schedules/<name>; docs/SCHEDULING.md)
CatchUp = _field(
    Literal["one", "none", "all"],
    "ticks missed while no dispatcher ran: one (the latest fires; default), none, all "
    "(each, oldest first, at most 100)",
)
Template = _field(
    dict,
    "the task each tick creates: the body of POST /submit-task (schema NewTask), without "
    "idempotency_key; checked like a submission",
)
Cron = _field(
    str,
    "a cron expression (5 fields, or 6 with seconds first), e.g. '*/5 * * * *'",
    min_length=1,
    max_length=200,
)
Every = _field(
    int, "seconds between ticks: the multiples of it since 1970-01-01 UTC", ge=1, le=MAX_EVERY
)
Zone = _field(str, "the IANA time zone cron is read in (default UTC)", min_length=1, max_length=100)


class NewSchedule(Body, forbid_unknown_fields=True):
    name: _name("the schedule's name: letters, digits, '.', '_', '-'")
    task: Template
    cron: Cron | None = None
    every: Every | None = None
    timezone: Zone | None = None
    enabled: bool | None = None
    catch_up: CatchUp | None = None


class ScheduleChange(Body, forbid_unknown_fields=True):
    """PUT /schedules/<name>: the fields given replace the schedule's; the others stay.
    Giving cron or every replaces both (the other one is dropped)."""

    NOUN: ClassVar[str] = "schedule"  # what a refusal calls it (parse._explain)

    name: _name("if given, the schedule's own name") | None = None
    task: Template | None = None
    cron: Cron | None = None
    every: Every | None = None
    timezone: Zone | None = None
    enabled: bool | None = None
    catch_up: CatchUp | None = None


class RateLimit(Body, forbid_unknown_fields=True):
    count: _field(int, "claims at most...", ge=1, le=MAX_RATE_COUNT)
    per_seconds: _field(
        float, "...in any window of this many seconds", gt=0, le=MAX_RATE_PER_SECONDS
    )


class QueueChanges(Body, forbid_unknown_fields=True):
    """PUT /queues/<name>: any of the fields; one left out keeps its value, null removes
    a limit."""

    paused: _field(bool, "true: nothing of the queue is handed out") | UnsetType = msgspec.UNSET
    max_in_flight: (
        _field(
            int,
            "at most this many tasks of the queue in progress at once, across every worker "
            "and dispatcher; null: no limit",
            ge=1,
            le=MAX_IN_FLIGHT,
        )
        | None
        | UnsetType
    ) = msgspec.UNSET
    rate_limit: (
        _field(RateLimit, "at most `count` claims in any `per_seconds` window; null: no limit")
        | None
        | UnsetType
    ) = msgspec.UNSET


class QueueRef(Body):
    """A queue named in a URL: held to a submission's bounds."""

    queue: _name("the queue")


# -- request bodies whose bounds or defaults are settings ----------------------------


class Requests(NamedTuple):
    new_task: type
    new_tasks: type
    claim: type
    results: type
    release: type
    wait_tasks: type


def requests(config: Config) -> Requests:
    """The request bodies of a dispatcher running with `config`."""
    return _requests(
        config.max_batch,
        config.max_wait_seconds,
        config.default_max_retries,
        config.default_task_timeout,
    )


@functools.lru_cache(maxsize=64)
def _requests(batch: int, max_wait: float, retries: int, task_timeout: float) -> Requests:
    class NewTask(Body, forbid_unknown_fields=True):
        type: _field(
            str,
            "a registered task type (built-in or from TASK_MODULES)",
            min_length=1,
            max_length=MAX_ID_LENGTH,
        )
        payload: _field(
            dict, f"checked by the task type (see docs/TASKS.md); nested at most {MAX_DEPTH} levels"
        ) = {}
        # Left out (or null): the task type's default (GET /task-types), else the one named.
        queue: _name('the queue it waits in; default: the type\'s, else "default"') | None = None
        priority: (
            _field(
                int,
                "higher runs first; default: the type's, else 0",
                ge=-MAX_PRIORITY,
                le=MAX_PRIORITY,
            )
            | None
        ) = None
        delay: _field(float, "seconds before the first claim", ge=0, le=MAX_DELAY) | None = 0.0
        max_retries: (
            _field(
                int,
                f"retries after a failure; default: the type's, else {retries}",
                ge=0,
                le=MAX_RETRIES,
            )
            | None
        ) = None
        timeout: (
            _field(
                float,
                f"seconds; default: the type's, else {task_timeout:g}",
                ge=MIN_TIMEOUT,
                le=MAX_TIMEOUT,
            )
            | None
        ) = None
        idempotency_key: (
            _name("a key used before returns the first task", MAX_KEY_LENGTH) | None
        ) = None
        depends_on: (
            _field(
                list[DependencyRef],
                "tasks that must complete before this one runs (it waits, status waiting); "
                'in POST /submit-tasks "#N" names the N-th task (from 0) of the same batch',
                max_length=MAX_DEPENDENCIES,
            )
            | None
        ) = None
        expires_in: (
            _field(
                float,
                "seconds: not started within this time of its submission, it is never run "
                "(cancelled with the error `expired: not started within N s`)",
                gt=0,
                le=MAX_EXPIRES_IN,
            )
            | None
        ) = None

    class NewTasks(Body):
        tasks: _field(list[NewTask], "stored all or nothing", min_length=1, max_length=batch)

    class Claim(Body):
        worker_id: WorkerId
        instance_id: InstanceId | None = None
        queues: (
            _field(
                list[QueueName],
                'in order of preference; default ["default"]',
                min_length=1,
                max_length=MAX_QUEUES,
            )
            | None
        ) = None
        wait: (
            _field(float, "seconds to hold the request while nothing is ready", ge=0, le=max_wait)
            | None
        ) = 0.0
        max_tasks: _field(int, "tasks to claim at most", ge=1, le=batch) | None = 1

    class Results(Body):
        results: _field(list[ResultItem], "each judged alone", min_length=1, max_length=batch)
        claim: (
            _field(
                dict[str, Any],
                "the worker's next claim, a body as for /get-task (schema Claim), made after "
                "the results are stored: the answer's tasks",
            )
            | None
        ) = None

    class Release(Body):
        worker_id: WorkerId
        tasks: _field(list[Lease], "tasks to give back", min_length=1, max_length=batch)

    class WaitTasks(Body):
        task_ids: _field(list[TaskId], "the tasks to wait for", min_length=1, max_length=batch)
        wait: (
            _field(float, "seconds to hold the request while none is finished", ge=0, le=max_wait)
            | None
        ) = 0.0

    return Requests(NewTask, NewTasks, Claim, Results, Release, WaitTasks)


# -- answers (declared for the document; the routes build plain dicts) -----------------


class Answer(Struct, forbid_unknown_fields=True, kw_only=True):
    """An answer: every field it has is listed."""


Time = Annotated[
    str, Meta(extra_json_schema={"format": "date-time", "description": "ISO 8601, UTC"})
]
Count = Annotated[int, Meta(ge=0)]
Status = Literal[STATUSES]
AnswerId = _field(str, "opaque: compare it, don't parse it")
# What an attempt in a task's history ended with (null while it runs).
OUTCOMES = (
    "completed",
    "failed",
    "expired",
    "worker dead",
    "worker restarted",
    "released",
    "cancelled",
    "superseded",
)


class Error(Answer):
    error: _field(str, "one clear sentence", min_length=1)


class Submitted(Answer):
    task_id: AnswerId
    status: _field(
        Literal["pending", "waiting", "cancelled"],
        "waiting: some of its dependencies are not completed; cancelled: one already "
        "failed or was cancelled",
    )


class TaskStatus(Answer):
    task_id: AnswerId
    status: Status


class Cancelled(Answer):
    task_id: AnswerId
    status: Literal["cancelled"]


class Refusal(Answer):
    task_id: _field(str, "null when the item had no string task_id") | None
    error: Annotated[str, Meta(min_length=1)]
    code: Literal[400, 404, 409]


class Attempt(Answer):
    attempt: Annotated[int, Meta(ge=1)]
    worker_id: str
    started_at: Time
    finished_at: Time | None
    outcome: Literal[OUTCOMES] | None
    error: str | None


class Progress(Answer):
    fraction: Annotated[float, Meta(ge=0, le=1)]
    message: str
    updated_at: Time  # when the dispatcher stored it


class ScheduleMark(Answer):
    name: _field(str, "the schedule that created the task")
    tick: _field(str, "the tick it was created for, ISO 8601 UTC (2026-12-04T23:05:00Z)")


class TaskSummary(Answer):
    task_id: AnswerId
    type: str
    queue: str
    payload: _field(dict, "as submitted, defaults filled in")
    status: Status
    result: _field(Any, "what the task returned (any JSON), null until completed")
    error: str | None
    attempts: Count
    max_retries: Count
    priority: int
    worker_id: str | None
    created_at: Time
    started_at: Time | None
    finished_at: Time | None
    expires_at: _field(Time, "never run if not started by then (expires_in)") | None
    progress: (
        _field(
            Progress,
            "the last progress its running (or last) attempt reported; null before any, "
            "and again when a new attempt starts",
        )
        | None
    )
    schedule: (
        _field(ScheduleMark, "the schedule and tick that created it; null: a client did") | None
    )
    depends_on: _field(list[AnswerId], "the tasks it waits for (empty: none)")


class Task(TaskSummary):
    history: list[Attempt]
    dependents: _field(list[AnswerId], "the tasks that depend on this one")


class Finished(Answer):
    tasks: _field(list[Task], "the finished ones, with their history, in the order asked")
    missing: _field(list[str], "ids of no stored task (never submitted, or past retention)")


class TaskList(Answer):
    tasks: list[TaskSummary]
    limit: int
    offset: int


class ClaimedTask(Answer):
    task_id: AnswerId
    type: str
    queue: str
    payload: dict
    attempt: Annotated[int, Meta(ge=1)]
    timeout: _field(float, "seconds")
    lease_token: str
    lease_expires_at: Time
    dependencies: (
        _field(
            dict[str, Any],
            "{task_id: result} of its dependencies (only for a task that has some; a "
            "dependency deleted by retention is left out)",
        )
        | UnsetType
    ) = msgspec.UNSET


class Claimed(Answer):
    tasks: list[ClaimedTask]


class TaskIds(Answer):
    task_ids: list[str]


class Released(Answer):
    released: Count


class Beat(Answer):
    worker_id: str
    abandon: list[str]
    lease_expires_at: Time


Counts = msgspec.defstruct("Counts", [(status, Count) for status in STATUSES], bases=(Answer,))


class WorkerCounts(Answer):
    alive: Count
    dead: Count
    stopped: Count


class Stats(Answer):
    tasks: Counts
    workers: WorkerCounts
    throughput_per_minute: Count
    oldest_pending_age_seconds: Annotated[float, Meta(ge=0)] | None
    queues: dict[str, Counts]
    types: dict[str, Counts]
    queue_oldest_pending_age_seconds: _field(
        dict[str, Annotated[float, Meta(ge=0)]],
        "each queue's oldest ready pending task's wait (queues with none left out)",
    )


class Worker(Answer):
    worker_id: str
    instance_id: _field(str, "empty if none was sent")
    status: Literal["alive", "stopping", "stopped", "dead"]
    first_seen: Time
    last_heartbeat: Time
    current_tasks: list[AnswerId]
    queues: _field(list[str], "the queues of its last claim; null before its first") | None
    attempts_completed: _field(int, "attempts it ran to completion (not tasks)", ge=0)
    attempts_failed: _field(int, "attempts it reported failed (a task retried counts each)", ge=0)
    concurrency: _field(int, "tasks it runs at once, as its heartbeats say", ge=1) | None
    progress: _field(dict[AnswerId, Progress], "of its current tasks, those that reported progress")


class Workers(Answer):
    workers: list[Worker]


class TaskType(Answer):
    name: str
    schema: _field(dict, "the payload's JSON Schema")
    defaults: _field(dict, "the payload fields filled in when left out")
    options: _field(
        dict, "the type's defaults for queue, priority, timeout, max_retries (those it sets)"
    )
    description: _field(str, "the first line of its docstring")


class TaskTypes(Answer):
    task_types: list[TaskType]


class Schedule(Answer):
    name: str
    cron: str | None
    every: int | None
    timezone: str
    catch_up: Literal["one", "none", "all"]
    task: _field(dict, "the task template, as given")
    enabled: bool
    next_run_at: _field(Time, "the next tick to fire; null while disabled or broken") | None
    last_run_at: _field(Time, "when a tick last created a task") | None
    last_tick: _field(str, "the tick of that task, ISO 8601 UTC") | None
    last_task_id: _field(str, "the task the last tick created") | None
    error: _field(str, "why ticks are being skipped (an invalid task template)") | None
    created_at: Time
    updated_at: Time


class ScheduleList(Answer):
    schedules: _field(list[Schedule], "sorted by name")


class Deleted(Answer):
    name: str
    deleted: Literal[True]


class AuditRecord(Answer):
    id: _field(int, "the record's number: a later record has a larger one")
    at: _field(Time, "when the change was made (after it committed)")
    name: _field(str, "who made it: the token's name (anonymous without tokens; system)")
    role: _field(str, "that token's role")
    action: _field(str, "what was done: task.cancel, queue.update, tasks.bulk_retry, ...")
    target: _field(str, "to what: task <id>, queue <name>, schedule <name>, a selection")
    request_id: _field(str, "the request's X-Request-ID") | None
    client: _field(str, "the address the request came from") | None
    detail: _field(Any, "anything more, as JSON (null: nothing)")


class AuditList(Answer):
    records: _field(list[AuditRecord], "newest first")
    limit: int
    offset: int


class RateLimitSetting(Answer):
    count: Annotated[int, Meta(ge=1)]
    per_seconds: Annotated[float, Meta(gt=0)]


class QueueSettings(Answer):
    name: str
    paused: bool
    max_in_flight: Annotated[int, Meta(ge=1)] | None
    rate_limit: RateLimitSetting | None
    updated_at: _field(Time, "when its settings last changed; null: never set") | None


class Queue(QueueSettings):
    counts: _field(Counts, "its tasks by status")


class Queues(Answer):
    queues: _field(list[Queue], "every queue with tasks or settings, by name")


class Health(Answer):
    status: Literal["ok", "degraded"]
    error: str | UnsetType = msgspec.UNSET


class WhoAmI(Answer):
    name: str  # the token's NAME ("env": API_TOKEN's; "anonymous": no tokens configured)
    role: Literal["admin", "submit", "worker", "read"]
