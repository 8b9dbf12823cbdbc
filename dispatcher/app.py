"""The app factory: gunicorn and the tests both build the dispatcher here."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask, has_request_context, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import RequestEntityTooLarge

import tasks
from common import logs
from common.config import Config
from common.logs import setup_logging

from . import access, audit, audit_routes, dashboard, errors, metrics, routes, schedule_routes
from .identity import ROLES, SYSTEM
from .longpoll import Held, ReadyCache
from .scheduler import Scheduler
from .storage import Storage, open_storage
from .storage.errors import DatabaseUnavailable, StorageError
from .tokens import Entry, Reloaded, Tokens, from_env
from .wakeup import Wakeup

log = logging.getLogger("dispatcher")

# body bytes a 413 still reads, so the client gets the answer rather than a reset
DRAIN_LIMIT = 64 * 1024 * 1024


@dataclass
class Context:
    """Everything a request needs; one per app, held in app.extensions."""

    config: Config
    storage: Storage
    registry: tasks.Registry
    wakeup: Wakeup
    clock: Callable[[], float]
    held: Held
    ready: ReadyCache
    metrics: metrics.Exposition
    tokens: Tokens
    scheduler: Scheduler | None = None  # fires due schedules (None: no background threads)


def create_app(
    config: Config, clock: Callable[[], float] = time.time, background: bool = True
) -> Flask:
    """Open storage, register routes and error handlers; with `background`, start the
    reaper thread (expired leases, dead workers, retention) and the scheduler's (due
    periodic tasks)."""
    setup_logging(config.log_level, config.log_format)
    if config.log_format == "json":
        logs.set_request_id_source(current_request_id)
    tasks.load_modules(config.modules)
    storage = open_storage(config)
    storage.on_cascade = metrics.count_cascaded  # cancelled by a dependency
    storage.on_expired = metrics.count_unstarted_expired  # not started in time
    app = Flask(__name__, static_folder=None)  # no files to serve: no /static route
    app.json = StrictJSONProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = config.max_request_bytes
    app.json.sort_keys = False
    app.json.compact = True
    ctx = Context(
        config,
        storage,
        tasks.registry,
        Wakeup.for_storage(storage),
        clock,
        Held(config.dispatcher_connections // 2),
        ReadyCache(storage, clock),
        metrics.Exposition(lambda: _gauges(storage, clock(), config)),
        _tokens(config, storage, clock),
    )
    app.extensions["taskqueue"] = ctx
    app.wsgi_app = metrics.Timing(app.wsgi_app, current_rule)
    app.wsgi_app = RequestIds(app.wsgi_app)  # outermost: every response carries one
    if ctx.tokens.configured:
        app.before_request(access.require_token(ctx.tokens))
    app.before_request(_refuse_large_bodies(config.max_request_bytes))
    app.register_blueprint(routes.bp)
    app.register_blueprint(schedule_routes.bp)
    app.register_blueprint(access.bp)
    app.register_blueprint(audit_routes.bp)
    dashboard.register(app)
    errors.register(app)
    if background:
        ctx.wakeup.start()  # a LISTEN connection is ready before the first long poll
        threading.Thread(target=_reaper, args=(ctx,), name="reaper", daemon=True).start()
        ctx.scheduler = Scheduler(storage, config, tasks.registry, clock)
        ctx.scheduler.start()
    return app


def _tokens(config: Config, storage: Storage, clock: Callable[[], float]) -> Tokens:
    """The tokens in force in this server process: the file re-read when it changes
    (each reload audited once), the dashboard's cookies signed with the database's
    shared secret, so that any process or dispatcher takes them."""
    if not (from_env(config.api_token) or config.api_tokens_file):
        return Tokens("")  # none: the API is open, no session key to make
    try:
        secret = storage.shared_secret("dashboard-session")
    except StorageError as exc:  # a random key: sessions hold in this process only
        log.warning("dashboard sessions are this process's only: %s", exc)
        secret = None
    reloaded = _audit_reload(storage, clock)
    return Tokens(
        config.api_token, config.api_tokens_file, clock, reloaded, strict=False, secret=secret
    )


def _audit_reload(storage: Storage, clock: Callable[[], float]) -> Reloaded:
    """The audit record of a tokens-file reload: by the system, keyed by the file's
    version, so every process that reloads the same file writes one record of it."""

    def reloaded(path: str, entries: list[Entry], version: str) -> None:
        roles = {role: sum(e.role == role for e in entries) for role in ROLES}
        detail = {
            "file": path,
            "tokens": len(entries),
            "roles": {role: n for role, n in roles.items() if n},
        }
        key = f"tokens.reload:{path}:{version}"
        audit.record("tokens.reload", "tokens file", detail, who=SYSTEM, key=key,
                     storage=storage, clock=clock)  # fmt: skip

    return reloaded


def _gauges(storage: Storage, now: float, config: Config) -> dict:
    """What the metrics' gauges are read from: the stats, and the queues' settings."""
    stats = storage.stats(now=now, dead_after=config.worker_dead_after)
    return {**stats, "queue_settings": storage.queue_settings()}


class StrictJSONProvider(DefaultJSONProvider):
    """JSON as RFC 8259 has it: NaN and Infinity are refused on the way in."""

    def loads(self, s, **kwargs):
        return json.loads(s, parse_constant=_not_json, **kwargs)


def _not_json(constant: str):
    raise ValueError(f"{constant} is not valid JSON")


REQUEST_ID_KEY = "taskqueue.request_id"  # where the WSGI environ holds it


class RequestIds:
    """WSGI middleware: the request's id is the client's X-Request-ID when valid (1-128
    of [A-Za-z0-9._-]), else a new one; every response (errors too) carries it back, and
    the log lines of the request carry it (current_request_id). Cheaper than Flask's
    before/after_request hooks: no context proxies, one header appended."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        rid = environ.get("HTTP_X_REQUEST_ID")
        if rid is None or not logs.valid_request_id(rid):
            rid = logs.new_request_id()
        environ[REQUEST_ID_KEY] = rid

        def start(status, headers, exc_info=None):
            headers.append(("X-Request-ID", rid))
            return start_response(status, headers, exc_info)

        return self.app(environ, start)


def current_request_id() -> str | None:
    """The id of the request being served (None outside one: the reaper, start-up)."""
    return request.environ.get(REQUEST_ID_KEY) if has_request_context() else None


def current_rule() -> str | None:
    """The rule of the route being served (None when no route matched)."""
    if not has_request_context():
        return None
    rule = request.url_rule
    return None if rule is None else rule.rule


def _refuse_large_bodies(limit: int):
    """413 for a body over MAX_REQUEST_BYTES, after reading it (up to DRAIN_LIMIT).
    Answered unread, gunicorn closes a socket still holding the body, the kernel resets
    the connection, and a client sending a few MB sees a broken pipe instead of the 413
    (a worker would take it for an outage and re-send that result until
    CACHE_TTL_SECONDS)."""

    def check():
        length = request.content_length
        if length is None or length <= limit:
            return None
        # Only a request the API takes a body for is drained (it passed the token check
        # when there is one); any other is answered at once and its connection closed
        # by the server after at most 64 KB (server.py), so /health cannot be made to
        # read an upload.
        if (
            request.method == "POST"
            and request.url_rule is not None
            and not dashboard.is_dashboard_request()  # its forms are small; no login yet
        ):
            stream = request.environ["wsgi.input"]
            left = min(length, DRAIN_LIMIT)
            try:
                while left > 0 and (chunk := stream.read(min(left, 65536))):
                    left -= len(chunk)
            except OSError:  # the client stopped sending: the server closes the connection
                pass
        raise RequestEntityTooLarge()

    return check


def _reaper(ctx: Context) -> None:
    while True:
        reap_once(ctx)
        time.sleep(ctx.config.reap_interval)


def reap_once(ctx: Context) -> None:
    """One sweep of the reaper (storage.reap), logged and counted; it never raises: the
    next sweep tries again."""
    config = ctx.config
    try:
        report = ctx.storage.reap(
            now=ctx.clock(),
            dead_after=config.worker_dead_after,
            retention_s=config.task_retention_seconds,
            forget_after=config.worker_forget_after or float("inf"),
            audit_retention_s=config.audit_retention_seconds,
        )
        for worker_id in report.dead_workers:
            log.warning(
                "worker %s declared dead (no heartbeat)",
                worker_id,
                extra={"worker_id": worker_id},
            )
        for task_id in report.rescued:
            log.warning(
                "task %s back to the queue: its worker is dead",
                task_id,
                extra={"task_id": task_id},
            )
        for task_id in report.expired:
            log.warning("task %s lease expired", task_id, extra={"task_id": task_id})
        if report.unstarted:
            log.info("cancelled %d tasks not started within expires_in", len(report.unstarted))
        if report.forgotten:
            log.info("forgot %d workers gone for WORKER_FORGET_AFTER", report.forgotten)
        if report.deleted:
            log.info("deleted %d finished tasks past retention", report.deleted)
        if report.audit_deleted:
            log.info("deleted %d audit records past retention", report.audit_deleted)
        metrics.count_expired(report.expired_queues)
    except Exception as exc:  # the reaper never dies; the next sweep tries again
        if isinstance(exc, DatabaseUnavailable):
            metrics.DATABASE_ERRORS.inc()
        log.error("reap failed: %s", exc)
