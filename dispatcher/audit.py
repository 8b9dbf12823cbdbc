"""The audit trail: one record for each change a person or a script made — cancel,
retry, the dashboard's bulk actions, queue settings, schedules, a reload of the tokens
file — and none for submissions or workers' calls, which the metrics count
(docs/SECURITY.md, "Audit trail").

A caller makes its change first, and once that has committed calls `record`, which
writes the record in a transaction of its own. So a refused or failed change has no
record, and a record that cannot be written (the database went away in between) does
not undo or fail the change: it is logged at ERROR and counted in
taskqueue_audit_write_errors_total, and the caller answers as it would have.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import current_app, has_app_context, has_request_context, request

from . import identity, metrics
from .identity import SYSTEM, Identity
from .storage import AuditEntry, Storage

log = logging.getLogger("dispatcher")


def record(
    action: str,
    target: str,
    detail: Any = None,
    *,
    who: Identity | None = None,
    key: str | None = None,
    storage: Storage | None = None,
    clock: Callable[[], float] | None = None,
) -> bool:
    """Write the audit record of a change that has committed; whether one was written.

    `action` names what was done (`task.cancel`, `queue.update`...), `target` to what
    (`task <id>`, `queue <name>`), `detail` anything more, as JSON (None: nothing).
    `who`: the identity of the request being served (identity.current()) unless given;
    SYSTEM for the dispatcher's own work. The record carries the request's id
    (X-Request-ID) and client address when a request is being served and `who` is not
    SYSTEM: a tokens-file reload that a request's thread happens to notice is not that
    request's doing. `key`: several processes that each see one event (the same tokens
    file reloaded by every dispatcher) write one record of it: the first to commit.
    `storage` and `clock`: the app's (app.py's Context) unless given; a caller outside
    any app context (start-up, a thread of its own) gives both.

    Never raises: a record that cannot be written is logged at ERROR and counted in
    taskqueue_audit_write_errors_total; the change it was about stands."""
    who = who or identity.current()
    request_id = client = None
    if has_request_context() and who is not SYSTEM:
        from .app import current_request_id  # (app.py imports the routes that call us)

        request_id, client = current_request_id(), request.remote_addr
    entry = AuditEntry(who.name, who.role, action, target, request_id, client, detail)
    try:
        if storage is None or clock is None:
            if not has_app_context():
                raise RuntimeError("outside an app context, give storage and clock")
            context = current_app.extensions["taskqueue"]
            storage = storage or context.storage
            clock = clock or context.clock
        written = storage.record_audit(entry, now=clock(), key=key)
    except Exception as exc:  # the change has committed: it stands, the record is lost
        metrics.AUDIT_WRITE_ERRORS.inc()
        log.error(
            "audit record not written: %s %s by %s (%s): %s",
            action,
            target,
            who.name,
            who.role,
            exc,
        )
        return False
    if written:
        metrics.AUDIT_RECORDS.labels(action).inc()
    return written
