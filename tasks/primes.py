"""`primes`: count the primes in the closed range [start, limit].

Result: {"count", "largest", "algorithm"} plus "primes" (the list) when count <= 1000.

The sieve is segmented and odd-only: one bytearray of SEGMENT_SIZE flags stands for
SEGMENT_SIZE consecutive odd numbers, so limit = 10**8 needs ~1 MB of flags at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import compress
from math import isqrt
from typing import Annotated, Any, Literal

from msgspec import Meta

from common.config import Config
from common.rules import show
from tasks.errors import InvalidPayload
from tasks.typed import task

LIST_MAX = 1000  # the primes themselves are returned only up to this count
SEGMENT_SIZE = 1 << 20  # odd numbers per sieve segment (one byte each)


def within_limits(payload: dict, config: Config) -> None:
    """PRIMES_MAX_LIMIT and TRIAL_DIVISION_MAX_LIMIT, and start <= limit."""
    limit, start = payload["limit"], payload["start"]
    if limit > config.primes_max_limit:
        raise InvalidPayload(
            f"primes field 'limit' must be at most {config.primes_max_limit} "
            f"(PRIMES_MAX_LIMIT), not {show(limit)}"
        )
    if payload["algorithm"] == "trial_division" and limit > config.trial_division_max_limit:
        raise InvalidPayload(
            f"primes field 'limit' must be at most {config.trial_division_max_limit} "
            f"(TRIAL_DIVISION_MAX_LIMIT) with algorithm 'trial_division'; "
            f"use algorithm 'sieve' for larger limits"
        )
    if not 0 <= start <= limit:
        raise InvalidPayload(
            f"primes field 'start' must be between 0 and {limit} (the limit), not {show(start)}"
        )


@task("primes", check=within_limits)
def primes(
    limit: Annotated[int, Meta(ge=2)],
    start: int = 2,
    algorithm: Literal["sieve", "trial_division"] = "sieve",
) -> dict[str, Any]:
    """Count the primes from start to limit (and list them when there are at most 1000)."""
    if algorithm == "sieve":
        count, largest, listed = sieve(start, limit)
    else:
        count, largest, listed = _summarize(trial_division(start, limit))
    result: dict[str, Any] = {"count": count, "largest": largest, "algorithm": algorithm}
    if listed is not None:
        result["primes"] = listed
    return result


# -- segmented sieve ---------------------------------------------------------------------


def small_odd_primes(n: int) -> list[int]:
    """The odd primes <= n, by a plain sieve of Eratosthenes (n is at most ~sqrt(limit))."""
    if n < 3:
        return []
    flags = bytearray([1]) * (n + 1)
    flags[0:2] = b"\x00\x00"
    for i in range(2, isqrt(n) + 1):
        if flags[i]:
            flags[i * i :: i] = bytes(len(range(i * i, n + 1, i)))
    return list(compress(range(3, n + 1, 2), flags[3::2]))


def sieve(start: int, limit: int) -> tuple[int, int | None, list[int] | None]:
    """(count, largest, primes or None if count > LIST_MAX) for the primes in [start, limit]."""
    count = 0
    largest: int | None = None
    listed: list[int] | None = []
    if start <= 2 <= limit:
        count, largest, listed = 1, 2, [2]
    low = max(start, 3) | 1  # the first odd number to sieve
    if low > limit:
        return count, largest, listed
    base = small_odd_primes(isqrt(limit))
    zeros = memoryview(bytes(SEGMENT_SIZE))
    # Each segment's flags[i] stands for the odd number seg_low + 2 * i.
    for seg_low in range(low, limit + 1, 2 * SEGMENT_SIZE):
        size = min(SEGMENT_SIZE, (limit - seg_low) // 2 + 1)
        seg_high = seg_low + 2 * (size - 1)
        flags = bytearray([1]) * size
        for p in base:
            first = p * p
            if first > seg_high:
                break
            if first < seg_low:
                first = -(-seg_low // p) * p  # the first multiple of p >= seg_low ...
                if not first & 1:
                    first += p  # ... that is odd
            i = (first - seg_low) // 2
            if i < size:
                flags[i::p] = zeros[: (size - 1 - i) // p + 1]
        found = flags.count(1)
        if not found:
            continue
        largest = seg_low + 2 * flags.rfind(1)
        if listed is not None and count + found <= LIST_MAX:
            i = flags.find(1)
            while i >= 0:
                listed.append(seg_low + 2 * i)
                i = flags.find(1, i + 1)
        else:
            listed = None
        count += found
    return count, largest, listed


# -- trial division ----------------------------------------------------------------------


def _odd_primes_by_trial(low: int, high: int, divisors: list[int]) -> Iterator[int]:
    """The odd primes in [low, high] (low odd, >= 3), each tested by the odd primes up to
    its square root, which `divisors` must hold in order (it may grow while we iterate)."""
    k = 0  # divisors[:k] are the odd primes <= sqrt(n)
    active: list[int] = []
    for n in range(low, high + 1, 2):
        if k < len(divisors) and divisors[k] * divisors[k] <= n:
            while k < len(divisors) and divisors[k] * divisors[k] <= n:
                k += 1
            active = divisors[:k]
        if 0 not in map(n.__mod__, active):
            yield n


def trial_division(start: int, limit: int) -> Iterator[int]:
    """The primes in [start, limit] in increasing order, by trial division."""
    if start <= 2 <= limit:
        yield 2
    low = max(start, 3) | 1
    if low > limit:
        return
    # The odd primes up to sqrt(limit), found by trial division against themselves: every
    # divisor a candidate n needs is < n, so it has already been appended.
    base: list[int] = []
    for p in _odd_primes_by_trial(3, isqrt(limit), base):
        base.append(p)
    yield from _odd_primes_by_trial(low, limit, base)


def _summarize(primes: Iterator[int]) -> tuple[int, int | None, list[int] | None]:
    count = 0
    largest: int | None = None
    listed: list[int] | None = []
    for p in primes:
        count += 1
        largest = p
        if listed is not None:
            listed.append(p)
            if count > LIST_MAX:
                listed = None
    return count, largest, listed
