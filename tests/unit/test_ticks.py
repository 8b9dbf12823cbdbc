"""dispatcher/ticks.py: when a schedule's ticks fall (cron in a time zone, every N s) and
which ticks a firing creates tasks for (late ones always; missed ones by catch_up)."""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from dispatcher.ticks import MAX_TICKS, BadTiming, due, timing

UTC = timezone.utc
GRACE = 60.0


def at(*args, tz=UTC) -> float:
    return datetime(*args, tzinfo=tz).timestamp()


def test_every_ticks_at_multiples_of_its_seconds_since_the_epoch():
    t = timing(None, 60, None)
    assert t.after(at(2026, 1, 1, 12, 0, 30)) == at(2026, 1, 1, 12, 1)
    assert t.after(at(2026, 1, 1, 12, 1)) == at(2026, 1, 1, 12, 2)  # strictly after
    assert t.before(at(2026, 1, 1, 12, 1), 2, 0) == [at(2026, 1, 1, 12, 0), at(2026, 1, 1, 11, 59)]


def test_cron_ticks_in_its_time_zone_across_daylight_saving():
    berlin = ZoneInfo("Europe/Berlin")
    t = timing("30 2 * * *", None, "Europe/Berlin")
    # 2026-03-29 02:30 does not exist in Berlin: cron fires at 03:00, then 02:30 again
    first = t.after(at(2026, 3, 28, 12, 0, tz=berlin))
    assert first == at(2026, 3, 29, 1, 0)  # 03:00 CEST, 01:00 UTC
    assert t.after(first) == at(2026, 3, 30, 2, 30, tz=berlin)
    # 02:30 on the day clocks go back (it happens twice) fires once
    fall = t.after(at(2026, 10, 24, 12, 0, tz=berlin))
    assert t.after(fall) - fall == 86_400 + 3600
    assert timing("0 9 * * *", None, "UTC").after(at(2026, 6, 1)) == at(2026, 6, 1, 9)


def test_cron_with_seconds_and_reverse():
    t = timing("*/10 * * * * *", None, None)
    assert t.after(at(2026, 1, 1, 0, 0, 5)) == at(2026, 1, 1, 0, 0, 10)
    assert t.before(at(2026, 1, 1, 0, 0, 20), 5, at(2026, 1, 1, 0, 0, 0)) == [
        at(2026, 1, 1, 0, 0, 10),
        at(2026, 1, 1, 0, 0, 0),
    ]


@pytest.mark.parametrize(
    "cron, every, zone, message",
    [
        (None, None, None, "exactly one of 'cron' and 'every'"),
        ("* * * * *", 5, None, "exactly one of 'cron' and 'every'"),
        ("61 * * * *", None, None, "'cron' '61 * * * *' is not valid: Bad minute"),
        ("* * * *", None, None, "is not valid: Wrong number of fields"),
        ("0 0 31 2 *", None, None, "is not valid: Bad day-of-month"),
        (None, 0, None, "'every' must be a whole number of seconds from 1"),
        (None, 2.5, None, "'every' must be a whole number"),
        ("* * * * *", None, "Mars/Olympus", "'timezone' 'Mars/Olympus' is not a known IANA"),
        ("* * * * *", None, "../../etc/passwd", "is not a known IANA time zone"),
    ],
)
def test_a_bad_timing_says_what_is_wrong(cron, every, zone, message):
    with pytest.raises(BadTiming, match=None) as info:
        timing(cron, every, zone)
    assert message in str(info.value)


T = at(2026, 1, 1, 12, 0)  # a tick of every 1, 10 and 60


def test_on_time_and_a_little_late_every_tick_fires_whatever_catch_up():
    every = timing(None, 10, None)
    for catch_up in ("one", "none", "all"):
        assert due(every, T, T - 1, catch_up, GRACE) == ([], T)  # not yet
        assert due(every, T, T + 0.01, catch_up, GRACE) == ([T], T + 10)
        # a dispatcher 35 s behind: all four ticks are late, not missed
        assert due(every, T, T + 35, catch_up, GRACE) == ([T, T + 10, T + 20, T + 30], T + 40)


def test_missed_ticks_follow_catch_up():
    every = timing(None, 10, None)
    now = T + 1000  # down ~16 minutes: ticks before now - 60 are missed
    late = [T + 940 + 10 * i for i in range(7)]  # T+940 .. T+1000
    assert due(every, T, now, "none", GRACE) == (late, T + 1010)
    assert due(every, T, now, "one", GRACE) == ([T + 930, *late], T + 1010)
    ticks, _ = due(every, T, now, "all", GRACE)
    assert ticks == [T + 10 * i for i in range(101)]  # T .. T+1000, oldest first
    # more than MAX_TICKS missed: the latest MAX_TICKS of them
    ticks, _ = due(every, T, T + 10_000, "all", GRACE)
    missed = [t for t in ticks if t < T + 10_000 - GRACE]
    assert len(missed) == MAX_TICKS and missed[-1] == T + 10_000 - GRACE - 10


def test_a_late_tick_exactly_at_the_grace_boundary_is_late_not_missed():
    every = timing(None, 1, None)
    assert due(every, T, T + GRACE, "none", GRACE)[0][0] == T
