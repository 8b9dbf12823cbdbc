"""When a schedule's ticks fall, and which of them a firing creates tasks for. Pure: no
clock (every function takes `now`), no database.

A tick is a whole second (UTC epoch). `cron` ticks are cronsim's (5 fields, or 6 with
seconds first), computed in the schedule's IANA `timezone` (daylight saving as cron
does it: a time skipped by the clock change fires at the first time after the gap, a
fixed time repeated fires once, a step or range over the repeated hour fires in both
passes). `every` N ticks are the multiples of N seconds since
1970-01-01T00:00:00Z, whatever the timezone (every 3600: on the hour, UTC).

A tick is *late* when it is at most `grace` seconds in the past when a dispatcher fires
it, and *missed* when older: only ticks that fell while no dispatcher ran are missed in
practice. Late ticks always fire, each once; `catch_up` says what the missed ones do:
"one" (the latest missed tick fires), "none" (none fires), "all" (each fires, oldest
first). At most MAX_TICKS late and MAX_TICKS missed ticks fire in one firing (the latest
of each kind).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

CATCH_UP = ("one", "none", "all")
MAX_TICKS = 100
MAX_EVERY = 10 * 365 * 86_400  # ten years, in seconds


class BadTiming(ValueError):
    """A schedule's cron, every or timezone is not usable; str() names the field."""


@dataclass(frozen=True)
class Timing:
    cron: str | None = None
    every: int | None = None
    timezone: str = "UTC"

    @property
    def zone(self) -> tzinfo:
        return _zone(self.timezone)

    def after(self, t: float) -> float:
        """The first tick strictly after `t`."""
        if self.every is not None:
            return float((math.floor(t / self.every) + 1) * self.every)
        return next(CronSim(self.cron, datetime.fromtimestamp(t, self.zone))).timestamp()

    def before(self, t: float, limit: int, floor: float) -> list[float]:
        """Up to `limit` ticks strictly before `t` and not before `floor`, the latest
        first."""
        if self.every is not None:
            k = math.ceil(t / self.every) - 1
            ticks = (float((k - i) * self.every) for i in range(limit))
            return [tick for tick in ticks if tick >= floor]
        out: list[float] = []
        for when in CronSim(self.cron, datetime.fromtimestamp(t, self.zone), reverse=True):
            stamp = when.timestamp()
            if len(out) == limit or stamp < floor:
                break
            if stamp < t:  # cronsim's first reverse tick may be `t` itself (whole seconds)
                out.append(stamp)
        return out


def timing(cron: str | None, every: int | None, timezone_: str | None) -> Timing:
    """A Timing from a schedule's fields, checked: exactly one of cron and every; every a
    whole number of seconds from 1; a cron expression cronsim accepts and that ever
    fires; an IANA timezone this machine knows."""
    if (cron is None) == (every is None):
        raise BadTiming("give exactly one of 'cron' and 'every'")
    zone_name = "UTC" if timezone_ is None else timezone_
    _zone(zone_name)
    if every is not None:
        if isinstance(every, bool) or not isinstance(every, int) or not 1 <= every <= MAX_EVERY:
            raise BadTiming(f"'every' must be a whole number of seconds from 1 to {MAX_EVERY}")
        return Timing(every=every, timezone=zone_name)
    if not isinstance(cron, str) or not cron.strip():
        raise BadTiming("'cron' must be a cron expression such as '*/5 * * * *'")
    try:  # cronsim checks the fields when it is made, and the dates when it first ticks
        next(CronSim(cron, datetime(2000, 1, 1, tzinfo=timezone.utc)))
    except CronSimError as exc:
        raise BadTiming(f"'cron' {cron!r} is not valid: {exc}") from None
    except StopIteration:
        raise BadTiming(f"'cron' {cron!r} never fires") from None
    return Timing(cron=cron.strip(), timezone=zone_name)


def _zone(name: str) -> tzinfo:
    if name == "UTC":
        return timezone.utc  # known without a time zone database
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise BadTiming(
            f"'timezone' {name!r} is not a known IANA time zone (such as 'Europe/Berlin')"
        ) from None


def due(
    when: Timing, expected: float, now: float, catch_up: str, grace: float
) -> tuple[list[float], float]:
    """The ticks a firing at `now` creates tasks for, oldest first, and the schedule's
    next run: `expected` is its stored next_run_at, the first tick not yet fired."""
    if expected > now:
        return [], expected
    cutoff = now - grace  # ticks before it are missed, from it on late
    late = when.before(math.floor(now) + 1, MAX_TICKS, max(expected, cutoff))
    missed: list[float] = []
    if expected < cutoff and catch_up != "none":
        missed = when.before(cutoff, 1 if catch_up == "one" else MAX_TICKS, expected)
    return sorted(missed + late), when.after(now)
