"""The worker: claim (long poll) -> run in a pool process -> report (or cache) -> repeat.

Threads, each with its own HTTP connection:
- the main thread starts buffered tasks in the pool as slots free up;
- the fetcher long-polls `get-task` whenever the buffer is below concurrency + prefetch;
- the reporter sends results in batches and owns the on-disk cache; while quick tasks
  run, the worker's next claim goes with their results in the same request (ACK+FETCH,
  `claim_with_results`), held as the long poll when nothing else runs, instead of a claim
  of the fetcher's running beside the task;
- the heartbeat thread extends leases, abandons what the dispatcher says to, and carries
  the progress tasks report (worker/progress.py; a thread reads the pool's reports).
A network error costs a log line and a capped back-off; nothing a task does (raise,
time out, crash its process) stops the worker.

Burst mode (`run(burst=True)`, `--burst`; RQ's `work(burst=True)`): claims never wait
(`wait` 0); once a claim made with nothing running, nothing buffered and every result
delivered or cached comes back empty, the queues have nothing ready for this worker
(tasks scheduled for later and tasks held by other workers do not count) and it stops
as on SIGTERM, delivering its results and its cache first. Exit status 0 when every task
it took ended with its result taken by the dispatcher (completed, or failed by the
task's own doing: an error, a timeout, a crash of its process); 1 when the dispatcher
could not be reached for WORKER_DEAD_AFTER seconds (by then it counts the worker dead
anyway), refused a claim, or a task it took did not end here (cancelled, leased to
another worker, given back at a signal, its result refused or left in the cache).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from pebble import ProcessFuture

from common.breaker import CircuitBreaker
from common.client import ApiError, BreakerRefused, Client, Dispatchers, DispatcherUnreachable
from common.config import Config
from common.tls import certificate_failure

from . import metrics
from .cache import ResultCache
from .pool import TaskPool, outcomes
from .prefetch import TARGET_S as PREFETCH_TARGET_S
from .prefetch import Prefetch
from .progress import SOONER_S as PROGRESS_SOONER_S
from .progress import Board
from .reporter import Reporter

log = logging.getLogger("worker")

RETRY_429_FOR = 30.0  # seconds a call answered 429 is tried again before it counts as refused

SHED_CHECK_S = 0.25  # how often a busy worker checks whether to give prefetched work back
# Chunks: tasks whose measured average is under CHUNK_TASK_MAX_S go to a pool process
# several at a time, about CHUNK_TARGET_S of work per call. A chunk may run for
# CHUNK_SLACK times its expected time (at least CHUNK_MIN_TIMEOUT_S, at most its
# tightest task timeout); past that it is killed and its tasks run again one by one,
# each with its own timeout.
CHUNK_TASK_MAX_S = 0.01
CHUNK_TARGET_S = 0.05
CHUNK_MAX = 100
CHUNK_SLACK = 20
CHUNK_MIN_TIMEOUT_S = 2.0
SHED_MARGIN_S = 0.15  # prefetch claims end this long before a running task counts as long
REMEMBER_COMPLETED = 10_000  # task ids a worker keeps of what it completed
# while every slot is busy with tasks that take less than this (on average, and so far),
# the fetcher leaves the next claim to their results' request (claim_with_results)
BUNDLE_MAX_S = 0.1


@dataclass
class Running:
    claim: dict
    future: ProcessFuture
    started: float


class Backoff:
    """Capped exponential back-off for an unreachable dispatcher."""

    def __init__(self, cap: float, first: float = 0.1):
        self.cap, self.first, self.current = cap, first, first

    def next(self) -> float:
        delay, self.current = self.current, min(self.cap, self.current * 2)
        return delay

    def reset(self) -> None:
        self.current = self.first


class Worker:
    def __init__(self, config: Config, worker_id: str, clock: Callable[[], float] = time.time):
        self.config = config
        self.worker_id = worker_id
        self.instance_id = os.urandom(16).hex()  # uuid's import costs start-up ~3 ms
        self.clock = clock
        self.stopping = threading.Event()  # no more claims
        self.stopped = threading.Event()  # shutdown complete: heartbeats end too
        self.exit_code = 0
        self.burst = False
        self.owed: set[str] = set()  # burst: tasks taken whose result is not taken yet
        self.taken = 0  # burst: claims of tasks it ran or held
        self._finished = 0  # pool calls ended (a burst fetcher waits for one)
        self.cv = threading.Condition()
        self.buffer: deque[dict] = deque()  # claimed, not started (prefetch)
        self.running: dict[str, Running] = {}  # task id -> its chunk's call
        self.inflight = 0  # pool calls running (each holds one slot)
        self.abandoned: set[str] = set()
        # tasks this worker completed lately: a claim of one of them is the dispatcher
        # giving up a lease just before the result arrived, not work to do again
        self.completed: OrderedDict[str, None] = OrderedDict()
        self._fetching = False  # the fetcher's claim is out
        self._bundled = False  # a claim is out with results (claim_with_results)
        self._unoffered = 0  # pool calls reported since the reporter last asked
        # one list position for all of this worker's connections: they move together
        self.dispatchers = Dispatchers(config.dispatcher_url, ca_file=config.dispatcher_ca_file)
        # one circuit breaker for all of them: after WORKER_BREAKER_FAILURES failed calls
        # in a row, no thread calls the dispatcher until the breaker's back-off is over
        self.breaker = CircuitBreaker(
            config.worker_breaker_failures,
            config.worker_breaker_max_backoff,
            on_failure=lambda: metrics.DISPATCHER_ERRORS.inc(),
        )
        self.prefetch = Prefetch(config.prefetch, config.worker_concurrency, config.max_batch)
        self._beat_now = threading.Event()  # set: the heartbeat thread looks again
        self.progress = Board(on_change=self._beat_now.set)  # what tasks reported
        self.pool = TaskPool(
            config.worker_concurrency,
            config.worker_max_tasks_per_child,
            config.modules,
            config.http_request_allow_list,
            on_progress=self.progress.put,
        )
        self.reporter = Reporter(
            self._client(),
            ResultCache(config.cache_dir() / worker_id),
            worker_id,
            max_batch=config.max_batch,
            retry_interval=config.cache_retry_interval,
            ttl=config.cache_ttl_seconds,
            clock=clock,
            on_answer=self._answered,
            bundle=self,
        )
        self._fetch_client = self._client()
        self._fetcher = threading.Thread(target=self._fetch_loop, name="fetcher", daemon=True)
        self._beater = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)

    def _client(self) -> Client:
        """A Client for one thread: its own connection, the shared list position and
        circuit breaker."""
        return Client(
            self.dispatchers,
            self.config.api_token,
            self.breaker,
            retry_429_for=RETRY_429_FOR,
            pause=self.stopping.wait,  # a stopping worker waits no more: results are cached
            on_429=self._busy,
        )

    def _busy(self, exc: ApiError, delay: float) -> None:
        log.info(
            "dispatcher answered 429, trying again in %.1f s worker=%s: %s",
            delay,
            self.worker_id,
            exc.message,
        )

    # -- the main loop ------------------------------------------------------------

    def run(self, burst: bool = False) -> int:
        """Work until stop() (a signal), or with `burst` until the queues have nothing
        ready (see the module docstring); the exit status."""
        self.burst = burst
        log.info(
            "worker %s starting (instance %s) dispatcher=%s concurrency=%d queues=%s%s",
            self.worker_id,
            self.instance_id,
            self.config.dispatcher_url,
            self.config.worker_concurrency,
            ",".join(self.config.queues),
            " burst" if burst else "",
        )
        if self.config.worker_metrics_port:
            metrics.serve(self.config.worker_metrics_port, "0.0.0.0", lambda: self.breaker.state)
            log.info("worker metrics on port %d", self.config.worker_metrics_port)
        self.pool.warm()
        self.reporter.flush_cache()  # results a previous run could not deliver
        self.reporter.start()
        self._beater.start()
        self._fetcher.start()
        client = self._client()
        while True:
            with self.cv:
                ready = self.cv.wait_for(
                    lambda: self.stopping.is_set() or self._can_start(),
                    timeout=SHED_CHECK_S,
                )
                if self.stopping.is_set():
                    break
                if ready:
                    self._start_or_stop(self._take_chunk())
                    continue
                shed = self._to_shed()
            if shed:
                log.info(
                    "giving back %d prefetched task(s) worker=%s: a running task is long",
                    len(shed),
                    self.worker_id,
                )
                with self.cv:  # given back by choice: no result owed
                    self.owed.difference_update(c["task_id"] for c in shed)
                self._release(client, shed)
        self._shutdown(client)
        client.close()
        return self.exit_code

    def stop(self, reason: str = "stop requested", exit_code: int = 0) -> None:
        if not self.stopping.is_set():
            log.info("worker %s stopping: %s", self.worker_id, reason)
            self.exit_code = exit_code
        self.stopping.set()
        with self.cv:
            self.cv.notify_all()

    def _can_start(self) -> bool:
        """A buffered task and a free slot (called with self.cv held)."""
        return bool(self.buffer) and self.inflight < self.config.worker_concurrency

    def _longest_running(self) -> float:
        now = time.monotonic()
        return max((now - r.started for r in self.running.values()), default=0.0)

    def _to_shed(self) -> list[dict]:
        """With `auto` prefetch, buffered tasks waiting behind long-running ones go back
        to the queue (called with self.cv held)."""
        if not (self.prefetch.auto and self.buffer):
            return []
        if self.prefetch.size(self._longest_running()) > 0:
            return []
        shed = list(self.buffer)
        self.buffer.clear()
        return shed

    def _new_claims(self, claims: list[dict]) -> list[dict]:
        """Claims for tasks this worker does not hold yet (called with self.cv held). A
        task it still runs or buffers can come back under a new lease after the
        dispatcher gave it up (a missed heartbeat): it keeps running once, under the
        new lease, which is the one the dispatcher expects a result for."""
        fresh = []
        for claim in claims:
            if claim["task_id"] in self.completed:
                log.info(
                    "task %s claimed again after it completed here worker=%s: "
                    "its result stands, it does not run twice",
                    claim["task_id"],
                    self.worker_id,
                )
                continue
            entry = self.running.get(claim["task_id"])
            if entry is not None:
                entry.claim["lease_token"] = claim["lease_token"]
                continue
            for held in self.buffer:
                if held["task_id"] == claim["task_id"]:
                    held["lease_token"] = claim["lease_token"]
                    break
            else:
                fresh.append(claim)
        return fresh

    def _start_or_stop(self, chunk: list[dict]) -> None:
        """Start a chunk; if the pool refuses (it broke), give the chunk back and stop
        the worker rather than hold tasks it can no longer run (called with cv held)."""
        try:
            self._start(chunk)
        except Exception as exc:
            log.error("pool refused work worker=%s: %s; stopping", self.worker_id, exc)
            self.buffer.extendleft(reversed(chunk))
            self.stop("the process pool failed", exit_code=1)

    def _take_chunk(self) -> list[dict]:
        """The next tasks to run in one pool call (called with self.cv held): one, or
        several when this worker's tasks are quick, spread over the free slots."""
        chunk = [self.buffer.popleft()]
        average = self.prefetch.average
        if chunk[0].get("solo") or average is None or average > CHUNK_TASK_MAX_S:
            return chunk
        if self.config.worker_max_tasks_per_child:  # it counts pool calls: one task each
            return chunk
        free = self.config.worker_concurrency - self.inflight + 1  # this slot included
        share = -(-(len(self.buffer) + 1) // free)  # ceil: leave work for the other slots
        size = min(CHUNK_MAX, max(1, int(CHUNK_TARGET_S / max(average, 1e-5))), share)
        while len(chunk) < size and self.buffer and not self.buffer[0].get("solo"):
            chunk.append(self.buffer.popleft())
        return chunk

    def _start(self, chunk: list[dict]) -> None:
        """Hand claimed tasks to a pool process (called with self.cv held)."""
        timeout = min(c["timeout"] for c in chunk)
        if len(chunk) > 1:
            expected = (self.prefetch.average or 0.0) * len(chunk)
            timeout = min(timeout, max(CHUNK_MIN_TIMEOUT_S, CHUNK_SLACK * expected))
        items = [
            (c["task_id"], c["attempt"], c.get("queue", ""), c["type"], c["payload"])
            + ((c["dependencies"],) if "dependencies" in c else ())
            for c in chunk
        ]  # a dispatcher older than the claim's queue: "" (unknown)
        future = self.pool.start(items, timeout)
        started = time.monotonic()
        for claim in chunk:
            self.running[claim["task_id"]] = Running(claim, future, started)
        self.inflight += 1
        future.add_done_callback(lambda f: self._done(chunk, f, timeout, started))
        if len(chunk) > 1:
            log.debug("chunk of %d tasks to one pool call worker=%s", len(chunk), self.worker_id)
        if log.isEnabledFor(logging.INFO):
            for claim in chunk:
                log.info(
                    "task %s started worker=%s type=%s attempt=%d",
                    claim["task_id"],
                    self.worker_id,
                    claim["type"],
                    claim["attempt"],
                    extra={
                        "task_id": claim["task_id"],
                        "worker_id": self.worker_id,
                        "attempt": claim["attempt"],
                    },
                )

    def _done(
        self, chunk: list[dict], future: ProcessFuture, timeout: float, started: float
    ) -> None:
        """Pool callback: the chunk ended one way or another. Results are queued for the
        reporter before their tasks leave `running`, so a stopping worker that sees
        nothing running knows every result is in the reporter's hands."""
        with self.cv:
            abandoned = {c["task_id"] for c in chunk if c["task_id"] in self.abandoned}
        elapsed = time.monotonic() - started
        bodies = outcomes(future, timeout)
        again: list[dict] = []  # to run once more, alone
        if bodies is not None:
            self.prefetch.observe(elapsed / len(chunk))
        if bodies is None:  # cancelled: tasks not abandoned themselves run again
            again = [c for c in chunk if c["task_id"] not in abandoned]
        elif isinstance(bodies, str) and len(chunk) > 1:
            log.warning(
                "chunk of %d tasks ended (%s) worker=%s; running them one by one",
                len(chunk),
                bodies,
                self.worker_id,
            )
            again = [c for c in chunk if c["task_id"] not in abandoned]
        else:
            if isinstance(bodies, str):
                bodies = [{"status": "failed", "error": bodies}]
            each = elapsed / len(chunk)
            if any(c["task_id"] not in abandoned for c in chunk):
                with self.cv:  # before the reporter has the results
                    self._unoffered += 1
            for claim, body in zip(chunk, bodies, strict=True):
                if claim["task_id"] not in abandoned:
                    metrics.TASKS_RUN.labels(claim["type"], body["status"]).inc()
                    metrics.TASK_SECONDS.labels(claim["type"]).observe(each)
                    self._report(claim, body, elapsed)
        with self.cv:
            for claim in chunk:
                entry = self.running.get(claim["task_id"])
                if entry is not None and entry.future is future:
                    del self.running[claim["task_id"]]
                self.abandoned.discard(claim["task_id"])
            self.inflight -= 1
            self._finished += 1
            self.buffer.extendleft(dict(c, solo=True) for c in reversed(again))
            self.cv.notify_all()

    def _report(self, claim: dict, body: dict, elapsed: float) -> None:
        task_id = claim["task_id"]
        if body["status"] == "completed":
            with self.cv:
                self.completed[task_id] = None
                while len(self.completed) > REMEMBER_COMPLETED:
                    self.completed.popitem(last=False)
        log.info(
            "task %s %s worker=%s in %.3f s",
            task_id,
            body["status"],
            self.worker_id,
            elapsed,
            extra={"task_id": task_id, "worker_id": self.worker_id, "attempt": claim["attempt"]},
        )
        result = {"task_id": task_id, "worker_id": self.worker_id}
        result["lease_token"] = claim["lease_token"]
        result.update(body)
        self.reporter.put(result)

    def _answered(self, result: dict, answer: dict) -> None:
        """Reporter callback: the dispatcher answered a result. A refused one (its lease
        was never issued: a claim the database lost in a crash; or the task finished
        otherwise) no longer stands for the task, so a later claim of it runs it again
        instead of counting on this result (at-least-once; docs/RELIABILITY.md)."""
        if "error" in answer:
            with self.cv:
                self.completed.pop(result["task_id"], None)
        elif self.burst:
            with self.cv:
                self.owed.discard(result["task_id"])

    # -- claims sent with results (the reporter's Bundle) ----------------------------

    def claim_with_results(self) -> dict | None:
        """Reporter: the claim to send with the results it is about to deliver, when
        this worker wants work and the fetcher's claim is not out. Held as a long poll
        only when nothing else runs or waits here (no result can come meanwhile)."""
        with self.cv:
            self._unoffered = 0
            self.cv.notify_all()  # the fetcher waits for this (_deferred)
            if self.burst or self.stopping.is_set() or self._fetching or self._bundled:
                return None
            want = self._wanted()
            if want <= 0:
                return None
            idle = not (self.inflight or self.running or self.buffer)
            quiet = idle and self.reporter.queue.empty() and not self.reporter.has_cached
            hold = self._hold() if quiet else 0.0
            self._bundled = True
        claim = {
            "worker_id": self.worker_id,
            "queues": list(self.config.queues),
            "wait": hold,
            "max_tasks": min(want, self.config.max_batch),
        }
        if self.instance_id:
            claim["instance_id"] = self.instance_id
        return claim

    def claimed_with_results(self, claims: list[dict] | None) -> None:
        """Reporter: what the offered claim brought (None: not made; the fetcher goes on)."""
        with self.cv:
            self._bundled = False
            if claims:
                self._buffer_claims(claims)
            self.cv.notify_all()

    def _deferred(self) -> bool:
        """The next claim waits for the results of the quick tasks running now, to go
        with them (called with self.cv held): while a claim is out with results, while
        results are on their way to the reporter (it asks claim_with_results before it
        sends them, a moment later), and while every slot runs quick tasks."""
        if self.burst:
            return False
        if self._bundled or self._unoffered:  # results (of quick tasks) on their way
            return True
        if not self.inflight:
            return False
        if len(self.running) + len(self.buffer) < self.config.worker_concurrency:
            return False
        average = self.prefetch.average
        return (
            average is not None
            and average < BUNDLE_MAX_S
            and self._longest_running() < BUNDLE_MAX_S
        )

    # -- claiming -----------------------------------------------------------------

    def _wanted(self) -> int:
        """How many tasks to claim now (called with self.cv held): enough to fill the
        slots and the prefetch, but only once the buffer is down to half the prefetch,
        so that claims stay large instead of one task per finished task."""
        # SHED_MARGIN_S: no claim for prefetch is still held when _to_shed gives back
        prefetch = self.prefetch.size(self._longest_running() + SHED_MARGIN_S)
        missing = self.config.worker_concurrency + prefetch - len(self.running) - len(self.buffer)
        idle = len(self.running) + len(self.buffer) < self.config.worker_concurrency
        if idle or len(self.buffer) <= prefetch // 2:
            return missing
        return 0

    def _hold(self) -> float:
        """How long the next claim may be held (called with self.cv held). With a free
        slot, a whole poll interval. When the claim only tops up the prefetch, no longer
        than the running tasks stay short: a claim held past that would take back the
        very tasks given back for being stuck behind a long one (_to_shed)."""
        poll = self.config.worker_poll_interval
        if self.burst:  # a claim that waits could not tell "nothing ready" from "later"
            return 0.0
        if self.inflight < self.config.worker_concurrency or not self.prefetch.auto:
            return poll
        left = PREFETCH_TARGET_S - SHED_MARGIN_S - self._longest_running()
        return min(poll, max(0.0, left))

    def _fetch_loop(self) -> None:
        self._guarded("fetcher", self._fetch)

    def _guarded(self, name: str, body) -> None:
        """Run a thread's loop; anything unexpected stops the worker (exit status 1)
        instead of leaving it alive without that thread."""
        try:
            body()
        except Exception:
            log.exception("%s thread failed worker=%s; stopping", name, self.worker_id)
            self.stop(f"the {name} thread failed", exit_code=1)

    def _fetch(self) -> None:
        client = self._fetch_client
        backoff = Backoff(cap=self.config.worker_poll_interval)
        outage = False
        outage_since = None
        refused_tls = ""  # the certificate failure last logged ("" : none)
        while not self.stopping.is_set():
            with self.cv:
                while not self.stopping.is_set():
                    deferred = self._deferred()
                    if not deferred and self._wanted() > 0:
                        break
                    # a task running past BUNDLE_MAX_S ends the deferral
                    self.cv.wait(BUNDLE_MAX_S if deferred else None)
                want = self._wanted()
                hold = self._hold()
                self._fetching = True
            if self.stopping.is_set():
                break
            quiet = self.burst and self._settle_for_burst()
            if (outage or quiet) and self.reporter.has_cached:
                self.reporter.flush_cache(client)  # deliver what was cached before claiming
            if outage:  # the first claim after an outage (maybe the breaker's probe) is quick
                hold = 0.0
            try:
                claims = self._claim(client, hold, min(want, self.config.max_batch))
            except DispatcherUnreachable as exc:
                if self.stopping.is_set():  # _shutdown ended the held claim
                    break
                outage = True
                outage_since = outage_since or time.monotonic()
                # not before the circuit breaker lets a call out again (its probe)
                delay = max(backoff.next(), self.breaker.retry_in())
                if self.burst:
                    left = self.config.worker_dead_after - (time.monotonic() - outage_since)
                    if left <= 0:
                        log.error("dispatcher unreachable worker=%s: %s", self.worker_id, exc)
                        self.stop(
                            "burst: the dispatcher did not answer for "
                            f"{self.config.worker_dead_after:g} s (WORKER_DEAD_AFTER)",
                            exit_code=1,
                        )
                        break
                    delay = min(delay, left)
                tls = certificate_failure(exc)
                if isinstance(exc, BreakerRefused):  # no call made: no news of the dispatcher
                    log.warning("dispatcher unreachable, retrying in %.1f s: %s", delay, exc)
                elif not tls:
                    refused_tls = ""
                    log.warning("dispatcher unreachable, retrying in %.1f s: %s", delay, exc)
                elif tls != refused_tls:  # once per change, not once per try
                    refused_tls = tls
                    log.error(
                        "dispatcher %s not trusted (%s), retrying with back-off worker=%s "
                        "(DISPATCHER_CA_FILE=%s)",
                        client.base_url,
                        tls,
                        self.worker_id,
                        self.config.dispatcher_ca_file or "unset: the system's store",
                    )
                else:
                    log.debug("dispatcher still not trusted, retrying in %.1f s", delay)
                self.stopping.wait(delay)
                continue
            except ApiError as exc:
                if self.burst and exc.status not in (409, 429):  # refused: give up now
                    log.error("dispatcher refused the claim worker=%s: %s", self.worker_id, exc)
                    self.stop("burst: the dispatcher refused the claim", exit_code=1)
                    break
                self._api_refused(exc)
                continue
            if outage_since is not None:
                log.info(
                    "dispatcher %s reachable again after %.0f s worker=%s",
                    client.base_url,
                    time.monotonic() - outage_since,
                    self.worker_id,
                )
                outage_since = None
            refused_tls = ""
            backoff.reset()
            outage = False
            if claims and self.stopping.is_set():  # claimed while stopping: give them back
                self._hand_back_late(claims)
                break
            if not claims:
                self._not_fetching()
            if self.burst and not claims:
                if quiet:  # nothing in hand, every result handed over, nothing ready
                    self.stop("burst: its queues have nothing ready")
                    break
                self._await_progress()
                continue
            with self.cv:
                self._fetching = False  # with its tasks in the buffer (_claim)
                stopped = self._buffer_claims(claims)
                self.cv.notify_all()
            if stopped:  # stopped while the poll was held: _shutdown gives them back
                break
        client.close()

    def _buffer_claims(self, claims: list[dict]) -> bool:
        """Claims just answered (the fetcher's, or those sent with results) into the
        buffer, started at once where a slot is free, not one thread hop later (called
        with self.cv held). While the worker stops they wait there for _shutdown to give
        them back; True then."""
        if self.stopping.is_set():
            self.buffer.extend(claims)
            return True
        fresh = self._new_claims(claims)
        if self.burst:
            self.owed.update(c["task_id"] for c in fresh)
            self.taken += len(fresh)
        self.buffer.extend(fresh)
        while self._can_start():
            self._start_or_stop(self._take_chunk())
        return False

    def _claim(self, client: Client, hold: float, max_tasks: int) -> list[dict]:
        """The fetcher's claim. `_fetching` stays set until its tasks are in the buffer
        (the caller clears it there), so that claim_with_results never takes the worker
        for idle while the tasks of this claim are on their way in."""
        try:
            return client.get_task(
                self.worker_id, self.instance_id, self.config.queues, wait=hold, max_tasks=max_tasks
            )
        except BaseException:
            self._not_fetching()
            raise

    def _not_fetching(self) -> None:
        with self.cv:
            self._fetching = False
            self.cv.notify_all()

    def _hand_back_late(self, claims: list[dict]) -> None:
        """Claims answered after the worker began to stop go to the buffer, which
        _shutdown gives back on its own connection: this thread's connection is the one
        _shutdown aborts, so a release sent on it could be cut off half-way."""
        with self.cv:
            self.buffer.extend(claims)
            self.cv.notify_all()

    def _settle_for_burst(self) -> bool:
        """Burst, before a claim: with nothing running or buffered, wait until the
        reporter has handed over every result (a failure with retries left may make its
        task ready again). True when a claim that comes back empty now means the queues
        have nothing ready for this worker (the cache is re-sent before it)."""
        with self.cv:
            if self.running or self.buffer:
                return False
        return self.reporter.wait_settled(timeout=self.config.worker_poll_interval)

    def _await_progress(self) -> None:
        """Burst, after an empty claim with work still in hand: wait until a pool call
        ends (its task may fail with retries left, or more work may have come), or at
        most a poll interval (a slot may be free meanwhile)."""
        with self.cv:
            seen = self._finished
            self.cv.wait_for(
                lambda: (
                    self.stopping.is_set()
                    or self._finished != seen
                    or not (self.running or self.buffer)
                ),
                timeout=self.config.worker_poll_interval,
            )

    def _api_refused(self, exc: ApiError) -> None:
        if exc.status == 409:  # the worker id was taken over by a newer instance
            log.error("worker %s: %s", self.worker_id, exc.message)
            self.stop("taken over by a newer instance", exit_code=1)
        elif exc.status == 429:  # the dispatcher holds all the polls it may: come back later
            delay = (exc.retry_after or 1.0) * random.uniform(1.0, 1.5)
            log.info("dispatcher busy, polling again in %.1f s: %s", delay, exc.message)
            self.stopping.wait(delay)
        else:
            log.error("dispatcher refused the worker's request: %s", exc)
            self.stopping.wait(self.config.worker_poll_interval)

    # -- heartbeats ---------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        self._guarded("heartbeat", self._heartbeats)

    def _heartbeats(self) -> None:
        client = self._client()
        while True:
            with self.cv:
                task_ids = [*self.running, *(c["task_id"] for c in self.buffer)]
                held_at = time.monotonic()
            progress = self.progress.take(task_ids, held_at)  # None: no report waits
            delivered = False
            try:
                reply = client.heartbeat(
                    self.worker_id,
                    self.instance_id,
                    task_ids,
                    concurrency=self.config.worker_concurrency,
                    progress=progress,
                )
            except DispatcherUnreachable as exc:
                if certificate_failure(exc):  # the claim loop says why, once
                    log.debug("heartbeat failed worker=%s: certificate not trusted", self.worker_id)
                else:
                    log.warning("heartbeat failed worker=%s: %s", self.worker_id, exc)
                self.progress.not_sent(progress)  # with the next heartbeat, not sooner
            except ApiError as exc:
                self._api_refused(exc)
            else:
                delivered = True
                for task_id in reply.get("abandon", ()):
                    self._abandon(task_id)
            if self._until_next_heartbeat(time.monotonic(), sooner=delivered):
                break
        client.close()

    def _until_next_heartbeat(self, last: float, sooner: bool) -> bool:
        """Wait until the next heartbeat is due: WORKER_HEARTBEAT_INTERVAL after the last
        one (answered at `last`), or, with `sooner` and a progress report waiting,
        PROGRESS_SOONER_S after it. True when the worker has stopped (no more heartbeats)."""
        interval = self.config.worker_heartbeat_interval
        while not self.stopped.is_set():
            soon = sooner and self.progress.waiting
            left = last + (min(PROGRESS_SOONER_S, interval) if soon else interval)
            left -= time.monotonic()
            if left <= 0:
                return False
            self._beat_now.wait(left)  # a new report, or the stop
            self._beat_now.clear()
        return True

    def _abandon(self, task_id: str) -> None:
        """Stop working on a task the dispatcher no longer holds for us."""
        with self.cv:
            for claim in list(self.buffer):
                if claim["task_id"] == task_id:
                    self.buffer.remove(claim)
            entry = self.running.get(task_id)
            if entry is not None:
                self.abandoned.add(task_id)
                entry.future.cancel()  # pebble kills the task's process
            self.cv.notify_all()
        log.warning(
            "task %s abandoned worker=%s: cancelled or leased elsewhere", task_id, self.worker_id
        )

    # -- stopping -----------------------------------------------------------------

    def _shutdown(self, client: Client) -> None:
        # the dispatcher gives it nothing more, and its held claim ends now, not at
        # the end of its wait
        self._say(client, "stopping")
        self._fetch_client.abort()
        self.reporter.end_hold()
        with self.cv:
            unstarted = list(self.buffer)
            self.buffer.clear()
        self._release(client, unstarted)
        grace = self.config.worker_shutdown_grace
        with self.cv:
            if self.running:
                log.info(
                    "waiting up to %g s for %d running task(s) worker=%s",
                    grace,
                    len(self.running),
                    self.worker_id,
                )
            self.cv.wait_for(lambda: not self.running, timeout=grace)
            unfinished = [entry.claim for entry in self.running.values()]
            for entry in list(self.running.values()):  # cancel() runs _done, which pops
                self.abandoned.add(entry.claim["task_id"])
                entry.future.cancel()
        with self.cv:
            unfinished += list(self.buffer)  # tasks of chunks that ended early, never rerun
            self.buffer.clear()
        self._release(client, unfinished)
        self._fetcher.join(timeout=self.config.worker_poll_interval + 10)
        with self.cv:
            late = list(self.buffer)  # answered after the first give-back (_hand_back_late)
            self.buffer.clear()
        self._release(client, late)
        self.reporter.close(timeout=30)
        with self.cv:
            late = list(self.buffer)  # claimed with results meanwhile (claimed_with_results)
            self.buffer.clear()
        self._release(client, late)
        if self.burst:
            self._burst_outcome(client)
        self.stopped.set()
        self._beat_now.set()  # the heartbeat thread ends now
        self._say(client, "stopped")  # shown as stopped, not dead
        self.pool.stop()
        log.info("worker %s stopped", self.worker_id)

    def _burst_outcome(self, client: Client) -> None:
        """Burst, at the end: one last re-send of the cache, then exit status 1 when a
        result is still cached or a task taken did not end with its result taken."""
        if self.reporter.has_cached:
            self.reporter.flush_cache(client)
        cached = len(self.reporter.cache)
        with self.cv:
            owed = sorted(self.owed)
        if cached:
            log.error(
                "burst worker=%s: %d result(s) not delivered, kept in %s for its next start",
                self.worker_id,
                cached,
                self.reporter.cache.directory,
            )
        if owed:
            log.error(
                "burst worker=%s: %d task(s) taken did not end here with their result "
                "taken (cancelled, leased elsewhere, given back or refused): %s",
                self.worker_id,
                len(owed),
                ", ".join(owed[:20]) + (" ..." if len(owed) > 20 else ""),
            )
        if cached or owed:
            self.exit_code = 1
        log.info(
            "burst worker=%s ended: %d task(s) taken, exit status %d",
            self.worker_id,
            self.taken,
            self.exit_code,
        )

    def _say(self, client: Client, state: str) -> None:
        """Tell the dispatcher this worker is stopping or has stopped (best effort: a
        dispatcher that is away declares it dead instead)."""
        with self.cv:
            task_ids = [*self.running, *(c["task_id"] for c in self.buffer)]
        try:
            client.heartbeat(self.worker_id, self.instance_id, task_ids, state=state)
        except (DispatcherUnreachable, ApiError) as exc:
            log.warning(
                "could not tell the dispatcher %s worker=%s: %s", state, self.worker_id, exc
            )

    def _release(self, client: Client, claims: list[dict]) -> None:
        items = list(dict.fromkeys((c["task_id"], c["lease_token"]) for c in claims))
        if not items:
            return
        try:
            for i in range(0, len(items), self.config.max_batch):
                client.release(self.worker_id, items[i : i + self.config.max_batch])
            log.info("gave back %d task(s) worker=%s", len(items), self.worker_id)
        except (DispatcherUnreachable, ApiError) as exc:
            log.warning(
                "could not give back %d task(s) worker=%s (their leases will expire): %s",
                len(items),
                self.worker_id,
                exc,
            )
