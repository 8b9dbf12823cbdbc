"""GET /audit: the audit trail, newest first (docs/API.md; docs/SECURITY.md, "Audit
trail"). For admins only once roles are on: the blueprint `audit`, endpoint
`audit.audit_log`."""

from __future__ import annotations

from flask import Blueprint, request

from . import parse
from .routes import ctx, iso

bp = Blueprint("audit", __name__)

DEFAULT_LIMIT = 100


def shown(record: dict) -> dict:
    """A stored audit record as the API shows it: `at` in ISO 8601 UTC."""
    return {**record, "at": iso(record["at"])}


@bp.get("/audit")
def audit_log():
    c = ctx()
    limit = parse.query_integer(request.args, "limit", DEFAULT_LIMIT, 1, c.config.max_batch)
    offset = parse.query_integer(request.args, "offset", 0, 0, parse.MAX_OFFSET)
    records = c.storage.audit_records(limit, offset)
    return {"records": [shown(r) for r in records], "limit": limit, "offset": offset}
