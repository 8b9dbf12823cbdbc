"""Who may call what: the token check every API request passes (401 for a missing or
unknown token, 403 for a known one without the right), the table of rights per role,
and GET /whoami.

Roles (docs/SECURITY.md):
- admin: everything;
- submit: POST /submit-task and /submit-tasks, and every read;
- worker: POST /get-task, /submit-result, /submit-results, /heartbeat, /release, and
  every read;
- read: every read: every GET (but the audit trail's) and POST /wait-tasks, a read
  whose list of ids travels in a body.
"""

from __future__ import annotations

import logging
import re

from flask import Blueprint, request

from . import identity
from .errors import QueueError, Unauthorized
from .identity import Identity
from .tokens import Tokens

log = logging.getLogger("dispatcher")

bp = Blueprint("access", __name__)

SUBMIT = frozenset({"api.submit_task", "api.submit_tasks"})
WORKER = frozenset(
    {"api.get_task", "api.submit_result", "api.submit_results", "api.heartbeat", "api.release"}
)
READS_WITH_A_BODY = frozenset({"api.wait_tasks"})
ADMIN_ONLY = frozenset({"audit.audit_log", "dashboard.audit"})  # the audit trail
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
OPEN = "/health"  # no token needed, whatever the method (POST /health: its 405 or 413)
DASHBOARD = "dashboard."  # its pages' endpoints: the dashboard checks its own login


class Forbidden(QueueError):
    http_status = 403


def allowed(role: str, method: str, endpoint: str | None) -> bool:
    """May `role` make this call (`endpoint`: the route's name, None when none matched)?"""
    if role == "admin" or endpoint is None:  # no route: its 404 or 405 follows
        return True
    if endpoint in ADMIN_ONLY:
        return False
    if method in READ_METHODS or endpoint in READS_WITH_A_BODY:
        return True
    if role == "submit":
        return endpoint in SUBMIT
    if role == "worker":
        return endpoint in WORKER
    return False


def shown_rule(rule: str) -> str:
    """A route as a person reads it: /task/<task_id>/cancel -> /task/<id>/cancel."""

    def name(m: re.Match) -> str:
        return "<id>" if m[1] == "task_id" else f"<{m[1]}>"

    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", name, rule)


def refusal(who: Identity) -> str:
    rule = request.url_rule.rule if request.url_rule is not None else request.path
    return f"role {who.role} may not {request.method} {shown_rule(rule)}"


def require_token(tokens: Tokens):
    """The before_request hook of an app with tokens configured (on every API call:
    the request proxy is resolved once)."""

    def check():
        req = request._get_current_object()
        endpoint = req.endpoint
        if req.path == OPEN or (endpoint is not None and endpoint.startswith(DASHBOARD)):
            return None  # the dashboard has its own login (dashboard/auth.py)
        scheme, _, given = req.headers.get("Authorization", "").partition(" ")
        who = tokens.identify(given.strip()) if scheme.lower() == "bearer" else None
        if who is None:
            raise Unauthorized("missing or wrong API token (Authorization: Bearer <token>)")
        if not allowed(who.role, req.method, endpoint):
            message = refusal(who)
            log.warning("refused %s (token %s)", message, who.name)
            raise Forbidden(message)
        identity.set_current(who)
        return None

    return check


@bp.get("/whoami")
def whoami():
    """The name and role of the token sent: a deploy's smoke test."""
    who = identity.current()  # no tokens configured: "anonymous", an admin
    return {"name": who.name, "role": who.role}
