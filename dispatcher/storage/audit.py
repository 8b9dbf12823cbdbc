"""The audit trail's storage: one row per change a person or a script made (cancel,
retry, bulk actions, queue settings, schedules, a reload of the tokens file), written by
dispatcher/audit.py after the change itself has committed (docs/SECURITY.md, "Audit
trail").

A record is written in a transaction of its own, one INSERT. With a `key` it is written
once whoever writes it: several dispatcher processes that each notice the same event (a
tokens file reloaded everywhere) race on the unique key, and ON CONFLICT DO NOTHING lets
one row in. Records are read newest first (by id: ids are never reused) and deleted by
the reaper once older than AUDIT_RETENTION_SECONDS, a batch per short transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import AuditEntry
from .rows import dumps, loads

DEFAULT_RETENTION_S = 7_776_000.0  # 90 days: AUDIT_RETENTION_SECONDS's default
DELETE_BATCH = 2000  # records deleted per retention transaction

# -- schema 7, in PostgreSQL's words (a new database's SCHEMA too) ---------------------

# `at`: epoch seconds (UTC), as every time of this database; `detail`: JSON text or
# NULL; `key`: NULL, or what makes a record one of a kind (several processes, one row).
# The identity never cycles: SQLite's translation is INTEGER PRIMARY KEY AUTOINCREMENT,
# so an id is never given twice, even after the newest records were deleted.
TABLE = """
    CREATE TABLE audit (
        id BIGINT GENERATED ALWAYS AS IDENTITY (NO CYCLE) PRIMARY KEY,
        at DOUBLE PRECISION NOT NULL, name TEXT NOT NULL, role TEXT NOT NULL,
        action TEXT NOT NULL, target TEXT NOT NULL, request_id TEXT, client TEXT,
        detail TEXT, key TEXT UNIQUE
    )
    """
BY_TIME = "CREATE INDEX audit_at ON audit (at)"  # retention: a range, never a scan
TO_VERSION_7 = [TABLE, BY_TIME]

STATEMENTS = dict(
    # (nothing) -> a record; nothing when its key was written already
    INSERT_AUDIT="""
INSERT INTO audit (at, name, role, action, target, request_id, client, detail, key)
VALUES (%(at)s, %(name)s, %(role)s, %(action)s, %(target)s, %(request_id)s, %(client)s,
        %(detail)s, %(key)s)
ON CONFLICT (key) DO NOTHING RETURNING id""",
    # (read) a page of records, newest first
    AUDIT_PAGE="""
SELECT id, at, name, role, action, target, request_id, client, detail FROM audit
 ORDER BY id DESC LIMIT %(limit)s OFFSET %(offset)s""",
    # (read) is any record past retention? (a range of audit_at)
    ANY_AUDIT_PAST_RETENTION="SELECT 1 FROM audit WHERE at < %(cutoff)s LIMIT 1",
    # a record -> (nothing): past retention, a batch at a time
    DELETE_AUDIT="""
DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE at < %(cutoff)s LIMIT %(batch)s)""",
)


def audit_dict(r: Mapping) -> dict:
    """An audit row as the storage contract returns it (`at` in epoch seconds)."""
    return {
        "id": r["id"],
        "at": r["at"],
        "name": r["name"],
        "role": r["role"],
        "action": r["action"],
        "target": r["target"],
        "request_id": r["request_id"],
        "client": r["client"],
        "detail": None if r["detail"] is None else loads(r["detail"]),
    }


class Audit:
    """The audit trail's operations, mixed into SqlStorage (its `q`, `_read`, `_transact`)."""

    q: Any

    def record_audit(self, entry: AuditEntry, now: float, key: str | None = None) -> bool:
        args = {
            "at": now,
            "name": self._text(entry.name),
            "role": entry.role,
            "action": entry.action,
            "target": self._text(entry.target),
            "request_id": entry.request_id,
            "client": entry.client,
            "detail": None if entry.detail is None else dumps(entry.detail),
            "key": None if key is None else self._text(key),
        }
        return self._transact(lambda tx: tx.one(self.q.INSERT_AUDIT, args) is not None)

    def audit_records(self, limit: int, offset: int) -> list[dict]:
        args = {"limit": limit, "offset": offset}
        return [audit_dict(r) for r in self._read(self.q.AUDIT_PAGE, args)]

    def _reap_audit(self, cutoff: float) -> int:
        """Delete the records older than `cutoff`, a batch per transaction; how many.
        Nothing past it: one read, no write."""
        args = {"cutoff": cutoff, "batch": DELETE_BATCH}
        deleted = 0
        more = bool(self._read(self.q.ANY_AUDIT_PAST_RETENTION, args))
        while more:
            n = self._transact(lambda tx: tx.execute(self.q.DELETE_AUDIT, args).rowcount)
            deleted += n
            more = n == DELETE_BATCH
        return deleted
