"""GET /metrics: Prometheus counters and histograms kept by the request path, and gauges
read from storage at scrape time.

Across gunicorn's processes the counters use prometheus_client's multiprocess mode:
`python -m dispatcher` makes a fresh PROMETHEUS_MULTIPROC_DIR before the server forks
(see __main__.py), each process writes its values there, and a scrape, answered by any
process, adds them up. Without that variable (the tests that call create_app in-process)
the counters live in prometheus_client's default registry.

Labels: submissions carry the queue and type of what they submitted; results,
cancellations and the reaper name only task ids, and storage tells the queue and type of
each task they moved (a `Moved` status, ReapReport.expired_queues), read in the
statements that move it, so the counters they feed are labelled too without a read per
task (docs/API.md lists every name).
"""

from __future__ import annotations

import os
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily

from .cached import Cached
from .storage import Moved
from .storage.errors import DatabaseUnavailable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
GAUGE_CACHE_S = 1.0  # storage is read at most once a second, whatever the scrape rate

SUBMITTED = Counter("taskqueue_tasks_submitted", "Tasks created by submissions", ["queue", "type"])
FINISHED = Counter(
    "taskqueue_tasks_finished",
    "Tasks finished: results accepted as completed or (finally) failed, and cancellations",
    ["queue", "type", "outcome"],
)
RETRIES = Counter(
    "taskqueue_task_retries", "Failed results sent back to pending for a retry", ["queue", "type"]
)
LEASE_EXPIRATIONS = Counter(
    "taskqueue_lease_expirations", "Leases found expired by the reaper", ["queue"]
)
EXPIRED_TASKS = Counter(
    "taskqueue_tasks_expired",
    "Tasks never run: not started within their expires_in (also counted as cancelled)",
    ["queue"],
)
FENCED = Counter("taskqueue_fenced_results", "Results refused with 409 (fenced)")
DATABASE_ERRORS = Counter(
    "taskqueue_database_errors", "Requests or reaper sweeps that lost the database"
)
SCHEDULE_FIRES = Counter(
    "taskqueue_schedule_fires", "Tasks created by a schedule's ticks (one per tick)", ["schedule"]
)
SCHEDULE_ERRORS = Counter(
    "taskqueue_schedule_errors",
    "Firings of a schedule skipped because its task template is no longer valid",
    ["schedule"],
)
AUDIT_RECORDS = Counter(
    "taskqueue_audit_records",
    "Audit records written (a change by a person or a script: docs/SECURITY.md)",
    ["action"],
)
AUDIT_WRITE_ERRORS = Counter(
    "taskqueue_audit_write_errors",
    "Changes made whose audit record could not be written (logged at ERROR)",
)
REQUEST_DURATION = Histogram(
    "taskqueue_http_request_duration_seconds",
    "Time to answer a request, by route rule",
    ["endpoint", "method", "status"],
)


def count_submitted(tasks: Iterable, created: Iterable[bool]) -> None:
    tally = Tally((t.queue, t.type) for t, new in zip(tasks, created, strict=True) if new)
    for (queue, type_), n in tally.items():
        SUBMITTED.labels(queue, type_).inc(n)


def count_results(outcomes: Iterable[str | Exception], is_fenced: Callable) -> None:
    """What storage.finish answered: a result that moved its task (a Moved) counts as
    finished (completed, failed) or as a retry (pending again); one that moved nothing
    (a repeat, a failure under an earlier lease) counts nowhere; a 409 counts as fenced."""
    moved: dict[tuple[str, str, str], int] = {}  # (queue, type, status): n
    fenced = 0
    for o in outcomes:
        if isinstance(o, Moved):
            key = (o.queue, o.type, o)
            moved[key] = moved.get(key, 0) + 1
        elif isinstance(o, Exception) and is_fenced(o):
            fenced += 1
    for (queue, type_, status), n in moved.items():
        if status == "pending":
            RETRIES.labels(queue, type_).inc(n)
        else:
            FINISHED.labels(queue, type_, status).inc(n)
    if fenced:
        FENCED.inc(fenced)


def count_cancelled(moved: Moved) -> None:
    FINISHED.labels(moved.queue, moved.type, "cancelled").inc()


def count_bulk_cancelled(moved: Mapping[tuple[str, str], int]) -> None:
    """A bulk cancel's tasks, n by (queue, type)."""
    for (queue, type_), n in moved.items():
        FINISHED.labels(queue, type_, "cancelled").inc(n)


def count_cascaded(rows: Iterable[Mapping]) -> None:
    """Tasks cancelled because a dependency failed or was cancelled (storage.on_cascade)."""
    count_bulk_cancelled(Tally((r["queue"], r["type"]) for r in rows))


def count_unstarted_expired(tasks: Iterable[tuple[str, str]]) -> None:
    """Tasks a claim or the reaper cancelled past their expiry, as (queue, type)."""
    for (queue, type_), n in Tally(tasks).items():
        FINISHED.labels(queue, type_, "cancelled").inc(n)
        EXPIRED_TASKS.labels(queue).inc(n)


def count_expired(queues: Iterable[str]) -> None:
    for queue, n in Tally(queues).items():
        LEASE_EXPIRATIONS.labels(queue).inc(n)


class StorageCollector:
    """taskqueue_tasks, taskqueue_oldest_pending_age_seconds and taskqueue_workers from
    storage.stats(), cached for GAUGE_CACHE_S."""

    def __init__(self, stats: Callable[[], dict], clock: Callable[[], float] = time.monotonic):
        self.cache = Cached(stats, GAUGE_CACHE_S, clock)

    def current(self) -> dict:
        return self.cache.get()[0]

    def collect(self):
        try:
            s = self.current()
        except DatabaseUnavailable:  # the counters still go out; the gauges are missing
            DATABASE_ERRORS.inc()
            return
        tasks = GaugeMetricFamily(
            "taskqueue_tasks", "Tasks by queue and status", labels=["queue", "status"]
        )
        for queue, counts in sorted(s["queues"].items()):
            for status, n in counts.items():
                tasks.add_metric([queue, status], n)
        yield tasks
        ages = s["queue_oldest_pending_age_seconds"]
        age = GaugeMetricFamily(
            "taskqueue_oldest_pending_age_seconds",
            "Wait of the queue's oldest ready pending task (0 when none)",
            labels=["queue"],
        )
        for queue in sorted(s["queues"]):
            age.add_metric([queue], ages.get(queue, 0.0))
        yield age
        workers = GaugeMetricFamily("taskqueue_workers", "Workers by status", labels=["status"])
        for status in ("alive", "dead", "stopped"):
            workers.add_metric([status], s["workers"][status])
        yield workers
        yield from queue_gauges(s.get("queue_settings", ()))


def queue_gauges(settings: Iterable[Mapping]):
    """The settings of the queues that have some (GET /queues)."""
    paused = GaugeMetricFamily(
        "taskqueue_queue_paused", "1 while the queue is paused", labels=["queue"]
    )
    cap = GaugeMetricFamily(
        "taskqueue_queue_max_in_flight",
        "The queue's max_in_flight (queues without one left out)",
        labels=["queue"],
    )
    rate = GaugeMetricFamily(
        "taskqueue_queue_rate_limit_count",
        "Claims the queue allows per rate window (queues without a rate limit left out)",
        labels=["queue"],
    )
    window = GaugeMetricFamily(
        "taskqueue_queue_rate_limit_seconds", "The queue's rate window", labels=["queue"]
    )
    for q in settings:
        paused.add_metric([q["name"]], 1 if q["paused"] else 0)
        if q["max_in_flight"] is not None:
            cap.add_metric([q["name"]], q["max_in_flight"])
        if q["rate_limit"] is not None:
            rate.add_metric([q["name"]], q["rate_limit"]["count"])
            window.add_metric([q["name"]], q["rate_limit"]["per_seconds"])
    yield from (paused, cap, rate, window)


class Exposition:
    """What GET /metrics answers: the counters (summed over the server processes in
    multiprocess mode) and this app's storage gauges."""

    def __init__(self, stats: Callable[[], dict]):
        self.gauges = CollectorRegistry(auto_describe=False)
        self.collector = StorageCollector(stats)
        self.gauges.register(self.collector)
        self.shared: CollectorRegistry | None = None
        if os.environ.get(MULTIPROC_ENV):
            self.shared = CollectorRegistry(auto_describe=False)
            multiprocess.MultiProcessCollector(self.shared)

    def render(self) -> bytes:
        counters = generate_latest(self.shared if self.shared is not None else REGISTRY)
        return counters + generate_latest(self.gauges)


class Timing:
    """WSGI middleware: one histogram observation per request, labelled with the route's
    rule (not the raw path, so task ids do not make new series)."""

    def __init__(self, app, current_rule: Callable[[], str | None]):
        self.app = app
        self.current_rule = current_rule

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        seen = {}

        def start(status, headers, exc_info=None):
            seen["status"] = status[:3]
            seen["rule"] = self.current_rule()
            return start_response(status, headers, exc_info)

        try:
            return self.app(environ, start)
        finally:
            REQUEST_DURATION.labels(
                seen.get("rule") or "unmatched",
                environ.get("REQUEST_METHOD", ""),
                seen.get("status", "500"),
            ).observe(time.perf_counter() - started)
