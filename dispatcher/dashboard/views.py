"""What the pages show, shaped from storage reads: the overview's queue table and
throughput chart, relative ages, pretty JSON. No Flask here."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

CHART_MINUTES = 60
SETTLED_S = 5.0  # a minute this long over takes no more finished tasks (clocks differ)


def ago(seconds: float | None) -> str:
    """'just now', '42 s', '7 min', '3 h', '2 d' (of a duration in seconds)."""
    if seconds is None:
        return "—"
    s = max(0.0, seconds)
    if s < 1:
        return "just now"
    for size, unit in ((86_400, "d"), (3600, "h"), (60, "min")):
        if s >= size:
            return f"{s / size:.0f} {unit}"
    return f"{s:.0f} s"


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


@dataclass
class QueueRow:
    name: str
    pending: int
    in_progress: int
    oldest_age: float | None
    completed_last_minute: int
    failed_last_minute: int


def queue_rows(
    active: list[Mapping], oldest: Mapping[str, float], last_minute: list[Mapping], now: float
) -> list[QueueRow]:
    """One row per queue with pending or in-progress tasks, or finishes in the last
    minute: `active` (queue, status, n), each queue's oldest pending run_at, and the
    finishes (queue, status, minute, n)."""
    counts: dict[tuple[str, str], int] = {}
    for r in [*active, *last_minute]:
        counts[(r["queue"], r["status"])] = counts.get((r["queue"], r["status"]), 0) + r["n"]
    names = sorted({queue for queue, _ in counts})
    return [
        QueueRow(
            name,
            counts.get((name, "pending"), 0),
            counts.get((name, "in_progress"), 0),
            now - oldest[name] if oldest.get(name, now + 1) <= now else None,
            counts.get((name, "completed"), 0),
            counts.get((name, "failed"), 0),
        )
        for name in names
    ]


@dataclass
class Bar:
    minute: int  # floor(epoch seconds / 60)
    completed: int
    failed: int


class Throughput:
    """Completed and failed per minute over the last CHART_MINUTES, from the database
    (it survives restarts). Settled minutes are kept here; each refresh reads only the
    minutes since the last settled one, so a busy hour is read once per process."""

    def __init__(self, finished_since: Callable[[float], list[Mapping]]):
        self.finished_since = finished_since
        self.lock = threading.Lock()
        self.settled: dict[int, tuple[int, int]] = {}

    def bars(self, now: float) -> list[Bar]:
        current = int(now // 60)
        first = current - CHART_MINUTES + 1
        with self.lock:
            self.settled = {m: v for m, v in self.settled.items() if m >= first}
            start = first
            while start in self.settled:
                start += 1
            fresh: dict[int, list[int]] = {m: [0, 0] for m in range(start, current + 1)}
            for r in self.finished_since(start * 60.0):
                minute = int(r["minute"])
                if minute in fresh and r["status"] in ("completed", "failed"):
                    fresh[minute][r["status"] == "failed"] += r["n"]
            for minute, (completed, failed) in fresh.items():
                if now - (minute + 1) * 60 >= SETTLED_S:
                    self.settled[minute] = (completed, failed)
            counts = {**self.settled, **{m: tuple(v) for m, v in fresh.items()}}
        return [Bar(m, *counts.get(m, (0, 0))) for m in range(first, current + 1)]


@dataclass
class Chart:
    """The throughput bars as SVG geometry (drawn by overview.html, no JavaScript)."""

    width: int
    height: int
    peak: int
    columns: list[dict]

    @classmethod
    def of(cls, bars: list[Bar], width: int = 1100, height: int = 150) -> Chart:
        peak = max((b.completed + b.failed for b in bars), default=0)
        step = width / max(1, len(bars))
        scale = (height - 4) / peak if peak else 0.0
        columns = []
        for i, b in enumerate(bars):
            done_h, failed_h = b.completed * scale, b.failed * scale
            columns.append(
                {
                    "x": round(i * step + 1, 1),
                    "w": round(max(1.0, step - 2), 1),
                    "done_y": round(height - done_h, 1),
                    "done_h": round(done_h, 1),
                    "failed_y": round(height - done_h - failed_h, 1),
                    "failed_h": round(failed_h, 1),
                    "minutes_ago": len(bars) - 1 - i,
                    "completed": b.completed,
                    "failed": b.failed,
                }
            )
        return cls(width, height, peak, columns)
