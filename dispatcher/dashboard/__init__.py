"""The web dashboard: server-rendered pages (Jinja) at GET / and under /dashboard/.

Overview (counts, a table per queue, a throughput chart that refreshes itself), Tasks
(filters, pages of 50 newest first, bulk retry and cancel after a confirmation), Task
(payload, result or error, the attempt timeline, cancel and retry), Workers and Queues
(each queue's counts and controls: pause, resume, max_in_flight, rate limit), Schedules
(schedules_page.py) and Audit (audit_page.py: the audit trail, newest first). Pages
read storage through its named operations, like the API's routes; state changes are
POSTs checked by auth.check_post. docs/DASHBOARD.md shows each page.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from urllib.parse import urlencode, urlsplit

from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.exceptions import HTTPException

from common.statuses import STATUSES

from .. import access, audit, identity, metrics, parse
from ..cached import Cached
from ..errors import BadRequest
from ..storage.browse import BULK, TaskFilter
from ..storage.errors import Conflict, TaskNotFound
from . import auth
from .views import Chart, Throughput, ago, pretty, queue_rows

log = logging.getLogger("dispatcher")
VIA = {"via": "dashboard"}  # in the detail of the audit records of the dashboard's changes
PAGE_SIZE = 50
REFRESH_S = 5

bp = Blueprint(
    "dashboard",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/dashboard/static",
)


TOTALS_TTL_S = 30.0  # the full counts (every task's index entry) at most this often


@dataclass
class State:
    throughput: Throughput
    totals: Cached  # storage.stats(): counts by status, queue and type


def register(app: Flask) -> None:
    ctx = app.extensions["taskqueue"]
    auth.configure(app, ctx.tokens, tls=bool(ctx.config.tls_cert_file))

    def stats() -> dict:
        return ctx.storage.stats(now=ctx.clock(), dead_after=ctx.config.worker_dead_after)

    app.extensions["taskqueue.dashboard"] = State(
        Throughput(ctx.storage.finished_since), Cached(stats, TOTALS_TTL_S, time.monotonic)
    )
    app.register_blueprint(bp)


def state() -> State:
    return current_app.extensions["taskqueue.dashboard"]


def is_dashboard_request() -> bool:
    """The request matched one of the dashboard's routes (its own login guards it)."""
    return request.blueprint == bp.name


def ctx():
    return current_app.extensions["taskqueue"]


def tokens():
    return ctx().tokens


ANY_ROLE = ("dashboard.login", "dashboard.logout", "dashboard.static")


@bp.before_request
def require_login():
    if request.endpoint in ("dashboard.login", "dashboard.static"):
        return None
    if request.endpoint == "dashboard.logout":  # whoever, even with a session gone stale
        if not auth.same_origin():
            abort(403, "cross-site request refused")
        return None
    who = auth.logged_in(tokens())
    if who is None:
        if request.method != "GET":
            abort(401, "log in first")
        return redirect(url_for("dashboard.login", next=request.full_path.rstrip("?")))
    identity.set_current(who)
    if request.method == "POST":
        auth.check_post(tokens())
    if request.endpoint not in ANY_ROLE and not access.allowed(
        who.role, request.method, request.endpoint
    ):
        abort(403, access.refusal(who))
    return None


@bp.errorhandler(HTTPException)
def error_page(exc: HTTPException):
    """The dashboard's refusals as a page (the API's stay JSON)."""
    code = exc.code or 500
    return render_template("error.html", code=code, message=exc.description), code


@bp.after_request
def page_headers(response):
    """No framing (clickjacking), scripts and styles from this site only, no caching of
    pages that show tasks."""
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'"
    )
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    if request.endpoint != "dashboard.static":
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.app_template_global()
def csrf_field() -> str:
    return auth.csrf_token(tokens())


@bp.app_template_global()
def who() -> identity.Identity | None:
    """Who this browser session belongs to (None: nobody logged in; without tokens, the
    anonymous admin)."""
    return auth.logged_in(tokens())


@bp.app_template_global()
def may_change() -> bool:
    """Show the buttons that change something (an admin's pages only)."""
    person = who()
    return person is not None and person.role == "admin"


@bp.app_template_filter("ago")
def ago_filter(ts: float | None) -> str:
    """'3 min ago', 'just now', or '—' for no time."""
    if ts is None:
        return "—"
    age = ago(ctx().clock() - ts)
    return age if age == "just now" else f"{age} ago"


@bp.app_template_filter("duration")
def duration_filter(seconds: float | None) -> str:
    return ago(seconds)


@bp.app_template_global()
def login_required() -> bool:
    return tokens().configured


# -- login --------------------------------------------------------------------------


@bp.route("/login", methods=["GET", "POST"])
def login():
    target = _local(request.values.get("next", "/"))
    if not tokens().configured:
        return redirect(target)
    if request.method == "GET":
        return render_template("login.html", next=target, error=None)
    if not auth.same_origin():
        abort(403, "cross-site request refused")
    if auth.log_in(tokens(), request.form.get("token", "")):
        return redirect(target)
    return render_template("login.html", next=target, error="wrong token"), 401


@bp.post("/logout")
def logout():
    if tokens().configured:
        auth.log_out()
    return redirect(url_for("dashboard.login"))


def _local(target: str) -> str:
    """Only a path of this site to go on to after login (no open redirect): one leading
    slash, no scheme or host, no backslash or control character (a browser drops a tab
    and would read `/\t/evil.example` as `//evil.example`)."""
    parts = urlsplit(target)
    if (
        not target.startswith("/")
        or target.startswith("//")
        or parts.scheme
        or parts.netloc
        or any(c < " " or c in "\\\x7f" for c in target)
    ):
        return "/"
    return target


# -- overview -----------------------------------------------------------------------


@bp.get("/")
def overview():
    return render_template("overview.html", refresh_s=REFRESH_S, **_overview())


@bp.get("/dashboard/overview")
def overview_live():
    """The part of the overview that refreshes itself (fetched by dashboard.js)."""
    return render_template("_live.html", **_overview())


def _overview() -> dict:
    """Live: pending and in progress by queue, each queue's oldest, the last minute, the
    chart, the workers (index ranges and small tables). Finished totals: at most
    TOTALS_TTL_S old, for they count every task."""
    c = ctx()
    now = c.clock()
    active = c.storage.active_counts()
    queues = sorted({r["queue"] for r in active if r["status"] == "pending"})
    rows = queue_rows(
        active, c.storage.oldest_pending(queues), c.storage.finished_since(now - 60), now
    )
    totals, read_at = state().totals.get()
    counts = dict(totals["tasks"])
    counts["pending"] = sum(r.pending for r in rows)
    counts["in_progress"] = sum(r.in_progress for r in rows)
    workers = c.storage.workers(now=now, dead_after=c.config.worker_dead_after)
    bars = state().throughput.bars(now)
    return {
        "counts": counts,
        "totals_age": time.monotonic() - read_at,
        "totals_ttl": TOTALS_TTL_S,
        "alive": sum(w["status"] in ("alive", "stopping") for w in workers),
        "dead": sum(w["status"] == "dead" for w in workers),
        "statuses": STATUSES,
        "queues": rows,
        "chart": Chart.of(bars),
        "hour": {
            "completed": sum(b.completed for b in bars),
            "failed": sum(b.failed for b in bars),
        },
    }


# -- tasks --------------------------------------------------------------------------


def _filter_from(values) -> TaskFilter:
    def value(name: str) -> str | None:
        v = (values.get(name) or "").strip()
        return v or None

    status = value("status")
    if status is not None and status not in STATUSES:
        abort(400, f"status must be one of {', '.join(STATUSES)}")
    return TaskFilter(status, value("queue"), value("type"), value("worker"), value("q"))


def _query(where: TaskFilter, **more) -> str:
    fields = {
        "status": where.status,
        "queue": where.queue,
        "type": where.type,
        "worker": where.worker,
        "q": where.text,
        **more,
    }
    return urlencode({k: v for k, v in fields.items() if v})


def _status_count(stats: dict, where: TaskFilter) -> int | None:
    """About how many tasks have the filter's status, queue and type (from the stats)."""
    if where.status is None:
        return None
    counts = [stats["tasks"][where.status]]  # each an upper bound: take the least
    if where.queue is not None:
        counts.append(stats["queues"].get(where.queue, {}).get(where.status, 0))
    if where.type is not None:
        counts.append(stats["types"].get(where.type, {}).get(where.status, 0))
    return min(counts)


@bp.get("/dashboard/tasks")
def tasks():
    c = ctx()
    where = _filter_from(request.args)
    before = request.args.get("before") or None
    stats, _ = state().totals.get()  # a hint for the plan; minutes old is fine
    page = c.storage.find_tasks(where, before, PAGE_SIZE, _status_count(stats, where))
    actions = [  # a pending task has no worker yet: no cancel by worker
        a
        for a, (status, _) in BULK.items()
        if where.status in (None, status) and not (a == "cancel" and where.worker)
    ]
    return render_template(
        "tasks.html",
        where=where,
        page=page,
        statuses=STATUSES,
        queue_names=sorted(stats["queues"]),
        type_names=sorted(stats["types"]),
        first_page=before is None,
        first_url=url_for("dashboard.tasks") + "?" + _query(where),
        next_url=(
            url_for("dashboard.tasks") + "?" + _query(where, before=page.next_before)
            if page.next_before
            else None
        ),
        actions=actions,
        notice=_bulk_notice(request.args),
    )


def _bulk_notice(args) -> str | None:
    """What a bulk action did, said by the dashboard from the codes it put in the URL
    (never text taken from the URL: a link cannot make the page say something else)."""
    action, moved = args.get("action"), args.get("moved", "")
    if action not in BULK or not moved.isdigit():
        return None
    n = int(moved)
    verb = "retried" if action == "retry" else "cancelled"
    return f"{n:,} {BULK[action][0]} task{'s' * (n != 1)} {verb}"


@bp.post("/dashboard/tasks/bulk")
def bulk():
    """First POST: a page that says how many tasks the action moves; the second
    (confirmed, with that page's form) moves them."""
    c = ctx()
    action = request.form.get("action")
    if action not in BULK:
        abort(400, "action must be retry or cancel")
    where = _filter_from(request.form)
    status = BULK[action][0]
    if where.status not in (None, status):
        abort(400, f"{action} applies to {status} tasks only")
    where = replace(where, status=status)
    if request.form.get("confirm") != "yes":
        count = c.storage.count_matching(where)
        return render_template(
            "confirm.html",
            action=action,
            status=status,
            where=where,
            count=count,
            back_url=url_for("dashboard.tasks") + "?" + _query(where),
        )
    by_label = c.storage.move_matching(action, where, now=c.clock())
    moved = sum(by_label.values())
    if action == "cancel":
        metrics.count_bulk_cancelled(by_label)
    log.info(
        "dashboard: bulk %s of %s tasks (queue=%s type=%s worker=%s text=%r): %d moved",
        action, status, where.queue, where.type, where.worker, where.text, moved,
    )  # fmt: skip
    detail = {"count": moved, **_filter(where), **VIA}
    audit.record(f"tasks.bulk_{action}", _selection(where), detail)
    return redirect(url_for("dashboard.tasks") + "?" + _query(where, action=action, moved=moved))


def _filter(where: TaskFilter) -> dict:
    """A bulk action's selection, as its audit record's detail says it."""
    return {
        "status": where.status,
        "queue": where.queue,
        "type": where.type,
        "worker": where.worker,
        "text": where.text,
    }


def _selection(where: TaskFilter) -> str:
    """A bulk action's selection in a few words: `failed tasks queue='emails' type='sleep'`."""
    named = {k: v for k, v in _filter(where).items() if k != "status" and v is not None}
    return " ".join([f"{where.status} tasks", *(f"{k}={v!r}" for k, v in named.items())])


# -- one task -----------------------------------------------------------------------


LINKED_MAX = 100  # dependents listed on a task's page (the rest are counted)


@bp.get("/dashboard/task/<task_id>")
def task(task_id: str):
    c = ctx()
    try:
        found = c.storage.get(task_id)
    except TaskNotFound:
        return render_template("missing.html", task_id=task_id), 404
    shown = found["dependents"][:LINKED_MAX]
    linked = found["depends_on"] + shown
    statuses = c.storage.statuses(linked) if linked else {}
    return render_template(
        "task.html",
        task=found,
        payload=pretty(found["payload"]),
        result=None if found["result"] is None else pretty(found["result"]),
        notice=_task_notice(request.args, found["status"]),
        depends_on=[(t, statuses.get(t)) for t in found["depends_on"]],
        dependents=[(t, statuses.get(t)) for t in shown],
        more_dependents=len(found["dependents"]) - len(shown),
    )


def _task_notice(args, status: str) -> str | None:
    """What the last button did (codes in the URL, words from here)."""
    if args.get("done") in ("cancel", "retry"):
        return f"task {status}"
    refused = args.get("refused")
    if refused in ("cancel", "retry"):
        verb = "cancelled" if refused == "cancel" else "retried"
        return f"this task cannot be {verb}: it is {status.replace('_', ' ')}"
    return None


@bp.post("/dashboard/task/<task_id>/<action>")
def task_action(task_id: str, action: str):
    c = ctx()
    if action not in ("cancel", "retry"):
        abort(404)
    move = c.storage.cancel if action == "cancel" else c.storage.retry
    try:
        moved = move(task_id, now=c.clock())
    except TaskNotFound:
        return render_template("missing.html", task_id=task_id), 404
    except Conflict:
        return redirect(url_for("dashboard.task", task_id=task_id, refused=action))
    if action == "cancel":
        metrics.count_cancelled(moved)
    log.info("dashboard: task %s %s", task_id, action, extra={"task_id": task_id})
    audit.record(f"task.{action}", f"task {task_id}", VIA)
    return redirect(url_for("dashboard.task", task_id=task_id, done=action))


# -- workers ------------------------------------------------------------------------


@bp.get("/dashboard/workers")
def workers():
    c = ctx()
    found = c.storage.workers(now=c.clock(), dead_after=c.config.worker_dead_after)
    order = {"alive": 0, "stopping": 1, "stopped": 2, "dead": 3}
    found.sort(key=lambda w: (order.get(w["status"], 4), w["worker_id"]))
    return render_template("workers.html", workers=found)


# -- queues -------------------------------------------------------------------------


@bp.get("/dashboard/queues")
def queues():
    return _queues_page()


def _queues_page(error: str | None = None, code: int = 200):
    c = ctx()
    notice = None
    if request.args.get("done") in ("pause", "resume", "limits"):  # codes, words from here
        notice = {"pause": "queue paused", "resume": "queue resumed", "limits": "limits saved"}[
            request.args["done"]
        ]
    found = c.storage.queues(now=c.clock())
    return render_template(
        "queues.html", queues=found, statuses=STATUSES, notice=notice, error=error
    ), code


@bp.post("/dashboard/queues/<path:name>")
def queue_action(name: str):
    """Pause, resume, or set the limits from the page's form (blank: no limit)."""
    c = ctx()
    action = request.form.get("action")
    try:
        name = parse.queue_name(name)
        if action == "pause":
            changes = {"paused": True}
        elif action == "resume":
            changes = {"paused": False}
        elif action == "limits":
            changes = parse.queue_changes(_limits_form(request.form))
        else:
            abort(400, "action must be pause, resume or limits")
    except BadRequest as exc:
        return _queues_page(f"{name}: {exc}", 400)
    c.storage.set_queue(name, changes, now=c.clock())
    log.info("dashboard: queue %s %s: %s", name, action, changes, extra={"queue": name})
    audit.record("queue.update", f"queue {name}", {**changes, **VIA})
    return redirect(url_for("dashboard.queues", done=action))


def _limits_form(form) -> dict:
    """The limits form as PUT /queues' body: numbers where they are numbers (the body's
    rules then refuse what is wrong), a blank field no limit."""

    def number(key: str):
        text = (form.get(key) or "").strip()
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            return text  # refused by the body's rules, naming the field
        return int(value) if value.is_integer() else value

    count, seconds = number("rate_count"), number("rate_seconds")
    rate = None if count is None and seconds is None else {"count": count, "per_seconds": seconds}
    return {"max_in_flight": number("max_in_flight"), "rate_limit": rate}


from . import audit_page, schedules_page  # noqa: E402, F401  (their routes join the blueprint)
