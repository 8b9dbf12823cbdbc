"""Delivers results: everything finished close together goes in one `submit-results`
call; what cannot be delivered goes to the on-disk cache and is re-sent every
CACHE_RETRY_INTERVAL, at start-up and as soon as the dispatcher answers again.

A call may carry the worker's next claim (Faktory's ACK+FETCH): the worker's `Bundle`
offers one when it wants work and its own claim is not out, and takes what the answer
claimed. Such a call may be held by the dispatcher as a long poll when the worker has
nothing else running; `end_hold()` cuts it short at shutdown, and its results are then
sent again alone (sending results twice is safe: the repeat gets the same answer)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Protocol

from common.client import ApiError, Client, DispatcherUnreachable

from . import metrics
from .cache import ResultCache

log = logging.getLogger("worker")

SENT_KEYS = ("task_id", "worker_id", "lease_token", "status", "result", "error")
# a dispatcher that answered a claim sent with results without `tasks` (older than them)
# is asked again this much later: in between, the worker claims on its own
UNBUNDLED_RECHECK_S = 60.0


class Bundle(Protocol):
    def claim_with_results(self) -> dict | None:
        """The claim to send with the next results (a /get-task body), or None."""

    def claimed_with_results(self, tasks: list[dict] | None) -> None:
        """What the offered claim brought (None: it was not made), once per offer."""


class Reporter:
    def __init__(
        self,
        client: Client,
        cache: ResultCache,
        worker_id: str,
        max_batch: int,
        retry_interval: float,
        ttl: float,
        clock: Callable[[], float] = time.time,
        on_answer: Callable[[dict, dict], None] | None = None,
        bundle: Bundle | None = None,
    ):
        """`on_answer(result, answer)` is called for each result the dispatcher answered
        (the answer is `{"task_id", "status"}` or `{"task_id", "error", "code"}`)."""
        self.client = client
        self.cache = cache
        self.worker_id = worker_id
        self.max_batch = max_batch
        self.retry_interval = retry_interval
        self.ttl = ttl
        self.clock = clock
        self.on_answer = on_answer
        self.bundle = bundle
        self._holding = False  # a call with a claim that may be held is out
        self._ended = False  # end_hold() cut it short
        self._no_holds = False  # end_hold() was called: no claim waits from now on
        self._hold_lock = threading.Lock()
        self._unbundled_until = 0.0  # monotonic: no claims with results before it
        self._claim_error = ""  # the last claim_error logged
        self.queue: queue.Queue[dict] = queue.Queue()
        self._in_hand = 0  # results put() and not yet delivered or cached
        self._settled = threading.Condition()
        self._closing = threading.Event()
        self._next_flush = 0.0  # flush the cache at start-up
        self._cached = len(cache)  # entries on disk, kept here so the hot path lists nothing
        self._count_lock = threading.Lock()  # _cached moves in two threads
        self._flush_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="reporter", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, result: dict) -> None:
        with self._settled:
            self._in_hand += 1
        self.queue.put(result)

    def wait_settled(self, timeout: float) -> bool:
        """Until every result put() so far is delivered or cached; False on timeout."""
        with self._settled:
            return self._settled.wait_for(lambda: self._in_hand == 0, timeout)

    def _settle(self, count: int) -> None:
        with self._settled:
            self._in_hand -= count
            self._settled.notify_all()

    def close(self, timeout: float) -> None:
        """Deliver (or cache) everything queued, then stop. What is still queued when
        the thread has not finished in time goes to the cache."""
        self._closing.set()
        self.queue.put({})  # wake the thread
        self._thread.join(timeout)
        left = []
        while not self.queue.empty():
            item = self.queue.get_nowait()
            if item:
                left.append(item)
        if left:
            try:
                self._cache(left, "the worker is stopping and the dispatcher is slow")
            finally:
                self._settle(len(left))

    def _run(self) -> None:
        while True:
            try:
                if self._step():
                    return
            except Exception:  # never die: a dead reporter would strand every result
                log.exception("reporter error worker=%s; going on", self.worker_id)
                time.sleep(0.5)

    def _step(self) -> bool:
        """Deliver what is queued (one call), flush the cache when due; True when done."""
        wait = max(0.01, self._next_flush - time.monotonic()) if self._cached else None
        try:
            first = self.queue.get(timeout=wait)
        except queue.Empty:
            first = None
        batch = [first] if first else []
        while len(batch) < self.max_batch:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if item:
                batch.append(item)
        try:
            delivered = self._deliver(batch) if batch else None
        finally:
            self._settle(len(batch))
        if self._cached and (delivered or time.monotonic() >= self._next_flush):
            self.flush_cache()
        return self._closing.is_set() and self.queue.empty()

    def end_hold(self) -> None:
        """From another thread: end a held call with a claim now, and let no later one
        wait (the worker stops)."""
        with self._hold_lock:
            self._no_holds = True
            if self._holding:
                self._ended = True
                self.client.abort()

    def _deliver(self, batch: list[dict], bundled: bool = True) -> bool:
        claim = self.bundle.claim_with_results() if bundled and self.bundle else None
        if claim is not None:  # asked even when not sent: the worker waits for the asking
            if self._unbundled_until and time.monotonic() < self._unbundled_until:
                self.bundle.claimed_with_results(None)
            else:
                return self._deliver_with_claim(batch, claim)
        try:
            answers = self.client.submit_results([_body(r) for r in batch])
        except ApiError as exc:
            if exc.status in (400, 413):  # one bad item refuses the whole call: go one by one
                return all([self._deliver_alone(r, self.client) for r in batch])
            self._cache(batch, exc)
            return False
        except DispatcherUnreachable as exc:
            self._cache(batch, exc)
            return False
        for r, answer in zip(batch, answers, strict=True):
            self._answered(r, answer)
        return True

    def _deliver_with_claim(self, batch: list[dict], claim: dict) -> bool:
        tasks, ended, answers = None, False, None
        try:
            with self._hold_lock:
                if self._no_holds:
                    claim = dict(claim, wait=0.0)
                self._holding, self._ended = bool(claim.get("wait")), False
            try:
                answer = self.client.submit_results_and_claim([_body(r) for r in batch], claim)
            finally:
                with self._hold_lock:
                    self._holding, ended = False, self._ended
            answers = answer["results"]
            tasks = self._claimed(answer)
        except (ApiError, DispatcherUnreachable) as exc:
            if isinstance(exc, DispatcherUnreachable) and not ended:
                self._cache(batch, exc)
                return False
        finally:
            self.bundle.claimed_with_results(tasks)
        if answers is None:  # cut short at shutdown, or refused: the results alone
            return self._deliver(batch, bundled=False)
        for r, answer in zip(batch, answers, strict=True):
            self._answered(r, answer)
        return True

    def _claimed(self, answer: dict) -> list[dict] | None:
        """The tasks a claim sent with results brought; None when it was not made."""
        tasks = answer.get("tasks")
        error = answer.get("claim_error")
        if isinstance(error, dict):
            said = f"{error.get('code')}: {error.get('error')}"
            if said != self._claim_error:  # once per change, not per delivery
                self._claim_error = said
                log.warning(
                    "claim sent with results refused worker=%s (%s); claiming on its own",
                    self.worker_id,
                    said,
                )
            return None
        self._claim_error = ""
        if not isinstance(tasks, list):  # a dispatcher older than claims with results
            self._unbundled_until = time.monotonic() + UNBUNDLED_RECHECK_S
            return None
        self._unbundled_until = 0.0
        return tasks

    def _deliver_alone(self, result: dict, client: Client) -> bool:
        try:
            [answer] = client.submit_results([_body(result)])
        except DispatcherUnreachable as exc:
            self._cache([result], exc)
            return False
        except ApiError as exc:
            if exc.status not in (400, 413):
                self._cache([result], exc)
                return False
            # this result can never be delivered (too large, not JSON the dispatcher takes):
            # report the task failed instead of losing it
            log.error(
                "result of task %s refused worker=%s (%s); reporting the task failed",
                result["task_id"],
                self.worker_id,
                exc,
                extra={"task_id": result["task_id"]},
            )
            failed = dict(result, status="failed", result=None)
            failed["error"] = f"the worker's result was refused by the dispatcher: {exc.message}"
            try:
                [answer] = client.submit_results([_body(failed)])
            except (DispatcherUnreachable, ApiError) as again:
                self._cache([failed], again)
                return False
        self._answered(result, answer)
        return True

    def _answered(self, result: dict, answer: dict, cached: bool = False) -> None:
        _log_answer(result, answer, self.worker_id, cached)
        if self.on_answer is not None:
            self.on_answer(result, answer)

    def _cache(self, batch: list[dict], reason: Exception | str) -> None:
        now = self.clock()
        for r in batch:
            with self._count_lock:
                self.cache.put(r, now)
                self._cached += 1
            metrics.RESULTS_CACHED.inc()
            log.warning(
                "result of task %s cached worker=%s: dispatcher did not take it (%s)",
                r["task_id"],
                self.worker_id,
                reason,
                extra={"task_id": r["task_id"]},
            )

    @property
    def has_cached(self) -> bool:
        return self._cached > 0

    def flush_cache(self, client: Client | None = None) -> None:
        """Re-send cached results; drop those older than CACHE_TTL_SECONDS. Other threads
        pass their own client (the fetcher flushes before it claims after an outage)."""
        with self._flush_lock:
            try:
                self._flush(client or self.client)
            finally:
                with self._count_lock:  # recount: the reporter may have cached meanwhile
                    self._cached = len(self.cache)

    def _flush(self, client: Client) -> None:
        self._next_flush = time.monotonic() + self.retry_interval
        now = self.clock()
        fresh = []
        for path, entry in self.cache.entries():
            if now - entry.get("cached_at", 0) > self.ttl:
                log.warning(
                    "cached result of task %s dropped worker=%s: older than CACHE_TTL_SECONDS",
                    entry.get("task_id"),
                    self.worker_id,
                )
                self.cache.remove(path)
            else:
                fresh.append((path, entry))
        for i in range(0, len(fresh), self.max_batch):
            chunk = fresh[i : i + self.max_batch]
            try:
                answers = client.submit_results([_body(e) for _, e in chunk])
            except ApiError as exc:
                if exc.status not in (400, 413):
                    log.info("cache re-send postponed worker=%s: %s", self.worker_id, exc)
                    return
                for path, entry in chunk:  # one bad entry refuses the call: one by one
                    if self._deliver_alone(entry, client):
                        self.cache.remove(path)
                continue
            except DispatcherUnreachable as exc:
                log.info("cache re-send postponed worker=%s: %s", self.worker_id, exc)
                return
            for (path, entry), answer in zip(chunk, answers, strict=True):
                self._answered(entry, answer, cached=True)
                self.cache.remove(path)


def _body(result: dict) -> dict:
    return {k: result.get(k) for k in SENT_KEYS}


def _log_answer(result: dict, answer: dict, worker_id: str, cached: bool = False) -> None:
    source = "cached result" if cached else "result"
    if "error" in answer:
        log.warning(
            "%s of task %s refused worker=%s (%s): %s",
            source,
            result["task_id"],
            worker_id,
            answer.get("code"),
            answer["error"],
            extra={"task_id": result["task_id"]},
        )
    elif log.isEnabledFor(logging.INFO):
        log.info(
            "%s of task %s delivered worker=%s status=%s",
            source,
            result["task_id"],
            worker_id,
            answer.get("status"),
            extra={"task_id": result["task_id"]},
        )
