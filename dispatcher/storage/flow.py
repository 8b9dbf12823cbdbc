"""Queue controls and expiry: what a queue's settings let a claim take, and the tasks
that were not started in time (docs/SCHEDULING.md, "Queue controls" and "Expiry").

A queue's settings (`queue_settings`: paused, max_in_flight, a rate limit of
rate_count claims per rate_per_seconds) are enforced inside the claim's transaction:
the claim reads the settings rows of its queues that limit anything (locking them on
PostgreSQL, in name order, so two dispatchers' claims on a limited queue take turns;
SQLite's write transaction already holds the file), and takes from each such queue at
most its allowance: 0 when paused, else the least of what the worker asked, what
max_in_flight leaves beside the queue's in-progress tasks, and what the rate window
leaves. The window is exact: every claim of a rate-limited queue is recorded
(`queue_claims`: the queue, the claim's time, how many tasks), and a claim counts the
recorded claims later than now - per_seconds (later ones too: a dispatcher whose clock
is behind still counts its peers' claims), so the last claim committed in any window
saw all the others of that window. While no queue's settings limit anything and no
not-started task is past its expiry, a claim pays two EXISTS probes in the statement
that reads its worker (WORKER_FOR_CLAIM), and nothing else.

A task submitted with `expires_in` has `expires_at`; while it has not started
(attempts = 0, status in NOT_STARTED) and expires_at <= now it is moved to cancelled
with the error `expired: not started within N s`, by every claim (a range of the
partial index tasks_expiry, empty almost always) and by the reaper. A task that ran
once (a retry after a failure, a lease expiry) has started: it no longer expires.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import STATUSES

# The statuses of a task that has not started and may still expire: ready, or blocked on
# its dependencies (storage/deps.py; what waits on an expired task is cancelled with it).
# The partial index tasks_expiry and the statements below follow this list.
NOT_STARTED = "('pending', 'waiting')"
EXPIRE_BATCH = 500  # tasks a claim or a reaper transaction expires at most
RATE_PRUNE_MARGIN_S = 60.0  # claim records kept past their window (dispatchers' clocks)

# -- schema 6, in PostgreSQL's words ---------------------------------------------------

EXPIRES_AT_COLUMN = "ALTER TABLE tasks ADD COLUMN expires_at DOUBLE PRECISION"
EXPIRY_INDEX = (
    "CREATE INDEX tasks_expiry ON tasks (expires_at)"
    f" WHERE expires_at IS NOT NULL AND status IN {NOT_STARTED} AND attempts = 0"
)
QUEUE_SETTINGS_TABLE = """
CREATE TABLE queue_settings (
    queue TEXT PRIMARY KEY, paused BOOLEAN NOT NULL DEFAULT FALSE, max_in_flight INTEGER,
    rate_count INTEGER, rate_per_seconds DOUBLE PRECISION,
    updated_at DOUBLE PRECISION NOT NULL
)"""
QUEUE_CLAIMS_TABLE = """
CREATE TABLE queue_claims (
    queue TEXT NOT NULL, claimed_at DOUBLE PRECISION NOT NULL, n INTEGER NOT NULL
)"""
QUEUE_CLAIMS_INDEX = "CREATE INDEX queue_claims_window ON queue_claims (queue, claimed_at)"
# new tables and index (a new database's SCHEMA too); the column comes with CREATE TABLE
NEW_OBJECTS = [EXPIRY_INDEX, QUEUE_SETTINGS_TABLE, QUEUE_CLAIMS_TABLE, QUEUE_CLAIMS_INDEX]
TO_VERSION_6 = [EXPIRES_AT_COLUMN, *NEW_OBJECTS]

LIMITING = "(paused OR max_in_flight IS NOT NULL OR rate_count IS NOT NULL)"
SETTINGS = "queue, paused, max_in_flight, rate_count, rate_per_seconds, updated_at"

STATEMENTS = dict(
    # (read) the claiming worker's row, locked (as WORKER_LOCKED), with what its claim
    # must look at besides: is any queue limited (a settings row that limits anything),
    # is any not-started task past its expiry (a probe of tasks_expiry). One statement,
    # so a claim that neither concerns pays two subqueries, not two statements.
    WORKER_FOR_CLAIM=f"""
SELECT w.instance_id, w.status,
       EXISTS (SELECT 1 FROM queue_settings s WHERE {LIMITING}) AS limited,
       EXISTS (SELECT 1 FROM tasks t
                WHERE t.expires_at <= %(now)s AND t.status IN {NOT_STARTED}
                  AND t.attempts = 0) AS expired
  FROM workers w WHERE w.worker_id = %(worker_id)s FOR UPDATE OF w""",
    # (read) the settings that limit anything, of every queue: a few rows at most (a
    # read of an empty table when no queue is limited)
    LIMITS=f"SELECT {SETTINGS} FROM queue_settings WHERE {LIMITING}",
    # those of the claim's queues, in its transaction, locked in name order (PostgreSQL;
    # SQLite reads LIMITS: its write transaction holds the whole file)
    LIMITS_LOCKED=f"""
SELECT {SETTINGS} FROM queue_settings WHERE queue = ANY(%(ids)s) AND {LIMITING}
 ORDER BY queue COLLATE "C" FOR UPDATE""",
    IN_FLIGHT="""
SELECT count(*) AS n FROM tasks WHERE status = 'in_progress' AND queue = %(queue)s""",
    # the recorded claims of a queue later than %(since)s: its rate window
    WINDOW_CLAIMS="""
SELECT claimed_at, n FROM queue_claims WHERE queue = %(queue)s AND claimed_at > %(since)s
 ORDER BY claimed_at""",
    CLAIMS_IN_WINDOW="""
SELECT coalesce(sum(n), 0) AS n FROM queue_claims
 WHERE queue = %(queue)s AND claimed_at > %(since)s""",
    RECORD_CLAIM="""
INSERT INTO queue_claims (queue, claimed_at, n) VALUES (%(queue)s, %(now)s, %(n)s)""",
    PRUNE_CLAIMS="""
DELETE FROM queue_claims WHERE queue = %(queue)s AND claimed_at <= %(before)s""",
    FORGET_CLAIMS="DELETE FROM queue_claims WHERE queue = %(queue)s",
    # (nothing) -> a queue's settings row, with every default
    ADD_SETTINGS="""
INSERT INTO queue_settings (queue, updated_at) VALUES (%(queue)s, %(now)s)
ON CONFLICT (queue) DO NOTHING""",
    SETTINGS_LOCKED=f"SELECT {SETTINGS} FROM queue_settings WHERE queue = %(queue)s FOR UPDATE",
    UPDATE_SETTINGS="""
UPDATE queue_settings SET paused = %(paused)s, max_in_flight = %(max_in_flight)s,
       rate_count = %(rate_count)s, rate_per_seconds = %(rate_per_seconds)s,
       updated_at = %(now)s
 WHERE queue = %(queue)s""",
    ALL_SETTINGS=f"SELECT {SETTINGS} FROM queue_settings",
    # (read) every queue's tasks by status: ranges of tasks_counts
    QUEUE_COUNTS="SELECT queue, status, count(*) AS n FROM tasks GROUP BY queue, status",
    # (read) not-started tasks past their expiry, oldest expiry first: a range of
    # tasks_expiry (empty almost always); rows another transaction holds are passed over
    EXPIRED_UNSTARTED=f"""
SELECT id, queue, type, created_at, expires_at FROM tasks
 WHERE expires_at <= %(now)s AND status IN {NOT_STARTED} AND attempts = 0
 ORDER BY expires_at LIMIT %(batch)s FOR UPDATE SKIP LOCKED""",
    ANY_EXPIRED_UNSTARTED=f"""
SELECT 1 FROM tasks WHERE expires_at <= %(now)s AND status IN {NOT_STARTED} AND attempts = 0
 LIMIT 1""",
    # not started (pending, attempts 0) -> cancelled: it expired
    EXPIRE_UNSTARTED=f"""
UPDATE tasks SET status = 'cancelled', error = %(error)s, finished_at = %(now)s,
       waiting_on = 0
 WHERE id = %(task_id)s AND status IN {NOT_STARTED} AND attempts = 0
   AND expires_at <= %(now)s
RETURNING has_dependents""",
)


def expiry_error(created_at: float, expires_at: float) -> str:
    """`expired: not started within N s`, N the submission's expires_in (to the ms)."""
    n = f"{round(expires_at - created_at, 3):.3f}".rstrip("0").rstrip(".")
    return f"expired: not started within {n} s"


def settings_dict(r: Mapping | None, name: str) -> dict:
    """A queue's settings as the API shows them (defaults when it has no row)."""
    if r is None or r["rate_count"] is None:
        rate = None
    else:
        rate = {"count": r["rate_count"], "per_seconds": r["rate_per_seconds"]}
    return {
        "name": name,
        "paused": bool(r["paused"]) if r is not None else False,
        "max_in_flight": r["max_in_flight"] if r is not None else None,
        "rate_limit": rate,
        "updated_at": r["updated_at"] if r is not None else None,
    }


def reopens_at(window: list[Mapping], count: int, per_seconds: float) -> float:
    """When a full rate window lets one more claim in: the claims (oldest first) leave it
    per_seconds after they were made, until fewer than `count` are left."""
    left = sum(r["n"] for r in window)
    for r in window:
        left -= r["n"]
        if left < count:
            return r["claimed_at"] + per_seconds
    return window[-1]["claimed_at"] + per_seconds if window else 0.0


class QueueControls:
    """Queue settings and expiry, mixed into SqlStorage (its `q`, `_read`, `_transact`,
    `_ids`, and the backends' `_ready_in`, `_next_run_in`)."""

    q: Any

    # -- settings -----------------------------------------------------------------

    def set_queue(self, name: str, changes: Mapping[str, Any], now: float) -> dict:
        """Create or change a queue's settings: `changes` holds any of paused (bool),
        max_in_flight (int or None), rate_limit ({"count", "per_seconds"} or None); what
        it leaves out keeps its value. Held polls are woken (a queue resumed, a limit
        raised). Removing a rate limit forgets its window; a new one starts empty."""

        def change(tx) -> dict:
            args = {"queue": name, "now": now}
            tx.execute(self.q.ADD_SETTINGS, args)
            row = dict(tx.one(self.q.SETTINGS_LOCKED, args))
            merged = {
                "paused": bool(row["paused"]),
                "max_in_flight": row["max_in_flight"],
                "rate_count": row["rate_count"],
                "rate_per_seconds": row["rate_per_seconds"],
            }
            if "paused" in changes:
                merged["paused"] = bool(changes["paused"])
            if "max_in_flight" in changes:
                merged["max_in_flight"] = changes["max_in_flight"]
            if "rate_limit" in changes:
                rate = changes["rate_limit"]
                merged["rate_count"] = None if rate is None else int(rate["count"])
                merged["rate_per_seconds"] = None if rate is None else float(rate["per_seconds"])
                if rate is None:
                    tx.execute(self.q.FORGET_CLAIMS, args)
            tx.execute(self.q.UPDATE_SETTINGS, {**args, **merged})
            tx.notify = True  # a held poll may now claim
            return settings_dict({**merged, "updated_at": now}, name)

        return self._transact(change)

    def queue_settings(self) -> list[dict]:
        """Every queue's settings row, by name (the metrics' gauges): one small read."""
        rows = sorted(self._read(self.q.ALL_SETTINGS), key=lambda r: r["queue"])
        return [settings_dict(r, r["queue"]) for r in rows]

    def queues(self, now: float) -> list[dict]:
        """Every known queue (with tasks, or with settings), by name: its settings and
        its tasks counted by status."""
        counts: dict[str, dict[str, int]] = {}
        for r in self._read(self.q.QUEUE_COUNTS):
            by_status = counts.setdefault(r["queue"], dict.fromkeys(STATUSES, 0))
            by_status[r["status"]] = by_status.get(r["status"], 0) + r["n"]
        settings = {r["queue"]: r for r in self._read(self.q.ALL_SETTINGS)}
        out = []
        for name in sorted(counts.keys() | settings.keys()):
            queue = settings_dict(settings.get(name), name)
            queue["counts"] = counts.get(name) or dict.fromkeys(STATUSES, 0)
            out.append(queue)
        return out

    # -- the claim's allowance ----------------------------------------------------

    def _locked_limits(self, tx, queues: tuple[str, ...]) -> dict[str, Mapping]:
        """Inside the claim: the limiting settings of these queues, locked (PostgreSQL)."""
        found = tx.all(self.q.LIMITS_LOCKED, {"ids": self._ids(list(queues))})
        return {r["queue"]: r for r in found if r["queue"] in queues}

    def _allowance(self, tx, limit: Mapping, want: int, now: float) -> int:
        """How many tasks the claim may take from a limited queue (0..want)."""
        if limit["paused"]:
            return 0
        args = {"queue": limit["queue"]}
        if limit["max_in_flight"] is not None:
            running = tx.one(self.q.IN_FLIGHT, args)["n"]
            want = min(want, limit["max_in_flight"] - running)
        if limit["rate_count"] is not None and want > 0:
            per = limit["rate_per_seconds"]
            tx.execute(self.q.PRUNE_CLAIMS, {**args, "before": now - per - RATE_PRUNE_MARGIN_S})
            used = tx.one(self.q.CLAIMS_IN_WINDOW, {**args, "since": now - per})["n"]
            want = min(want, limit["rate_count"] - int(used))
        return max(0, want)

    def _record_claim(self, tx, limit: Mapping, n: int, now: float) -> None:
        if limit["rate_count"] is not None and n:
            tx.execute(self.q.RECORD_CLAIM, {"queue": limit["queue"], "now": now, "n": n})

    # -- ready means claimable now ------------------------------------------------

    def _gates(self, queues: tuple[str, ...], now: float) -> tuple[tuple[str, ...], dict]:
        """(the queues a claim may take from now, {queue: when its rate window reopens}
        for those closed only by their rate limit). Paused queues, and queues at their
        max_in_flight, are neither: a resume, or a finished task, wakes the polls."""
        limits = [r for r in self._read(self.q.LIMITS) if r["queue"] in queues]
        if not limits:
            return queues, {}
        closed, later = set(), {}
        for limit in limits:
            queue = limit["queue"]
            if limit["paused"]:
                closed.add(queue)
                continue
            if limit["max_in_flight"] is not None:
                running = self._read(self.q.IN_FLIGHT, {"queue": queue})[0]["n"]
                if running >= limit["max_in_flight"]:
                    closed.add(queue)
                    continue
            if limit["rate_count"] is not None:
                per = limit["rate_per_seconds"]
                args = {"queue": queue, "since": now - per}
                window = self._read(self.q.WINDOW_CLAIMS, args)
                if sum(r["n"] for r in window) >= limit["rate_count"]:
                    closed.add(queue)
                    later[queue] = reopens_at(window, limit["rate_count"], per)
        return tuple(q for q in queues if q not in closed), later

    def has_ready(self, queues: tuple[str, ...], now: float) -> bool:
        ready, limited = self._ready_probe(queues, now)
        if not limited:  # no queue limits anything: ready is claimable
            return ready
        open_, _ = self._gates(queues, now)
        return bool(open_) and self._ready_in(open_, now)

    def _ready_probe(self, queues: tuple[str, ...], now: float) -> tuple[bool, bool]:
        """(is a task of these queues ready, does any queue's settings limit anything).
        A backend may read both at once (PostgreSQL: one round trip)."""
        return self._ready_in(queues, now), bool(self._read(self.q.LIMITS))

    def next_run_at(self, queues: tuple[str, ...], now: float) -> float | None:
        open_, later = self._gates(queues, now)
        times = [self._next_run_in(open_)] if open_ else []
        for queue, reopens in later.items():
            t = self._next_run_in((queue,))
            if t is not None:
                times.append(max(t, reopens))
        return min((t for t in times if t is not None), default=None)

    # -- expiry -------------------------------------------------------------------

    def _expire_unstarted(self, tx, now: float) -> list[tuple[str, str]]:
        """Not-started tasks past their expiry -> cancelled (a batch): their (queue, type).
        What waits on one of them is cancelled with it, transitively (`dependency <id> was
        cancelled`: deps._cascade)."""
        done, depended = [], []
        for r in tx.all(self.q.EXPIRED_UNSTARTED, {"now": now, "batch": EXPIRE_BATCH}):
            args = {"task_id": r["id"], "now": now}
            args["error"] = expiry_error(r["created_at"], r["expires_at"])
            row = tx.one(self.q.EXPIRE_UNSTARTED, args)
            if row is not None:
                done.append((r["queue"], r["type"]))
                if row["has_dependents"]:
                    depended.append(r["id"])
        if depended:
            self._cascade(tx, depended, now)
        tx.expired.extend(done)  # told to on_expired once committed (metrics)
        if done:
            tx.notify = True  # finished tasks: GET /task?wait
        return done
