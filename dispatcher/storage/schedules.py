"""Periodic tasks' storage: the schedules table, and the firing of a tick.

Storage knows no cron: a schedule is its name, its definition (JSON text the dispatcher
wrote: cron or every, timezone, catch_up, the task template), whether it is enabled,
and `next_run_at`, the first tick not yet fired. dispatcher/ticks.py computes ticks;
dispatcher/scheduler.py decides what a firing creates.

Each tick fires once (docs/SCHEDULING.md, "Periodic tasks"): `fire_schedule` moves
next_run_at by compare-and-set (FIRE_SCHEDULE's WHERE names the value read) and only
the transaction that wins inserts the tick's tasks, each under the idempotency key
`schedule:<name>:<tick>`, which a second firing of the same tick could not insert again.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from . import NewTask, rows
from .errors import Conflict, ScheduleNotFound
from .rows import dumps, loads

SCHEDULES_TABLE = """
    CREATE TABLE schedules (
        name TEXT PRIMARY KEY, definition TEXT NOT NULL, enabled BOOLEAN NOT NULL,
        next_run_at DOUBLE PRECISION, last_run_at DOUBLE PRECISION,
        last_tick DOUBLE PRECISION, last_task_id TEXT, error TEXT,
        created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL
    )
    """
# a task a schedule created: JSON text {"name", "tick"} (NULL: submitted by a client)
TASK_SCHEDULE_COLUMN = "ALTER TABLE tasks ADD COLUMN schedule TEXT"

STATEMENTS = dict(
    # (nothing) -> a schedule; nothing when the name is taken
    INSERT_SCHEDULE="""
INSERT INTO schedules (name, definition, enabled, next_run_at, created_at, updated_at)
VALUES (%(name)s, %(definition)s, %(enabled)s, %(next_run_at)s, %(now)s, %(now)s)
ON CONFLICT (name) DO NOTHING RETURNING name""",
    # a schedule redefined: its error is what the caller found of the new definition
    UPDATE_SCHEDULE="""
UPDATE schedules SET definition = %(definition)s, enabled = %(enabled)s,
       next_run_at = %(next_run_at)s, error = %(error)s, updated_at = %(now)s
 WHERE name = %(name)s""",
    DELETE_SCHEDULE="DELETE FROM schedules WHERE name = %(name)s",
    GET_SCHEDULE="SELECT * FROM schedules WHERE name = %(name)s",
    SCHEDULE_LOCKED="SELECT * FROM schedules WHERE name = %(name)s FOR UPDATE",
    ALL_SCHEDULES='SELECT * FROM schedules ORDER BY name COLLATE "C"',
    DUE_SCHEDULES="""
SELECT * FROM schedules WHERE enabled AND next_run_at <= %(now)s ORDER BY next_run_at""",
    NEXT_SCHEDULE="SELECT min(next_run_at) AS t FROM schedules WHERE enabled",
    # the claim of a firing: only the transaction that read this next_run_at (and this
    # definition, by its updated_at) moves it on; a second one finds no row
    FIRE_SCHEDULE="""
UPDATE schedules SET next_run_at = %(next_run_at)s, error = %(error)s
 WHERE name = %(name)s AND enabled AND next_run_at = %(expected)s
   AND updated_at = %(version)s""",
    FIRED="""
UPDATE schedules SET last_run_at = %(now)s, last_tick = %(tick)s, last_task_id = %(task_id)s
 WHERE name = %(name)s""",
    # (nothing) -> pending: a tick's task, under its tick's idempotency key
    INSERT_SCHEDULED_TASK="""
INSERT INTO tasks (id, type, queue, payload, status, priority, run_at, created_at,
                   max_retries, timeout, idempotency_key, schedule, expires_at)
VALUES (%(id)s, %(type)s, %(queue)s, %(payload)s, 'pending', %(priority)s, %(run_at)s,
        %(now)s, %(max_retries)s, %(timeout)s, %(idempotency_key)s, %(schedule)s,
        %(expires_at)s)
ON CONFLICT (idempotency_key) DO NOTHING RETURNING id""",
)


def tick_iso(tick: float) -> str:
    """A tick (whole UTC epoch seconds) as ISO 8601 UTC, `2026-12-04T23:05:00Z`: the
    task's schedule.tick, and part of its idempotency key."""
    return datetime.fromtimestamp(tick, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def tick_key(name: str, tick: float) -> str:
    """The idempotency key of a tick's task: `schedule:<name>:<tick ISO 8601 UTC>`."""
    return f"schedule:{name}:{tick_iso(tick)}"


def schedule_dict(r: Mapping) -> dict:
    """A schedules row as the storage contract returns it."""
    return {
        "name": r["name"],
        "definition": loads(r["definition"]),
        "enabled": bool(r["enabled"]),
        "next_run_at": r["next_run_at"],
        "last_run_at": r["last_run_at"],
        "last_tick": r["last_tick"],
        "last_task_id": r["last_task_id"],
        "error": r["error"],
        "created_at": r["created_at"],
        "updated_at": r["updated_at"],
    }


class Schedules:
    """The schedules' operations, mixed into SqlStorage (its `q`, `_read`, `_transact`)."""

    q: Any

    def create_schedule(
        self, name: str, definition: dict, enabled: bool, next_run_at: float | None, now: float
    ) -> dict:
        args = dict(name=name, definition=dumps(definition), enabled=enabled, now=now)
        args["next_run_at"] = next_run_at

        def create(tx) -> dict:
            if tx.one(self.q.INSERT_SCHEDULE, args) is None:
                raise Conflict(f"schedule {name} already exists")
            return schedule_dict(tx.one(self.q.GET_SCHEDULE, args))

        return self._transact(create)

    def update_schedule(
        self,
        name: str,
        definition: dict,
        enabled: bool,
        next_run_at: float | None,
        now: float,
        version: float | None = None,
        error: str | None = None,
    ) -> dict:
        args = dict(name=name, definition=dumps(definition), enabled=enabled, now=now)
        args.update(next_run_at=next_run_at, error=error)

        _known_name(name)

        def update(tx) -> dict:
            row = tx.one(self.q.SCHEDULE_LOCKED, args)
            if row is None:
                raise ScheduleNotFound(name)
            if version is not None and row["updated_at"] != version:
                raise Conflict(f"schedule {name} was changed meanwhile: read it again")
            # a clock that went back must not make an update look like the old version
            args["now"] = max(now, row["updated_at"] + 1e-6)
            tx.execute(self.q.UPDATE_SCHEDULE, args)
            return schedule_dict(tx.one(self.q.GET_SCHEDULE, args))

        return self._transact(update)

    def delete_schedule(self, name: str) -> None:
        _known_name(name)

        def delete(tx) -> None:
            if not tx.execute(self.q.DELETE_SCHEDULE, {"name": name}).rowcount:
                raise ScheduleNotFound(name)

        self._transact(delete)

    def get_schedule(self, name: str) -> dict:
        _known_name(name)
        found = self._read(self.q.GET_SCHEDULE, {"name": name})
        if not found:
            raise ScheduleNotFound(name)
        return schedule_dict(found[0])

    def schedules(self) -> list[dict]:
        return [schedule_dict(r) for r in self._read(self.q.ALL_SCHEDULES)]

    def due_schedules(self, now: float) -> list[dict]:
        return [schedule_dict(r) for r in self._read(self.q.DUE_SCHEDULES, {"now": now})]

    def next_schedule_at(self) -> float | None:
        return self._read(self.q.NEXT_SCHEDULE)[0]["t"]

    def fire_schedule(
        self,
        name: str,
        expected: float,
        version: float,
        next_run_at: float,
        tasks: list[tuple[float, NewTask]],
        now: float,
        error: str | None = None,
    ) -> list[str] | None:
        args = dict(name=name, expected=expected, version=version, now=now, error=error)
        args["next_run_at"] = next_run_at

        def fire(tx) -> list[str] | None:
            if not tx.execute(self.q.FIRE_SCHEDULE, args).rowcount:
                return None  # another firing moved it first
            ids = rows.new_ids(len(tasks), now)
            created: list[str] = []
            last = None
            for task_id, (tick, task) in zip(ids, tasks, strict=True):
                values = rows.insert_values(task_id, task, now)
                values["idempotency_key"] = tick_key(name, tick)
                values["schedule"] = dumps({"name": name, "tick": tick_iso(tick)})
                if tx.one(self.q.INSERT_SCHEDULED_TASK, values) is not None:
                    created.append(task_id)
                    last = (task_id, tick)
            if last is not None:
                fired = dict(name=name, now=now, tick=last[1], task_id=last[0])
                tx.execute(self.q.FIRED, fired)
                tx.notify = True
            return created

        return self._transact(fire)


def _known_name(name: str) -> None:
    """A name holding a NUL (which PostgreSQL text cannot hold) is of no schedule."""
    if "\x00" in name:
        raise ScheduleNotFound(name)
