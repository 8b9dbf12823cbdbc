"""What the dashboard reads and moves in bulk: tasks found by filters, newest first, a
page at a time, and the cancel or retry of every task a filter matches.

No read here counts or sorts the whole table. A page is either one range of
tasks_counts (a status that few tasks have: its rows, sorted), or a walk down the
primary key from the newest task that stops after WINDOW tasks (a status most tasks
have, or no status: matches come soon). Task ids are UUIDv7, so id order is submission
order (to the millisecond) and a page's last id is where the next one starts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from . import rows

WINDOW = 100_000  # the most tasks one walk reads
INDEXED_MAX = 20_000  # a status (and queue, type) with at most this many tasks: its index
AFTER_EVERY_ID = "g"  # ids are hex digits: every one sorts before this
BULK_BATCH = 1000  # tasks moved per transaction by a bulk action
COLUMNS = ", ".join(["id", *rows.TASK_KEYS])

# The optional filters, written in SQL: a NULL filter lets every row through. `pattern`
# is the lowered search text between % signs, its own % _ and ! escaped with !; `json`
# the same text as the stored JSON writes it (non-ASCII as \u escapes, \ doubled).
OTHER_FILTERS = """
   (%(queue)s::text IS NULL OR queue = %(queue)s)
   AND (%(type)s::text IS NULL OR type = %(type)s)
   AND (%(worker)s::text IS NULL OR worker_id = %(worker)s)
   AND (%(pattern)s::text IS NULL OR lower(id) LIKE %(pattern)s ESCAPE '!'
        OR lower(payload) LIKE %(pattern)s ESCAPE '!'
        OR lower(payload) LIKE %(json)s ESCAPE '!'
        OR lower(error) LIKE %(pattern)s ESCAPE '!')"""

STATEMENTS = dict(
    # (read) a page of one status's tasks, newest first: a range of tasks_counts, sorted
    FIND_BY_STATUS=f"""
SELECT {COLUMNS} FROM tasks
 WHERE status = %(status)s AND id < %(before)s AND {OTHER_FILTERS}
 ORDER BY id DESC LIMIT %(limit)s""",
    # the same of one queue: the range of (status, queue) alone (a queue with none of
    # them costs nothing, where the status's whole range would be read)
    FIND_BY_STATUS_IN_QUEUE=f"""
SELECT {COLUMNS} FROM tasks
 WHERE status = %(status)s AND queue = %(queue)s AND id < %(before)s AND {OTHER_FILTERS}
 ORDER BY id DESC LIMIT %(limit)s""",
    # (read) where the walk from %(before)s stops: the WINDOW-th id below it (none: the
    # walk reaches the oldest task)
    WINDOW_START="""
SELECT id FROM tasks WHERE id < %(before)s ORDER BY id DESC LIMIT 1 OFFSET %(skip)s""",
    # (read) a page of the tasks from %(before)s down to %(since)s, newest first
    FIND_IN_WINDOW=f"""
SELECT {COLUMNS} FROM tasks
 WHERE id < %(before)s AND id >= %(since)s
   AND (%(status)s::text IS NULL OR status = %(status)s) AND {OTHER_FILTERS}
 ORDER BY id DESC LIMIT %(limit)s""",
    COUNT_MATCHING=f"""
SELECT count(*) AS n FROM tasks WHERE status = %(status)s AND {OTHER_FILTERS}""",
    # pending -> cancelled, a batch of the tasks the filters match
    CANCEL_MATCHING=f"""
UPDATE tasks SET status = 'cancelled', finished_at = %(now)s, lease_token = NULL,
       lease_expires_at = NULL
 WHERE status = 'pending' AND id IN (
    SELECT id FROM tasks WHERE status = 'pending' AND id <= %(last_id)s AND {OTHER_FILTERS}
     LIMIT %(batch)s)
RETURNING id, queue, type, has_dependents""",
    # failed -> pending, attempts reset (as RETRY), a batch of the tasks the filters match
    RETRY_MATCHING=f"""
UPDATE tasks SET status = 'pending', attempts = 0, run_at = %(now)s, result = NULL,
       error = NULL, finished_at = NULL, started_at = NULL, finished_lease = NULL,
       expired_failure = FALSE, worker_id = NULL, expires_at = NULL
 WHERE status = 'failed' AND id IN (
    SELECT id FROM tasks WHERE status = 'failed' AND id <= %(last_id)s AND {OTHER_FILTERS}
     LIMIT %(batch)s)
RETURNING queue, type""",
)

# what a bulk action takes: the status it moves tasks from, and its statement
BULK = {"cancel": ("pending", "CANCEL_MATCHING"), "retry": ("failed", "RETRY_MATCHING")}


@dataclass(frozen=True)
class TaskFilter:
    """What the dashboard's task list is filtered by; None lets everything through."""

    status: str | None = None
    queue: str | None = None
    type: str | None = None
    worker: str | None = None
    text: str | None = None

    def args(self) -> dict[str, Any]:
        text = self.text.lower() if self.text else None
        return {
            "status": self.status,
            "queue": self.queue,
            "type": self.type,
            "worker": self.worker,
            "pattern": _like(text),
            "json": _like(rows.dumps(text)[1:-1].lower()) if text else None,
        }


def _like(text: str | None) -> str | None:
    """A LIKE pattern (ESCAPE '!') that finds `text` anywhere, its % _ ! taken as such."""
    if text is None:
        return None
    return "%" + text.replace("!", "!!").replace("%", "!%").replace("_", "!_") + "%"


@dataclass
class Page:
    tasks: list[dict]
    next_before: str | None  # where the next (older) page starts; None: no more
    window_ended: bool  # fewer than a page because the walk stopped after WINDOW tasks


class Browse:
    """The dashboard's operations, mixed into SqlStorage (its `q`, `_read`, `_transact`,
    `_cascade`)."""

    q: Any

    def find_tasks(
        self, where: TaskFilter, before: str | None, limit: int, status_count: int | None
    ) -> Page:
        """A page of the tasks `where` matches, newest first, older than `before`.
        `status_count`: about how many tasks have the filter's status (and queue and
        type), from the stats; at most INDEXED_MAX, or unknown, and a status filter reads
        its index, otherwise the page comes from a walk of at most WINDOW tasks."""
        args = where.args() | {"before": before or AFTER_EVERY_ID, "limit": limit}
        if where.status is not None and (status_count or 0) <= INDEXED_MAX:
            statement = (
                self.q.FIND_BY_STATUS if where.queue is None else self.q.FIND_BY_STATUS_IN_QUEUE
            )
            tasks = [rows.task_dict(r) for r in self._read(statement, args)]
            return Page(tasks, tasks[-1]["task_id"] if len(tasks) == limit else None, False)
        start = self._read(self.q.WINDOW_START, args | {"skip": WINDOW - 1})
        args["since"] = start[0]["id"] if start else ""  # "": the walk reaches the oldest
        tasks = [rows.task_dict(r) for r in self._read(self.q.FIND_IN_WINDOW, args)]
        if len(tasks) == limit:
            return Page(tasks, tasks[-1]["task_id"], False)
        return Page(tasks, args["since"] or None, bool(args["since"]))

    def count_matching(self, where: TaskFilter) -> int:
        """How many tasks `where` matches; it names a status (a range of its index)."""
        return self._read(self.q.COUNT_MATCHING, where.args())[0]["n"]

    def move_matching(self, action: str, where: TaskFilter, now: float) -> Counter:
        """`cancel` (pending -> cancelled) or `retry` (failed -> pending, attempts reset)
        every task submitted by `now` that the filter matches, BULK_BATCH per
        transaction, until a batch finds none; returns how many moved, by (queue, type).
        A task another transaction moves first (a claim) is left as that one made it."""
        status, name = BULK[action]
        statement = getattr(self.q, name)
        args = replace(where, status=status).args()
        args |= {"now": now, "batch": BULK_BATCH, "last_id": rows.last_id_of(now)}

        def batch(tx) -> Counter:
            found = tx.all(statement, args)
            moved = Counter((r["queue"], r["type"]) for r in found)
            linked = [r["id"] for r in found if action == "cancel" and r["has_dependents"]]
            if linked:  # their waiting dependents too (deps.py)
                self._cascade(tx, linked, now)
            tx.notify = bool(moved)  # new work, or finished tasks (GET /task?wait)
            return moved

        total: Counter = Counter()
        while moved := self._transact(batch):
            total += moved
        return total
