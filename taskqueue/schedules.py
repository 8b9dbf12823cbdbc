"""`client.schedules`: periodic tasks (docs/SCHEDULING.md, "Periodic tasks").

    client.schedules.create("nightly", "compute", {"operation": "double", "value": 2},
                            cron="0 3 * * *", timezone="Europe/Berlin")
    client.schedules.create("ping", wordcount, {"text": "hi"}, every=60, queue="text")
    client.schedules.list(); client.schedules.get("nightly")
    client.schedules.pause("nightly"); client.schedules.resume("nightly")
    client.schedules.update("nightly", cron="0 4 * * *"); client.schedules.delete("nightly")

Each returns the schedule as the API shows it (a dict); an unknown name raises NotFound,
a taken one Conflict, a bad field InvalidRequest (a ValueError) saying what is wrong.
"""

from __future__ import annotations

from typing import Any

from .client import OPTIONS, _body, _unknown_options

SCHEDULE_FIELDS = ("cron", "every", "timezone", "enabled", "catch_up")


class Schedules:
    def __init__(self, client: Any) -> None:
        self._client = client

    def list(self) -> list[dict]:
        """Every schedule, by name, with its next_run_at, last_run_at and last_task_id."""
        return self._client._conn().schedules()

    def get(self, name: str) -> dict:
        return self._client._conn().schedule(name)

    def create(
        self,
        name: str,
        task: Any,
        payload: dict | None = None,
        *,
        cron: str | None = None,
        every: int | None = None,
        timezone: str | None = None,
        enabled: bool | None = None,
        catch_up: str | None = None,
        **options: Any,
    ) -> dict:
        """A new schedule: `task` is a type's name (with `payload` and submission
        `options`: queue, priority, delay, max_retries, timeout), a task object
        (@task), or a whole submission body (a dict); exactly one of `cron` and
        `every` (seconds)."""
        fields = dict(cron=cron, every=every, timezone=timezone, enabled=enabled)
        fields["catch_up"] = catch_up
        body = {"name": name, "task": self._template(task, payload, options)}
        body.update({k: v for k, v in fields.items() if v is not None})
        return self._client._conn().create_schedule(body)

    def update(self, name: str, task: Any = None, payload: dict | None = None, **fields: Any):
        """Change the fields given (cron, every, timezone, enabled, catch_up; `task`
        with its `payload` replaces the template); the others stay. Giving cron drops
        every and the other way round."""
        options = {k: fields.pop(k) for k in list(fields) if k in OPTIONS}
        unknown = set(fields) - set(SCHEDULE_FIELDS)
        if unknown:
            raise TypeError(f"update: unknown field {sorted(unknown)[0]!r}")
        body = dict(fields)
        if task is not None:
            body["task"] = self._template(task, payload, options)
        elif options or payload is not None:
            raise TypeError("update: a payload or task options come with the task")
        return self._client._conn().update_schedule(name, body)

    def pause(self, name: str) -> dict:
        """Disabled: no tick fires until resume (ticks in between never do)."""
        return self.update(name, enabled=False)

    def resume(self, name: str) -> dict:
        """Enabled again: the first tick after now is the next to fire."""
        return self.update(name, enabled=True)

    def delete(self, name: str) -> None:
        """Removed; the tasks it created stay."""
        self._client._conn().delete_schedule(name)

    @staticmethod
    def _template(task: Any, payload: dict | None, options: dict) -> dict:
        if isinstance(task, dict):
            if payload is not None or options:
                raise TypeError("a task given as a dict holds its payload and options")
            return task
        if options and not OPTIONS.issuperset(options):
            raise _unknown_options("schedules.create", options)
        return _body(task, payload, options)
