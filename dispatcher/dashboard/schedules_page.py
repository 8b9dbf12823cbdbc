"""The dashboard's Schedules page (/dashboard/schedules): every periodic task with its
timing, next and last run (a link to the task the last tick made), its error, and a
Pause or Resume button (a POST checked like every dashboard POST: auth.check_post)."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from flask import abort, redirect, render_template, request, url_for

from .. import audit, scheduler
from ..storage.errors import ScheduleNotFound
from . import VIA, bp, ctx
from .views import ago

log = logging.getLogger("dispatcher")


def when(moment: float | None, now: float) -> dict | None:
    """A moment as the page shows it: UTC time, and how far from now."""
    if moment is None:
        return None
    utc = datetime.fromtimestamp(moment, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    distance = ago(abs(moment - now))
    if distance == "just now":
        return {"utc": utc, "relative": "now"}
    return {"utc": utc, "relative": f"in {distance}" if moment > now else f"{distance} ago"}


@bp.get("/dashboard/schedules")
def schedules():
    c = ctx()
    now = c.clock()
    rows = [
        {
            **s,
            "timing": s["definition"]["cron"] or f"every {s['definition']['every']} s",
            "next": when(s["next_run_at"], now),
            "last": when(s["last_run_at"], now),
        }
        for s in c.storage.schedules()
    ]
    done, name = request.args.get("done"), request.args.get("name")
    notice = None
    if done in ("pause", "resume") and name and any(r["name"] == name for r in rows):
        notice = f"schedule {name} {'paused' if done == 'pause' else 'resumed'}"
    return render_template("schedules.html", schedules=rows, notice=notice)


@bp.post("/dashboard/schedules/<name>/<action>")
def schedule_action(name: str, action: str):
    c = ctx()
    if action not in ("pause", "resume"):
        abort(404)
    try:
        current = c.storage.get_schedule(name)
        scheduler.update(
            c.storage, name, {"enabled": action == "resume"}, c.config, c.registry, c.clock()
        )
    except ScheduleNotFound:
        abort(404, f"schedule {name} not found")
    if c.scheduler is not None:
        c.scheduler.poke()
    log.info("dashboard: schedule %s %s (was %s)", name, action, current["enabled"])
    audit.record("schedule.update", f"schedule {name}", {"enabled": action == "resume", **VIA})
    return redirect(url_for("dashboard.schedules", done=action, name=name))
