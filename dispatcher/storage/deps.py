"""Dependencies between tasks (chains, fan-out, fan-in): a task submitted with
`depends_on` waits (status `waiting`) until every task it names has completed, then
becomes pending; when one of them ends failed or cancelled for good, it ends cancelled,
and so, transitively, does everything waiting on it. docs/SCHEDULING.md, "Dependencies".

Stored as one row per edge in `task_dependencies` (primary key (depends_on, task_id): the
dependents of a batch of tasks are one index range each), a count of the dependencies
not yet completed in `tasks.waiting_on`, the list itself, JSON text, in
`tasks.depends_on` (NULL: none), which the claim returns so that it reads results only
for tasks that have dependencies, and `tasks.has_dependents`, set on a task when another
is submitted to depend on it.

What a task without dependencies or dependents pays: nothing. The claim returns one
column more (`depends_on`, NULL); the statements that finish, expire or cancel a task
already read or return its row, and return `has_dependents` with it: only a task that
has dependents costs the lookups here (DEPENDENTS_OF, CASCADE_LOCK). A submission
without `depends_on` takes its old path.

Locking (PostgreSQL): a submission locks the tasks it names (DEPENDENCY_STATES, FOR
UPDATE, in id order) and marks them `has_dependents`, so a result or a cancel of one of
them (which updates that row) waits for the submission's commit, then returns the flag
and sees the edges (every statement of a READ COMMITTED transaction reads what committed
before it); a submission that comes second sees the new status. Dependents are locked in
id order before they move. SQLite's write transaction holds the whole file.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from . import Moved, NewTask, rows
from .errors import Conflict, QueueFull, UnknownDependency

MAX_DEPENDENCIES = 100  # per task (bodies.py refuses more)
ENDED = ("failed", "cancelled")  # a dependency in these cancels its dependents

# the table and the tasks' two columns, for new databases (core.SCHEMA) and for version 6
TABLE = """
CREATE TABLE task_dependencies (
    task_id TEXT NOT NULL, depends_on TEXT NOT NULL, PRIMARY KEY (depends_on, task_id)
)"""
BY_TASK = "CREATE INDEX task_dependencies_by_task ON task_dependencies (task_id)"  # retention
SCHEMA = [TABLE, BY_TASK]
TO_VERSION_6 = [
    "ALTER TABLE tasks ADD COLUMN waiting_on INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE tasks ADD COLUMN depends_on TEXT",
    "ALTER TABLE tasks ADD COLUMN has_dependents BOOLEAN NOT NULL DEFAULT FALSE",
    TABLE,
    BY_TASK,
]

STATEMENTS = dict(
    # (nothing) -> waiting | pending | cancelled: a task of a submission where some task
    # has dependencies (the status decided from its dependencies' statuses)
    INSERT_DEPENDENT="""
INSERT INTO tasks (id, type, queue, payload, status, priority, run_at, created_at,
                   max_retries, timeout, idempotency_key, waiting_on, depends_on, error,
                   finished_at, expires_at)
VALUES (%(id)s, %(type)s, %(queue)s, %(payload)s, %(status)s, %(priority)s, %(run_at)s,
        %(now)s, %(max_retries)s, %(timeout)s, %(idempotency_key)s, %(waiting_on)s,
        %(depends_on)s, %(error)s, %(finished_at)s, %(expires_at)s)
ON CONFLICT (idempotency_key) DO NOTHING RETURNING id""",
    INSERT_EDGE="""
INSERT INTO task_dependencies (task_id, depends_on) VALUES (%(task_id)s, %(depends_on)s)""",
    # (read, rows locked against a finish or cancel until the commit) the named tasks'
    # statuses
    DEPENDENCY_STATES="""
SELECT id, status FROM tasks WHERE id = ANY(%(ids)s) ORDER BY id COLLATE "C" FOR UPDATE""",
    # the tasks a submission's tasks depend on: a result, expiry or cancel of one of them
    # then looks for its dependents
    MARK_DEPENDED="""
UPDATE tasks SET has_dependents = TRUE WHERE id = ANY(%(ids)s) AND NOT has_dependents""",
    # (read) the dependents of a batch of tasks, one row per edge: an index range each
    DEPENDENTS_OF="SELECT task_id FROM task_dependencies WHERE depends_on = ANY(%(ids)s)",
    LOCK_WAITING="""
SELECT id FROM tasks WHERE id = ANY(%(ids)s) AND status = 'waiting'
 ORDER BY id COLLATE "C" FOR UPDATE""",
    # waiting -> waiting with %(n)s fewer dependencies to wait for, or -> pending (ready
    # now, or at its delay's end) when none is left
    RELEASE_WAITING="""
UPDATE tasks SET waiting_on = waiting_on - %(n)s,
       status = CASE WHEN waiting_on <= %(n)s THEN 'pending' ELSE 'waiting' END,
       run_at = CASE WHEN waiting_on <= %(n)s AND run_at < %(now)s THEN %(now)s
                     ELSE run_at END
 WHERE id = ANY(%(ids)s) AND status = 'waiting'""",
    # the waiting dependents of tasks that ended failed or cancelled, locked in id order
    CASCADE_LOCK="""
SELECT id FROM tasks
 WHERE status = 'waiting'
   AND id IN (SELECT task_id FROM task_dependencies WHERE depends_on = ANY(%(ids)s))
 ORDER BY id COLLATE "C" FOR UPDATE""",
    # waiting -> cancelled: a dependency ended failed or cancelled; it never ran. The
    # error names the first (by id) of those of %(ids)s it depends on
    CASCADE_CANCEL="""
UPDATE tasks SET status = 'cancelled', finished_at = %(now)s, attempts = 0, waiting_on = 0,
       error = (SELECT 'dependency ' || d.depends_on
                       || CASE WHEN p.status = 'failed' THEN ' failed' ELSE ' was cancelled' END
                  FROM task_dependencies d JOIN tasks p ON p.id = d.depends_on
                 WHERE d.task_id = tasks.id AND d.depends_on = ANY(%(ids)s)
                 ORDER BY d.depends_on COLLATE "C" LIMIT 1)
 WHERE status = 'waiting'
   AND id IN (SELECT task_id FROM task_dependencies WHERE depends_on = ANY(%(ids)s))
RETURNING id, queue, type, has_dependents""",
    # (read) the dependents of many tasks (finished_among)
    DEPENDENTS_AMONG="""
SELECT depends_on, task_id FROM task_dependencies WHERE depends_on = ANY(%(ids)s)
 ORDER BY depends_on, task_id COLLATE "C" """,
    # (read) the results of claimed tasks' dependencies (those deleted by retention absent)
    DEPENDENCY_RESULTS="""
SELECT id, result FROM tasks WHERE id = ANY(%(ids)s) AND status = 'completed'""",
    # failed | cancelled -> waiting, attempts reset (RETRY, for a task some of whose
    # dependencies are not finished yet: they were retried first)
    RETRY_WAITING="""
UPDATE tasks SET status = 'waiting', waiting_on = %(waiting_on)s, attempts = 0,
       run_at = %(now)s, result = NULL, error = NULL, finished_at = NULL, started_at = NULL,
       finished_lease = NULL, expired_failure = FALSE, worker_id = NULL, progress = NULL,
       expires_at = NULL
 WHERE id = %(task_id)s AND status IN ('failed', 'cancelled')""",
    # (read) the tasks that depend on one task, for GET /task/<id>
    DEPENDENTS="""
SELECT task_id FROM task_dependencies WHERE depends_on = %(task_id)s
 ORDER BY task_id COLLATE "C" """,
)


def first_ended(refs: Sequence[str], status: Mapping[str, str]) -> str | None:
    """The error of a new task some of whose dependencies already ended failed or
    cancelled (the first by id, as CASCADE_CANCEL names it), or None."""
    ended = sorted(d for d in refs if status.get(d) in ENDED)
    if not ended:
        return None
    first = ended[0]
    return f"dependency {first} " + ("failed" if status[first] == "failed" else "was cancelled")


class Dependencies:
    """Mixed into SqlStorage: its `q`, `_read`, `_transact`, `_ids` and the submit
    helpers."""

    q: Any

    # -- submission -------------------------------------------------------------------

    def _submit_dependent(
        self, ids: list[str], tasks: list[NewTask], now: float
    ) -> list[tuple[str, bool]]:
        """submit() when some task has depends_on: task by task, in order, each stored
        waiting (a dependency not completed), pending (all completed) or cancelled (one
        already failed or cancelled). An int in depends_on is the index of an earlier
        task of the batch (parse.py made sure); an id of no task raises
        UnknownDependency and stores nothing."""
        named = sorted({d for t in tasks for d in t.depends_on or () if isinstance(d, str)})
        limit = self.max_pending  # type: ignore[attr-defined]

        def insert(tx) -> list[tuple[str, bool]]:
            pending = self._pending_before(tx, len(tasks), now) if limit else None  # type: ignore[attr-defined]
            status: dict[str, str] = {}
            if named:
                found = tx.all(self.q.DEPENDENCY_STATES, {"ids": self._ids(named)})
                status = {r["id"]: r["status"] for r in found}
                for i, task in enumerate(tasks):
                    for d in task.depends_on or ():
                        if isinstance(d, str) and d not in status:
                            raise UnknownDependency(i, d)
            out: list[tuple[str, bool]] = []
            edges: list[dict] = []
            made_pending = 0
            for task_id, task in zip(ids, tasks, strict=True):
                given = task.depends_on or ()
                refs = list(dict.fromkeys(d if isinstance(d, str) else out[d][0] for d in given))
                unread = [d for d in refs if d not in status]  # a repeat's task (its key)
                if unread:
                    found = tx.all(self.q.DEPENDENCY_STATES, {"ids": self._ids(unread)})
                    status.update((r["id"], r["status"]) for r in found)
                error = first_ended(refs, status)
                waiting = sum(status[d] != "completed" for d in refs)
                state = "cancelled" if error else "waiting" if waiting else "pending"
                args = rows.insert_values(task_id, task, now)
                args.update(status=state, waiting_on=0 if error else waiting, error=error)
                args.update(depends_on=rows.dumps(refs) if refs else None)
                args.update(finished_at=now if error else None)
                if tx.one(self.q.INSERT_DEPENDENT, args) is not None:
                    out.append((task_id, True))
                    status[task_id] = state
                    edges.extend({"task_id": task_id, "depends_on": d} for d in refs)
                    made_pending += state == "pending"
                    tx.notify = True
                    if error:  # finished at birth: counted as a cascade is (metrics)
                        tx.cascaded.append({"id": task_id, "queue": task.queue, "type": task.type})
                else:  # the key is taken: that task's id (and its own dependencies)
                    row = tx.one(self.q.TASK_BY_KEY, {"key": task.idempotency_key})
                    out.append((row["id"], False))
            if edges:
                tx.handle.executemany(self.q.INSERT_EDGE, edges)
                depended = sorted({e["depends_on"] for e in edges})
                tx.execute(self.q.MARK_DEPENDED, {"ids": self._ids(depended)})
            if pending is not None and made_pending and pending + made_pending > limit:
                raise QueueFull(pending, made_pending, limit)  # the rollback stores none
            return out

        out = self._transact(insert)  # type: ignore[attr-defined]
        if limit:
            self._pending_added += len(tasks)  # type: ignore[attr-defined]
        return out

    # -- results ----------------------------------------------------------------------

    def _after_results(
        self, tx, results: Sequence, out: Sequence, linked: set[str], now: float
    ) -> None:
        """A batch of `results` moved its tasks as `out` says; of them, those of `linked`
        have dependents: released by the ones completed, cancelled by the ones failed for
        good."""
        completed, ended = [], []
        for item, moved in zip(results, out, strict=True):
            if item.task_id in linked and isinstance(moved, Moved):
                if moved == "completed":
                    completed.append(item.task_id)
                elif moved == "failed":
                    ended.append(item.task_id)
        if completed:
            self._release_dependents(tx, completed, now)
        if ended:
            self._cascade(tx, ended, now)

    def _release_dependents(self, tx, completed: list[str], now: float) -> None:
        """Each waiting dependent of the completed tasks waits for one fewer (for as
        many of them as it depends on), and becomes pending at none. One index lookup
        when none of them has dependents."""
        found = tx.all(self.q.DEPENDENTS_OF, {"ids": self._ids(completed)})
        if not found:
            return
        n = Counter(r["task_id"] for r in found)
        tx.all(self.q.LOCK_WAITING, {"ids": self._ids(sorted(n))})
        by_n: dict[int, list[str]] = {}
        for task_id, k in n.items():
            by_n.setdefault(k, []).append(task_id)
        for k, task_ids in sorted(by_n.items()):
            tx.execute(self.q.RELEASE_WAITING, {"ids": self._ids(task_ids), "n": k, "now": now})
        tx.notify = True

    def _cascade(self, tx, ended: Iterable[str], now: float) -> list[Mapping]:
        """Tasks `ended` ended failed or cancelled for good: every task waiting on them,
        transitively, ends cancelled ("dependency <id> failed" / "was cancelled", naming
        its own dependency that ended), attempts 0. Call it in the transaction that ended
        them, after the statement that did, for those whose row says `has_dependents`
        (any other costs one lookup for nothing). Two statements per level of
        dependents. Returns the rows (id, queue, type, has_dependents) it cancelled."""
        cancelled: list[Mapping] = []
        ids = list(ended)
        while ids:
            args = {"ids": self._ids(ids), "now": now}
            if not tx.all(self.q.CASCADE_LOCK, args):
                break
            level = tx.all(self.q.CASCADE_CANCEL, args)
            cancelled.extend(level)
            ids = [r["id"] for r in level if r["has_dependents"]]
        if cancelled:
            tx.notify = True  # finished tasks (GET /task?wait)
            tx.cascaded.extend(cancelled)  # told to on_cascade once committed (metrics)
        return cancelled

    # -- claims -----------------------------------------------------------------------

    def _add_dependencies(self, tx, claimed: list[tuple[dict, str]]) -> None:
        """The claimed tasks that have dependencies (each with its depends_on JSON text)
        get `dependencies`: {task_id: result} of those completed and still stored. One
        read for the whole claim."""
        lists = [(task, rows.loads(text)) for task, text in claimed]
        wanted = sorted({d for _, refs in lists for d in refs})
        found = tx.all(self.q.DEPENDENCY_RESULTS, {"ids": self._ids(wanted)})
        results = {r["id"]: rows.loads(r["result"]) for r in found}
        for task, refs in lists:
            task["dependencies"] = {d: results[d] for d in refs if d in results}

    # -- operator actions ---------------------------------------------------------------

    def _retry_dependent(self, tx, task_id: str, row: Mapping) -> tuple[str, str, dict]:
        """retry() of a failed or cancelled task that has dependencies: (statement, new
        status, its extra arguments). A dependency failed or cancelled: Conflict (retry
        it first); some not completed yet (being retried): waiting for those; all
        completed (or deleted by retention): pending."""
        refs = rows.loads(row["depends_on"])
        found = tx.all(self.q.DEPENDENCY_STATES, {"ids": self._ids(refs)})
        status = {r["id"]: r["status"] for r in found}
        ended = sorted(d for d in refs if status.get(d) in ENDED)
        if ended:
            raise Conflict(
                f"task {task_id} depends on task {ended[0]}, which is {status[ended[0]]}: "
                "retry that one first"
            )
        waiting = sum(d in status and status[d] != "completed" for d in refs)
        if waiting:
            return self.q.RETRY_WAITING, "waiting", {"waiting_on": waiting}
        return self.q.RETRY, "pending", {}

    # -- reading --------------------------------------------------------------------------

    def dependents(self, task_id: str) -> list[str]:
        """The ids of the tasks that depend on this one."""
        return [r["task_id"] for r in self._read(self.q.DEPENDENTS, {"task_id": task_id})]  # type: ignore[attr-defined]

    def statuses(self, task_ids: list[str]) -> dict[str, str]:
        """{task_id: status} of those of `task_ids` that are stored (the dashboard's
        dependencies and dependents)."""
        ids = [t for t in task_ids if "\x00" not in t]
        if not ids:
            return {}
        found = self._read(self.q.STATUS_AMONG, {"ids": self._ids(ids)})  # type: ignore[attr-defined]
        return {r["id"]: r["status"] for r in found}
