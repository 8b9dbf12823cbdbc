"""The periodic tasks' API: /schedules (docs/API.md, docs/SCHEDULING.md)."""

from __future__ import annotations

import logging

from flask import Blueprint

from . import audit, scheduler
from .routes import ctx, iso, json_body
from .storage.schedules import tick_iso

log = logging.getLogger("dispatcher")
bp = Blueprint("schedules", __name__)


def shown(schedule: dict) -> dict:
    """A stored schedule as the API shows it."""
    definition = schedule["definition"]
    last_tick = schedule["last_tick"]
    return {
        "name": schedule["name"],
        **{key: definition[key] for key in scheduler.FIELDS},
        "enabled": schedule["enabled"],
        "next_run_at": iso(schedule["next_run_at"]),
        "last_run_at": iso(schedule["last_run_at"]),
        "last_tick": None if last_tick is None else tick_iso(last_tick),
        "last_task_id": schedule["last_task_id"],
        "error": schedule["error"],
        "created_at": iso(schedule["created_at"]),
        "updated_at": iso(schedule["updated_at"]),
    }


def _stored(schedule: dict, verb: str) -> dict:
    c = ctx()
    if c.scheduler is not None:
        c.scheduler.poke()  # its first tick may be sooner than the scheduler's wake-up
    log.info("schedule %s %s", schedule["name"], verb)
    return shown(schedule)


@bp.post("/schedules")
def create_schedule():
    c = ctx()
    checked = scheduler.from_body(json_body(), c.config, c.registry)
    made = scheduler.create(c.storage, checked, now=c.clock())
    audit.record("schedule.create", f"schedule {checked.name}", scheduler.settings(made))
    return _stored(made, "created"), 201


@bp.get("/schedules")
def list_schedules():
    return {"schedules": [shown(s) for s in ctx().storage.schedules()]}


@bp.get("/schedules/<name>")
def get_schedule(name: str):
    return shown(ctx().storage.get_schedule(name))


@bp.put("/schedules/<name>")
def update_schedule(name: str):
    c = ctx()
    body = json_body()
    changed = scheduler.update(c.storage, name, body, c.config, c.registry, c.clock())
    audit.record("schedule.update", f"schedule {name}", body)
    return _stored(changed, "updated")


@bp.delete("/schedules/<name>")
def delete_schedule(name: str):
    ctx().storage.delete_schedule(name)
    log.info("schedule %s deleted", name)
    audit.record("schedule.delete", f"schedule {name}")
    return {"name": name, "deleted": True}
