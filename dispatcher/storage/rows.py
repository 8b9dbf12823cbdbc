"""What both storage modules share and is not SQL: task ids, the JSON codec for payloads
and results, and the shapes of the rows they return (a task, a worker)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from . import STATUSES

EXPIRED_ERROR = "lease expired"

dumps = json.JSONEncoder(separators=(",", ":")).encode  # ASCII: a lone surrogate stays escaped
_decode = json.JSONDecoder().raw_decode


def loads(text: str):
    """JSON text that `dumps` wrote: no whitespace to skip, nothing after the value
    (a third of json.loads's cost on a small payload)."""
    return _decode(text)[0]


def new_ids(n: int, now: float) -> list[str]:
    """n fresh task ids: UUIDv7 (RFC 9562) as 32 hex digits, the millisecond of `now`
    then 74 random bits. Ids made together sort together, so a batch's rows sit side by
    side in the primary key index, and a claim's in attempts_by_task: on a table of
    50,000 tasks a 1,000-task submission writes ~80 pages to the WAL where random (v4)
    ids wrote ~590, and a 100-task claim ~31 where they wrote ~144."""
    prefix = _millisecond(now)
    raw = bytearray(os.urandom(10 * n))
    for i in range(0, 10 * n, 10):
        raw[i] = 0x70 | raw[i] & 0x0F  # version 7, then 12 random bits
        raw[i + 2] = 0x80 | raw[i + 2] & 0x3F  # variant 10, then 62 random bits
    return [prefix + raw[i : i + 10].hex() for i in range(0, 10 * n, 10)]


def _millisecond(now: float) -> str:
    return f"{int(now * 1000) & 0xFFFF_FFFF_FFFF:012x}"


def last_id_of(now: float) -> str:
    """An id at least as great as any made by new_ids(…, now) or earlier."""
    return _millisecond(now) + "f" * 20


def insert_values(task_id: str, task, now: float) -> dict:
    """The values of one task's INSERT (a NewTask submitted at `now`) that every insert
    statement takes: INSERT_TASK, deps' INSERT_DEPENDENT, schedules' INSERT_SCHEDULED_TASK."""
    return {
        "id": task_id,
        "type": task.type,
        "queue": task.queue,
        "now": now,
        "payload": dumps(task.payload),
        "priority": task.priority,
        "run_at": now + task.delay,
        "max_retries": task.max_retries,
        "timeout": float(task.timeout),
        "idempotency_key": task.idempotency_key,
        "expires_at": None if task.expires_in is None else now + task.expires_in,
    }


# a task's columns (after its id) in the order GET /task shows them
TASK_KEYS = """type queue payload status result error attempts max_retries priority worker_id
    created_at started_at finished_at progress schedule timeout run_at depends_on
    expires_at""".split()


def task_dict(r: Mapping) -> dict:
    """A `tasks` row as the storage contract returns it (get, list_tasks)."""
    task = {"task_id": r["id"], **{key: r[key] for key in TASK_KEYS}}
    task["payload"] = loads(task["payload"])
    task["result"] = None if task["result"] is None else loads(task["result"])
    if task["progress"] is not None:  # {"fraction", "message", "updated_at"}
        task["progress"] = loads(task["progress"])
    if task["schedule"] is not None:  # {"name", "tick"}: the schedule that created it
        task["schedule"] = loads(task["schedule"])
    task["depends_on"] = [] if task["depends_on"] is None else loads(task["depends_on"])
    return task


def worker_dict(
    r: Mapping,
    running: list[str],
    now: float,
    dead_after: float,
    progress: Mapping[str, dict] | None = None,
) -> dict:
    """A `workers` row as GET /workers shows it: dead when silent for `dead_after`
    (unless it said it stopped). The counts are of attempts, not tasks: a task that
    failed twice and then completed adds 2 to attempts_failed and 1 to
    attempts_completed. `progress`: of its running tasks, those that reported some."""
    status = r["status"]
    if status != "stopped" and (status == "dead" or r["last_heartbeat"] < now - dead_after):
        status = "dead"
    return {
        "worker_id": r["worker_id"],
        "instance_id": r["instance_id"],
        "status": status,
        "first_seen": r["first_seen"],
        "last_heartbeat": r["last_heartbeat"],
        "current_tasks": running,
        "queues": None if r["queues"] is None else loads(r["queues"]),
        "attempts_completed": r["completed"],
        "attempts_failed": r["failed"],
        "concurrency": r["concurrency"],
        "progress": dict(progress or {}),
    }


def stats_dict(
    groups, row: Mapping, now: float, recent: list[Mapping], oldest: Mapping[str, float]
) -> dict:
    """GET /stats from the counts: `groups` are rows of (status, queue, type, n); `row`
    has the workers' (alive, stopped, total); `recent` the tasks finished in the last
    minute (queue, status, minute, n); `oldest` each queue's earliest pending run_at (its
    wait counts only once it is ready, submitted or its delay or back-off over)."""
    tasks = dict.fromkeys(STATUSES, 0)
    queues: dict[str, dict[str, int]] = {}
    types: dict[str, dict[str, int]] = {}
    for r in groups:
        tasks[r["status"]] = tasks.get(r["status"], 0) + r["n"]
        for table, key in ((queues, r["queue"]), (types, r["type"])):
            counts = table.setdefault(key, dict.fromkeys(STATUSES, 0))
            counts[r["status"]] += r["n"]
    ages = {queue: max(0.0, now - t) for queue, t in sorted(oldest.items()) if t <= now}
    alive, stopped = row["alive"], row["stopped"]
    return {
        "tasks": tasks,
        "workers": {"alive": alive, "dead": row["total"] - alive - stopped, "stopped": stopped},
        "throughput_per_minute": sum(r["n"] for r in recent if r["status"] == "completed"),
        "oldest_pending_age_seconds": max(ages.values(), default=None),
        "queues": queues,
        "types": types,
        "queue_oldest_pending_age_seconds": ages,
    }


def claim_dict(r: Mapping, queue: str) -> dict:
    """A claimed task (of `queue`) as POST /get-task returns it."""
    return {
        "task_id": r["id"],
        "type": r["type"],
        "queue": queue,
        "payload": loads(r["payload"]),
        "attempt": r["attempts"],
        "timeout": r["timeout"],
        "lease_token": r["lease_token"],
        "lease_expires_at": r["lease_expires_at"],
    }
