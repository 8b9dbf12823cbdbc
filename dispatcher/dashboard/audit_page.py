"""The dashboard's Audit page (/dashboard/audit): the audit trail, newest first, a page
of PAGE_SIZE records at a time — when, who (name and role), what to what, the request's
id, the client's address, and the detail in words (docs/DASHBOARD.md, "Audit")."""

from __future__ import annotations

import json
from typing import Any

from flask import abort, render_template, request, url_for

from .. import parse
from ..errors import BadRequest
from . import bp, ctx
from .schedules_page import when

PAGE_SIZE = 50


def detail_text(detail: Any) -> str:
    """A record's detail as the page says it: `key: value` pairs (values as JSON, those
    that are null left out), or the JSON of anything else; "" for none."""
    if detail is None:
        return ""
    if isinstance(detail, dict):
        return " · ".join(
            f"{key}: {json.dumps(value, ensure_ascii=False)}"
            for key, value in detail.items()
            if value is not None
        )
    return json.dumps(detail, ensure_ascii=False)


def task_of(record: dict) -> str | None:
    """The task a record of a single task's change names (its page is linked)."""
    if record["action"].startswith("task.") and record["target"].startswith("task "):
        return record["target"].removeprefix("task ")
    return None


@bp.get("/dashboard/audit")
def audit():
    c = ctx()
    try:
        offset = parse.query_integer(request.args, "offset", 0, 0, parse.MAX_OFFSET)
    except BadRequest as exc:
        abort(400, str(exc))
    found = c.storage.audit_records(PAGE_SIZE + 1, offset)  # one more: is there an older page?
    now = c.clock()
    rows = [
        {**r, "when": when(r["at"], now), "said": detail_text(r["detail"]), "task": task_of(r)}
        for r in found[:PAGE_SIZE]
    ]
    here = url_for("dashboard.audit")
    newer = max(0, offset - PAGE_SIZE)
    return render_template(
        "audit.html",
        records=rows,
        first=offset + 1,
        newest_url=here if offset else None,
        newer_url=(f"{here}?offset={newer}" if newer else here) if offset > PAGE_SIZE else None,
        older_url=f"{here}?offset={offset + PAGE_SIZE}" if len(found) > PAGE_SIZE else None,
        retention_days=c.config.audit_retention_seconds / 86_400,
    )
