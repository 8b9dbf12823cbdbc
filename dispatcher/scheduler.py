"""Periodic tasks in the dispatcher: a schedule checked before it is stored, and the
firing of due ticks, run by a thread in every dispatcher process.

Any number of processes fire at once, on one database: storage's `fire_schedule` lets
exactly one of them create a tick's tasks (docs/SCHEDULING.md, "Periodic tasks").
Which ticks a firing creates tasks for is dispatcher/ticks.py's (pure) decision.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from common.config import Config
from tasks import Registry

from . import audit, bodies, metrics, parse, ticks
from .errors import CLIENT_ERRORS, BadRequest, Conflict, ScheduleNotFound
from .identity import SYSTEM
from .storage import Storage
from .storage.errors import DatabaseUnavailable

log = logging.getLogger("dispatcher")

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
FIELDS = ("cron", "every", "timezone", "catch_up", "task")  # a stored definition's keys
MAX_SLEEP_S = 1.0  # the longest a scheduler sleeps: another process's new schedule is seen
ERROR_SLEEP_S = 1.0  # after a firing failed (the database away): try again after this
FILE_ATTEMPTS = 5  # reads and writes of one SCHEDULES_FILE entry racing other dispatchers


@dataclass
class Checked:
    """A schedule ready to be stored: its definition (FIELDS) and whether it is enabled."""

    name: str
    definition: dict
    enabled: bool
    timing: ticks.Timing


def check(
    name: Any, fields: dict, config: Config, registry: Registry, with_task: bool = True
) -> Checked:
    """`fields` (cron, every, timezone, catch_up, task, enabled; absent or None: the
    default) checked as a whole: BadRequest naming what is wrong. `with_task` False:
    the task template is the stored one, not checked again (a broken schedule can be
    paused; its ticks say its error)."""
    if not isinstance(name, str) or not NAME.match(name):
        raise BadRequest(
            "'name' must start with a letter or digit and hold only letters, digits, "
            "'.', '_' and '-'"
        )
    try:
        timing = ticks.timing(fields.get("cron"), fields.get("every"), fields.get("timezone"))
    except ticks.BadTiming as exc:
        raise BadRequest(str(exc)) from None
    catch_up = fields.get("catch_up") or "one"
    if catch_up not in ticks.CATCH_UP:
        raise BadRequest("'catch_up' must be 'one', 'none' or 'all'")
    template = fields.get("task")
    if not isinstance(template, dict):
        raise BadRequest("'task' must be a JSON object: the body of a submission")
    if template.get("idempotency_key") is not None:
        raise BadRequest(
            "task: 'idempotency_key' is not allowed: each tick's task has its own "
            "(schedule:<name>:<tick>)"
        )
    if template.get("depends_on"):
        raise BadRequest("task: 'depends_on' is not allowed: a tick's task waits for nothing")
    if with_task:
        task_for(template, config, registry)
    definition = {
        "cron": timing.cron,
        "every": timing.every,
        "timezone": timing.timezone,
        "catch_up": catch_up,
        "task": template,
    }
    enabled = fields.get("enabled")
    return Checked(name, definition, True if enabled is None else bool(enabled), timing)


def task_for(template: dict, config: Config, registry: Registry):
    """The task a tick creates from `template`, validated as a submission is."""
    try:
        return parse.new_task(template, config, registry)
    except CLIENT_ERRORS as exc:
        raise BadRequest(f"task: {exc}") from None


def from_body(data: Any, config: Config, registry: Registry) -> Checked:
    """POST /schedules (and an entry of SCHEDULES_FILE)."""
    body = parse.convert(data, bodies.NewSchedule)
    return check(body.name, msgspec.structs.asdict(body), config, registry)


def settings(schedule: dict) -> dict:
    """A stored schedule's definition and `enabled`, as its audit records tell them."""
    return {**schedule["definition"], "enabled": schedule["enabled"]}


def create(storage: Storage, checked: Checked, now: float) -> dict:
    """Store a new schedule (Conflict if the name is taken); its first tick is the
    first after `now`."""
    first = checked.timing.after(now) if checked.enabled else None
    return storage.create_schedule(
        checked.name, checked.definition, checked.enabled, first, now=now
    )


def update(
    storage: Storage, name: str, data: Any, config: Config, registry: Registry, now: float
) -> dict:
    """PUT /schedules/<name>: the fields given replace the stored ones (cron or every
    replaces both; a template given is checked); the next run is kept unless the timing
    changed or the schedule was enabled again (then it is the first tick after `now`)."""
    change = parse.convert(data, bodies.ScheduleChange)
    if change.name is not None and change.name != name:
        raise BadRequest(f"'name' is {change.name!r} but the URL names {name!r}; names stay")
    current = storage.get_schedule(name)
    given = {k: v for k, v in msgspec.structs.asdict(change).items() if v is not None}
    given.pop("name", None)
    return _replace(storage, current, given, config, registry, now)


def _replace(
    storage: Storage, current: dict, given: dict, config: Config, registry: Registry, now: float
) -> dict:
    fields = {**current["definition"], "enabled": current["enabled"]}
    if "cron" in given or "every" in given:
        fields["cron"] = fields["every"] = None
    fields.update(given)
    checked = check(current["name"], fields, config, registry, with_task="task" in given)
    old = current["definition"]
    same_timing = all(old.get(k) == checked.definition[k] for k in ("cron", "every", "timezone"))
    if not checked.enabled:
        next_run_at = None
    elif same_timing and current["enabled"] and current["next_run_at"] is not None:
        next_run_at = current["next_run_at"]  # no tick is lost or fired twice by an edit
    else:
        next_run_at = checked.timing.after(now)
    error = None
    if "task" not in given:  # the stored template: still valid? (its error stays if not)
        try:
            task_for(checked.definition["task"], config, registry)
        except BadRequest as exc:
            error = str(exc)
    return storage.update_schedule(
        current["name"],
        checked.definition,
        checked.enabled,
        next_run_at,
        now=now,
        version=current["updated_at"],
        error=error,
    )


class BadScheduleFile(ValueError):
    """SCHEDULES_FILE cannot be applied; str() names the file and the problem."""


def apply_schedules_file(storage: Storage, config: Config, registry: Registry, now: float):
    """SCHEDULES_FILE (a JSON object {"schedules": [entry, ...]}, each entry the body of
    POST /schedules), applied by `apply_file`; BadScheduleFile when it cannot be read or
    an entry is refused (the entries before it are applied)."""
    path = config.schedules_file
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise BadScheduleFile(f"SCHEDULES_FILE {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise BadScheduleFile(f"SCHEDULES_FILE {path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("schedules"), list):
        raise BadScheduleFile(
            f'SCHEDULES_FILE {path}: must be a JSON object {{"schedules": [...]}}'
        )
    try:
        return apply_file(storage, data["schedules"], config, registry, now)
    except BadRequest as exc:
        raise BadScheduleFile(f"SCHEDULES_FILE {path}: {exc}") from None


def apply_file(storage: Storage, items: list, config: Config, registry: Registry, now: float):
    """SCHEDULES_FILE's entries: each created, or (its name taken) its definition
    replaced; `enabled` changes only when the entry says it, so a schedule paused by an
    operator stays paused across restarts; an entry that says what is stored already
    writes nothing. Schedules not in the file are left alone. Each schedule this call
    created or changed has its audit record (by SYSTEM; detail: the file and the
    schedule as stored). Returns the names created and the names updated."""
    created, updated = [], []

    def audited(action: str, schedule: dict) -> None:
        detail = {"file": config.schedules_file or None, **settings(schedule)}
        target = f"schedule {schedule['name']}"
        audit.record(action, target, detail, who=SYSTEM, storage=storage, clock=lambda: now)

    for i, item in enumerate(items):
        try:
            checked = from_body(item, config, registry)
        except BadRequest as exc:
            raise BadRequest(f"schedule {i + 1}: {exc}") from None
        given = dict(checked.definition)
        if item.get("enabled") is not None:
            given["enabled"] = checked.enabled
        for _ in range(FILE_ATTEMPTS):  # dispatchers starting together apply it together
            try:
                current = storage.get_schedule(checked.name)
            except ScheduleNotFound:
                try:
                    made = create(storage, checked, now)
                    created.append(checked.name)
                    audited("schedule.create", made)
                    break
                except Conflict:
                    continue  # another dispatcher made it just now: read it
            enabled = given.get("enabled", current["enabled"])
            if current["definition"] == checked.definition and current["enabled"] == enabled:
                break  # as the file says already: no write
            try:
                changed = _replace(storage, current, given, config, registry, now)
                updated.append(checked.name)
                audited("schedule.update", changed)
                break
            except (Conflict, ScheduleNotFound):
                continue  # changed (or deleted) meanwhile: read it again
        else:
            raise Conflict(f"schedule {checked.name} kept changing while SCHEDULES_FILE was read")
    return created, updated


# -- firing ---------------------------------------------------------------------------


def fire_due(storage: Storage, config: Config, registry: Registry, now: float) -> int:
    """Fire every schedule due at `now`: the tasks of its due ticks (ticks.due), or, when
    its template is no longer valid, its error and no task. Returns the tasks created
    here (a firing another process won creates none here)."""
    made = 0
    for schedule in storage.due_schedules(now):
        made += _fire(storage, schedule, config, registry, now)
    return made


def _fire(storage: Storage, schedule: dict, config: Config, registry: Registry, now: float):
    name, definition = schedule["name"], schedule["definition"]
    error, tasks, due = None, [], []
    next_run_at: float | None = None
    try:
        timing = ticks.timing(definition["cron"], definition["every"], definition["timezone"])
        due, next_run_at = ticks.due(
            timing,
            schedule["next_run_at"],
            now,
            definition["catch_up"],
            config.schedule_grace_seconds,
        )
        task = task_for(definition["task"], config, registry)
        tasks = [(tick, task) for tick in due]
    except (ticks.BadTiming, BadRequest) as exc:  # e.g. a task type no longer registered
        error = str(exc)
    created = storage.fire_schedule(
        name,
        expected=schedule["next_run_at"],
        version=schedule["updated_at"],
        next_run_at=next_run_at,
        tasks=tasks,
        now=now,
        error=error,
    )
    if created is None:
        return 0  # another process fired it
    if error is not None:
        metrics.SCHEDULE_ERRORS.labels(name).inc()
        if error != schedule["error"]:  # one line when it breaks, not one per tick
            log.warning("schedule %s skips its ticks: %s", name, error)
        return 0
    if created:
        metrics.SCHEDULE_FIRES.labels(name).inc(len(created))
        log.info("schedule %s fired %d tasks (last %s)", name, len(created), created[-1])
    return len(created)


class Scheduler:
    """The thread of one dispatcher process that fires due schedules: it sleeps until
    the earliest next run (at most MAX_SLEEP_S, so a schedule another process made is
    seen), or until `poke()` (this process stored a schedule)."""

    def __init__(self, storage: Storage, config: Config, registry: Registry, clock: Callable):
        self.storage, self.config, self.registry, self.clock = storage, config, registry, clock
        self._wake = threading.Event()

    def poke(self) -> None:
        self._wake.set()

    def start(self) -> None:
        threading.Thread(target=self.run, name="scheduler", daemon=True).start()

    def run(self) -> None:
        while True:
            self._wake.wait(self.step())
            self._wake.clear()

    def step(self) -> float:
        """Fire what is due; the seconds to sleep before the next step. Idle, one read
        (the earliest next run)."""
        try:
            earliest = self.storage.next_schedule_at()
            if earliest is not None and earliest <= self.clock():
                fire_due(self.storage, self.config, self.registry, self.clock())
                earliest = self.storage.next_schedule_at()
        except Exception as exc:  # never dies: the next step tries again
            if isinstance(exc, DatabaseUnavailable):
                metrics.DATABASE_ERRORS.inc()
            log.error("schedules: firing failed: %s", exc)
            return ERROR_SLEEP_S
        if earliest is None:
            return MAX_SLEEP_S
        return min(MAX_SLEEP_S, max(0.0, earliest - self.clock()))
