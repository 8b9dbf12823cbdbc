"""The HTTP API: parse, one storage call, JSON back. No SQL, no state decisions."""

from __future__ import annotations

import functools
import logging
import sys
import time
from datetime import datetime, timezone

from flask import Blueprint, current_app, request
from werkzeug.exceptions import ClientDisconnected

from . import audit, longpoll, metrics, openapi, parse
from .errors import CLIENT_ERRORS, RequestTimeout, UnknownDependency, WorkerStopping, http_status
from .storage import FINISHED

log = logging.getLogger("dispatcher")
bp = Blueprint("api", __name__)

TIME_FIELDS = (
    "created_at",
    "started_at",
    "finished_at",
    "lease_expires_at",
    "last_heartbeat",
    "first_seen",
    "run_at",
    "expires_at",
)


def ctx():
    return current_app.extensions["taskqueue"]


@functools.lru_cache(maxsize=1024)  # the tasks of one claim share their lease_expires_at
def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")


def with_iso(item: dict) -> dict:
    for key in TIME_FIELDS:
        if key in item:
            item[key] = iso(item[key])
    for attempt in item.get("history", ()):
        with_iso(attempt)
    if progress := item.get("progress"):  # a task's, or a worker's by task id
        for p in progress.values() if "current_tasks" in item else (progress,):
            p["updated_at"] = iso(p["updated_at"])
    return item


def json_body() -> dict:
    """The request's body as a JSON object, whatever its Content-Type (curl -d sends
    none); a client that stops sending it is cut off after DISPATCHER_READ_TIMEOUT."""
    try:
        raw = request.get_data(cache=True)
    except (OSError, ClientDisconnected) as exc:
        # werkzeug turns the socket's read time-out into ClientDisconnected
        if isinstance(exc, TimeoutError) or isinstance(exc.__context__, TimeoutError):
            raise RequestTimeout(
                f"request body not received within {ctx().config.dispatcher_read_timeout:g} s "
                "(DISPATCHER_READ_TIMEOUT)"
            ) from None
        raise parse.BadRequest("the request body ended before its Content-Length") from None
    try:
        data = current_app.json.loads(raw) if raw else None
    except RecursionError:
        raise parse.BadRequest("request body is nested too deeply") from None
    except ValueError as exc:
        if "integer string conversion" in str(exc):
            digits = sys.get_int_max_str_digits()
            raise parse.BadRequest(
                f"a number in the request body is too large (at most {digits} digits)"
            ) from None
        data = None
    return parse.body(data)


# -- submission ---------------------------------------------------------------------


@bp.post("/submit-task")
def submit_task():
    c = ctx()
    task = parse.new_task(json_body(), c.config, c.registry)
    try:
        [(task_id, created)] = c.storage.submit([task], now=c.clock())
    except UnknownDependency as exc:
        raise exc.alone() from None
    if created:
        metrics.SUBMITTED.labels(task.queue, task.type).inc()
        _log_submitted(task_id, task)
        # with dependencies: waiting, pending or cancelled (one read, for those only)
        status = c.storage.status_of(task_id) if task.depends_on else "pending"
        return {"task_id": task_id, "status": status}, 201
    log.info("idempotent repeat of task %s key=%s", task_id, task.idempotency_key)
    return {"task_id": task_id, "status": c.storage.status_of(task_id)}, 200


def _log_submitted(task_id: str, task) -> None:
    extra = {"task_id": task_id, "queue": task.queue}
    log.info("submitted task %s type=%s queue=%s", task_id, task.type, task.queue, extra=extra)


@bp.post("/submit-tasks")
def submit_tasks():
    c = ctx()
    tasks = parse.new_tasks(json_body(), c.config, c.registry)
    ids = c.storage.submit(tasks, now=c.clock())
    metrics.count_submitted(tasks, (created for _, created in ids))
    if log.isEnabledFor(logging.INFO):
        for (task_id, created), task in zip(ids, tasks, strict=True):
            if created:
                _log_submitted(task_id, task)
    return {"task_ids": [task_id for task_id, _ in ids]}, 201


# -- workers ------------------------------------------------------------------------


@bp.post("/get-task")
def get_task():
    c = ctx()
    tasks = _claim(c, parse.claim(json_body(), c.config))
    return {"tasks": [with_iso(t) for t in tasks]}


def _claim(c, body) -> list[dict]:
    """A worker's claim (POST /get-task, or one that came with its results): the tasks
    leased to it, after holding up to `body.wait` seconds while none is ready."""
    worker_id, instance_id, queues = body.worker_id, body.instance_id, body.queues
    wait, max_tasks = body.wait, body.max_tasks
    claim = {"queues": queues, "max_tasks": max_tasks, "lease_s": c.config.lease_seconds}

    def take() -> list[dict]:
        return c.storage.claim(worker_id, instance_id, now=c.clock(), **claim)

    try:
        with c.held.hold(wait > 0):
            tasks = longpoll.claim_waiting(take, queues, wait, c.wakeup, c.ready, c.clock)
    except WorkerStopping:  # it said it is shutting down: nothing more for it
        tasks = []
    if tasks and log.isEnabledFor(logging.INFO):
        for t in tasks:
            log.info(
                "claimed task %s worker=%s attempt=%d",
                t["task_id"],
                worker_id,
                t["attempt"],
                extra={"task_id": t["task_id"], "worker_id": worker_id, "attempt": t["attempt"]},
            )
    return tasks


def _log_result(item, outcome: str | Exception) -> None:
    known = {"task_id": item.task_id, "worker_id": item.worker_id}
    if isinstance(outcome, Exception):
        message = "refused result task %s worker=%s: %s"
        log.warning(message, item.task_id, item.worker_id, outcome, extra=known)
    else:
        message = "result task %s worker=%s status=%s"
        log.info(message, item.task_id, item.worker_id, outcome, extra=known)


@bp.post("/submit-result")
def submit_result():
    c = ctx()
    item = parse.result(json_body())
    [outcome] = c.storage.finish([item], now=c.clock())
    metrics.count_results((outcome,), is_fenced)
    _log_result(item, outcome)
    if isinstance(outcome, Exception):
        raise outcome
    return {"task_id": item.task_id, "status": outcome}


@bp.post("/submit-results")
def submit_results():
    c = ctx()
    raw, claim = parse.results(json_body(), c.config)
    answers: list[dict | None] = [None] * len(raw)
    good, positions = [], []
    for i, data in enumerate(raw):
        try:
            good.append(parse.result(data))
            positions.append(i)
        except CLIENT_ERRORS as exc:
            task_id = data.get("task_id") if isinstance(data, dict) else None
            if not isinstance(task_id, str):  # echo an id, never an arbitrary JSON value
                task_id = None
            answers[i] = {"task_id": task_id, "error": str(exc), "code": http_status(exc)}
    outcomes = c.storage.finish(good, now=c.clock()) if good else []
    metrics.count_results(outcomes, is_fenced)
    for i, item, outcome in zip(positions, good, outcomes, strict=True):
        _log_result(item, outcome)
        if isinstance(outcome, Exception):
            answers[i] = {
                "task_id": item.task_id,
                "error": str(outcome),
                "code": http_status(outcome),
            }
        else:
            answers[i] = {"task_id": item.task_id, "status": outcome}
    if claim is None:
        return {"results": answers}
    # the worker's next claim, in the same request (Faktory's ACK+FETCH): after the
    # results' commit, which has woken whoever waits for them. A claim refused (a bad
    # body, a worker taken over, too many held) never undoes the results: it gets its
    # own error, and the worker claims on its own instead.
    time.sleep(0)  # a server greenlet: first let the requests the commit woke answer
    try:
        tasks = _claim(c, parse.claim(claim, c.config))
    except CLIENT_ERRORS as exc:
        error = {"error": str(exc), "code": http_status(exc)}
        return {"results": answers, "tasks": [], "claim_error": error}
    except Exception:  # a bug, a lost database: still never a 500 for stored results
        log.exception("claim sent with results failed worker=%s", claim.get("worker_id"))
        error = {"error": "the claim failed on the dispatcher (see its log)", "code": 500}
        return {"results": answers, "tasks": [], "claim_error": error}
    return {"results": answers, "tasks": [with_iso(t) for t in tasks]}


@bp.post("/release")
def release():
    c = ctx()
    worker_id, items = parse.release(json_body(), c.config)
    released = c.storage.release(worker_id, items, now=c.clock())
    log.info(
        "released %d of %d tasks worker=%s",
        released,
        len(items),
        worker_id,
        extra={"worker_id": worker_id},
    )
    return {"released": released}


@bp.post("/heartbeat")
def heartbeat():
    c = ctx()
    beat = parse.heartbeat(json_body())
    worker_id, instance_id, state = beat.worker_id, beat.instance_id, beat.state
    now = c.clock()
    abandon = c.storage.heartbeat(
        worker_id,
        instance_id,
        beat.task_ids,
        now=now,
        lease_s=c.config.lease_seconds,
        state=state,
        concurrency=beat.concurrency,
        progress=beat.progress,
    )
    if state is not None:  # from now on its claims get nothing (the worker ends its own)
        log.info("worker %s is %s", worker_id, state, extra={"worker_id": worker_id})
    log.debug("heartbeat worker=%s abandon=%s", worker_id, abandon)
    return {
        "worker_id": worker_id,
        "abandon": abandon,
        "lease_expires_at": iso(now + c.config.lease_seconds),
    }


# -- reading ------------------------------------------------------------------------


@bp.get("/task/<task_id>")
def get_task_status(task_id: str):
    c = ctx()
    wait = parse.query_number(request.args, "wait", 0.0, 0.0, c.config.max_wait_seconds)
    deadline = time.monotonic() + wait
    with c.held.hold(wait > 0):
        seen = c.wakeup.generation(wait > 0)
        while c.storage.status_of(task_id) not in FINISHED:  # a one-column read per wake-up
            left = deadline - time.monotonic()
            if left <= 0:
                break
            seen = c.wakeup.wait(seen, left)
    task = c.storage.get(task_id)
    task.pop("timeout", None)
    task.pop("run_at", None)
    return with_iso(task)


@bp.post("/wait-tasks")
def wait_tasks():
    """The finished tasks among many; with `wait`, held until one of them is finished
    (or an id is of no stored task), as GET /task/<id>?wait= is for one."""
    c = ctx()
    task_ids, wait = parse.wait_tasks(json_body(), c.config)
    deadline = time.monotonic() + wait
    with c.held.hold(wait > 0):
        seen = c.wakeup.generation(wait > 0)
        while True:
            finished, missing = c.storage.finished_among(task_ids)
            left = deadline - time.monotonic()
            if finished or missing or left <= 0:
                break
            seen = c.wakeup.wait(seen, left)
    for task in finished:
        task.pop("timeout", None)
        task.pop("run_at", None)
        with_iso(task)
    return {"tasks": finished, "missing": missing}


@bp.get("/tasks")
def list_tasks():
    c = ctx()
    status = parse.status_filter(request.args.get("status"))
    type_ = request.args.get("type") or None
    limit = parse.query_integer(request.args, "limit", 100, 1, c.config.max_batch)
    offset = parse.query_integer(request.args, "offset", 0, 0, parse.MAX_OFFSET)
    tasks = c.storage.list_tasks(status, type_, limit, offset)
    for t in tasks:
        t.pop("timeout", None)
        t.pop("run_at", None)
        with_iso(t)
    return {"tasks": tasks, "limit": limit, "offset": offset}


@bp.post("/task/<task_id>/cancel")
def cancel_task(task_id: str):
    c = ctx()
    status = c.storage.cancel(task_id, now=c.clock())
    metrics.count_cancelled(status)
    log.info("cancelled task %s", task_id, extra={"task_id": task_id})
    audit.record("task.cancel", f"task {task_id}")
    return {"task_id": task_id, "status": status}


@bp.post("/task/<task_id>/retry")
def retry_task(task_id: str):
    c = ctx()
    status = c.storage.retry(task_id, now=c.clock())
    log.info("retry of task %s", task_id, extra={"task_id": task_id})
    audit.record("task.retry", f"task {task_id}")
    return {"task_id": task_id, "status": status}


# -- queues -------------------------------------------------------------------------


@bp.get("/queues")
def list_queues():
    c = ctx()
    return {"queues": [_iso_settings(q) for q in c.storage.queues(now=c.clock())]}


@bp.put("/queues/<path:name>")
def set_queue(name: str):
    c = ctx()
    name = parse.queue_name(name)
    changes = parse.queue_changes(json_body())
    settings = c.storage.set_queue(name, changes, now=c.clock())
    log.info("queue %s settings changed: %s", name, changes, extra={"queue": name})
    audit.record("queue.update", f"queue {name}", changes)
    return _iso_settings(settings)


def _iso_settings(queue: dict) -> dict:
    queue["updated_at"] = iso(queue["updated_at"])
    return queue


@bp.get("/stats")
def stats():
    c = ctx()
    return c.storage.stats(now=c.clock(), dead_after=c.config.worker_dead_after)


@bp.get("/workers")
def workers():
    c = ctx()
    found = c.storage.workers(now=c.clock(), dead_after=c.config.worker_dead_after)
    return {"workers": [with_iso(w) for w in found]}


@bp.get("/health")
def health():
    c = ctx()
    problem = c.storage.health()
    if problem is None:
        return {"status": "ok"}
    return {"status": "degraded", "error": problem}


@bp.get("/metrics")
def metrics_text():
    return ctx().metrics.render(), 200, {"Content-Type": metrics.CONTENT_TYPE}


def is_fenced(exc: Exception) -> bool:
    return http_status(exc) == 409


@bp.get("/openapi.json")
def openapi_document():
    c = ctx()
    return openapi.document(c.config, c.registry.types())


@bp.get("/task-types")
def task_types():
    """Every registered task type: its payload's JSON Schema, defaults and description."""
    return {"task_types": ctx().registry.describe()}
