"""The client library: submit tasks from Python and wait for their results.

    from taskqueue import Client

    client = Client()  # DISPATCHER_URL and API_TOKEN from the environment or .env
    handle = client.submit("compute", {"operation": "double", "value": 21})
    handle.result(timeout=30)  # {"operation": "double", "value": 21, "result": 42}

Every request goes through common/client.py (one keep-alive connection per thread; a
comma list of URLs fails over as the worker's does). One Client may be shared by
threads: each thread gets its own connection, and all of them share one `Dispatchers`,
so they move to the next dispatcher together. docs/CLIENT.md is the whole API.
"""

from __future__ import annotations

import functools
import os
import queue
import re
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common import client as http
from common.client import READ_TIMEOUT, ApiError, Dispatchers, DispatcherUnreachable
from common.config import PROJECT_ROOT, Config
from common.statuses import FINISHED
from taskqueue.errors import InvalidRequest, NotFound, refine, shift_index
from taskqueue.handle import TaskHandle, outcome

if TYPE_CHECKING:
    from taskqueue.schedules import Schedules

# The options of a submission (POST /submit-task), besides its type and payload.
OPTIONS = frozenset(
    (
        "queue",
        "priority",
        "delay",
        "max_retries",
        "timeout",
        "idempotency_key",
        "depends_on",
        "expires_in",
    )
)
ITEM_FIELDS = OPTIONS | {"type", "payload"}
WAIT_THREADS = 4  # most threads waiting for tasks at once (each holds one long poll)
SLICE = 1.0  # longest hold of one poll while more tasks wait their turn than threads poll
NO_WAIT_POLL = 0.5  # seconds between polls when the dispatcher allows no wait (MAX_WAIT_SECONDS=0)

BATCH_LIMIT = re.compile(r"^'(?:tasks|task_ids)' holds \d+ items; at most (\d+) per call")
WAIT_LIMIT = re.compile(r"^'wait' must be between 0 and ([\d.]+)")


class _Connection(http.Client):
    """common.client's Client, with refusals raised as the classes of taskqueue.errors."""

    def call(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().call(*args, **kwargs)
        except ApiError as exc:
            raise refine(exc) from None


class Client:
    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        timeout: float = READ_TIMEOUT,
        *,
        config: Config | None = None,
        retry_429_for: float = 0.0,
        on_429: Callable[[ApiError, float], None] | None = None,
        ca_file: str | None = None,
    ) -> None:
        """`url`: the dispatcher's base URL, or several separated by commas (they fail
        over); default DISPATCHER_URL. `token`: API_TOKEN's value; default API_TOKEN.
        Both defaults come from the environment, then `.env` in the current directory,
        then the project's `.env` (a bad value raises common.config.ConfigError).
        `timeout`: seconds to wait for any answer (a long poll waits that much longer).

        `config`: a Config to take the defaults from instead (the CLIs pass theirs); its
        MAX_BATCH and MAX_WAIT_SECONDS size batches and long polls (a dispatcher with
        smaller limits is followed: its 400 says them). `retry_429_for`: for this many
        seconds a 429 (the queue is full, MAX_PENDING_TASKS) is sent again after its
        Retry-After, `on_429(exc, seconds)` told before each wait; then it is raised.
        `ca_file`: a PEM bundle to verify an https dispatcher's certificate against;
        default DISPATCHER_CA_FILE (with `url` and `token` both given: the environment's
        only), else the system's store. Verification is never off."""
        if config is None:
            if url is None or token is None:
                config = settings()
            else:
                config = Config()
                if ca_file is None:
                    ca_file = os.environ.get("DISPATCHER_CA_FILE", "").strip()
        url = config.dispatcher_url if url is None else url
        ca_file = config.dispatcher_ca_file if ca_file is None else ca_file
        try:
            self.dispatchers = Dispatchers(url, ca_file=ca_file)
        except ValueError as exc:
            raise ValueError(f"not a list of http(s) URLs: {url!r}: {exc}") from None
        self.token = config.api_token if token is None else token
        self.timeout = timeout
        self.max_batch = config.max_batch
        self.max_wait = config.max_wait_seconds
        self.wait_many = True  # POST /wait-tasks; False once a dispatcher says it has none
        self._options = {"retry_429_for": retry_429_for, "on_429": on_429, "read_timeout": timeout}
        self._local = threading.local()
        self._open: set[_Connection] = set()  # every thread's, to close them all
        self._lock = threading.Lock()

    # -- connections ------------------------------------------------------------------

    def _conn(self) -> _Connection:
        """This thread's connection."""
        try:
            return self._local.conn
        except AttributeError:
            pass
        conn = self._new_conn()
        # closed when its thread is gone (a socket left to the garbage collector warns):
        # a thread's locals are dropped as it ends, and the guard's finalizer runs then
        self._local.guard = guard = _Guard()
        weakref.finalize(guard, _close, conn, self._open, self._lock)
        self._local.conn = conn
        return conn

    def _new_conn(self) -> _Connection:
        conn = _Connection(self.dispatchers, self.token, **self._options)
        with self._lock:
            self._open.add(conn)
        return conn

    def close(self) -> None:
        """Close every connection (a later call opens a new one)."""
        with self._lock:
            conns = list(self._open)
        for conn in conns:
            conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        """The dispatcher in use (with several: the one the next request goes to)."""
        return self.dispatchers.targets[self.dispatchers.current].url

    @property
    def urls(self) -> list[str]:
        return self.dispatchers.urls

    # -- submitting -------------------------------------------------------------------

    def submit(self, type_or_task: Any, payload: dict | None = None, **options: Any) -> TaskHandle:
        """Submit one task (POST /submit-task). `type_or_task`: a task type's name, or a
        task object (`.name`, and `.check(payload)`, which validates the payload here and
        returns it with its defaults). `options`: queue, priority, delay, max_retries,
        timeout, idempotency_key, depends_on (TaskHandles or task ids: the task waits
        until they have completed), expires_in (seconds: not started by then, it is never
        run). A 400 raises InvalidRequest (a ValueError)."""
        if options and not OPTIONS.issuperset(options):
            raise _unknown_options("submit", options)
        task_id = self._conn().submit_task(_body(type_or_task, payload, options))
        return TaskHandle(self, task_id)

    def submit_many(
        self, items: Iterable[Any], batch_size: int | None = None, **options: Any
    ) -> list[TaskHandle]:
        """Submit many tasks, in batches of at most `batch_size` (default MAX_BATCH),
        each one POST /submit-tasks, stored all or nothing; the handles in the same order.

        An item is a dict as the HTTP API takes it, `{"type": ..., "payload": {...},
        "priority": 5, ...}` (its `type` may be a task object), or a pair
        `(type_or_task, payload)`. `options` apply to every item that does not set them.
        If a batch is refused or the dispatcher cannot be reached, the exception has
        `.submitted`: the handles of the batches stored before it (a 400 names the item
        by its index in `items`: `tasks[1042]: ...`)."""
        if options and not OPTIONS.issuperset(options):
            raise _unknown_options("submit_many", options)
        bodies = [_item_body(i, item, options) for i, item in enumerate(items)]
        return self._submit_bodies(bodies, batch_size)

    def _submit_bodies(self, bodies: list[dict], batch_size: int | None) -> list[TaskHandle]:
        handles: list[TaskHandle] = []
        size = batch_size or self.max_batch
        if size < 1:
            raise ValueError(f"batch_size must be at least 1, not {size}")
        while len(handles) < len(bodies):
            offset = len(handles)
            batch = [_rebased(body, offset, handles) for body in bodies[offset : offset + size]]
            try:
                handles += self._submit_batch(batch)
            except _Smaller as smaller:
                size = smaller.size
            except (ApiError, DispatcherUnreachable) as exc:
                raise _partial(exc, offset, handles) from None
        return handles

    def _submit_batch(self, bodies: list[dict]) -> list[TaskHandle]:
        """One POST /submit-tasks; _Smaller when the dispatcher wants smaller batches
        (a refused batch stored nothing, so it may be sent again in parts)."""
        try:
            ids = self._conn().submit_tasks(bodies)
        except InvalidRequest as exc:
            match = BATCH_LIMIT.match(exc.message)
            if match and 0 < int(match[1]) < len(bodies):
                self.max_batch = int(match[1])  # the dispatcher's MAX_BATCH
                raise _Smaller(self.max_batch) from None
            raise
        except ApiError as exc:
            if exc.status == 413 and len(bodies) > 1:  # over MAX_REQUEST_BYTES: halve
                raise _Smaller(len(bodies) // 2) from None
            raise
        return [TaskHandle(self, task_id) for task_id in ids]

    # -- workflows (dependencies) -------------------------------------------------------

    def chain(self, *tasks: Any) -> list[TaskHandle]:
        """Submit tasks that run one after the other, in one POST /submit-tasks (stored
        all or nothing): each waits for the one before it and sees its result in
        `TaskContext.dependencies`. A task is an item as submit_many takes it (a dict,
        or a pair (type_or_task, payload)); its own depends_on is kept. Returns the
        handles in order: the last one's result is the chain's."""
        bodies = [_item_body(i, item, {}) for i, item in enumerate(tasks)]
        for i in range(1, len(bodies)):
            _add_dependencies(bodies[i], [f"#{i - 1}"])
        return self._flow(bodies, "chain")

    def group(self, *tasks: Any) -> Group:
        """Tasks that run side by side; `.then(task)` adds one that waits for all of them
        (fan-in), `.submit()` submits them alone. Either is one POST /submit-tasks."""
        return Group(self, [_item_body(i, item, {}) for i, item in enumerate(tasks)])

    def _flow(self, bodies: list[dict], what: str) -> list[TaskHandle]:
        """One batch, never split (its "#N" name tasks of the same batch)."""
        if not bodies:
            raise ValueError(f"a {what} needs at least one task")
        try:
            return self._submit_batch(bodies)
        except _Smaller:
            raise ValueError(
                f"a {what} of {len(bodies)} tasks is more than the dispatcher takes in one "
                f"batch (MAX_BATCH {self.max_batch})"
            ) from None

    # -- reading ----------------------------------------------------------------------

    def handle(self, task_id: str) -> TaskHandle:
        """A handle for a task submitted earlier (by id); nothing is asked yet."""
        return TaskHandle(self, task_id)

    def _task(self, task_id: str) -> dict:
        return self._conn().task(task_id)

    def tasks(
        self, status: str | None = None, type: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[dict]:
        """Stored tasks, oldest first, without history (GET /tasks)."""
        return self._conn().tasks(status, type, limit, offset)

    def stats(self) -> dict:
        """GET /stats: counts by status, queue and type, workers, throughput."""
        return self._conn().stats()

    def workers(self) -> list[dict]:
        """GET /workers: every worker with its status and current tasks."""
        return self._conn().workers()

    def task_types(self) -> list[dict]:
        """GET /task-types: each type's name, JSON schema, defaults and description."""
        return self._conn().task_types()

    @property
    def schedules(self) -> Schedules:
        """Periodic tasks: list, get, create, update, pause, resume, delete
        (taskqueue/schedules.py)."""
        from .schedules import Schedules

        return Schedules(self)

    # -- queues -----------------------------------------------------------------------

    def queues(self) -> list[dict]:
        """GET /queues: every queue with tasks or settings, by name: `paused`,
        `max_in_flight`, `rate_limit` ({count, per_seconds} or None), `counts`."""
        return self._conn().queues()

    def pause_queue(self, name: str) -> dict:
        """Hand out nothing more of the queue (submissions are still accepted, running
        tasks finish). Returns the queue's settings."""
        return self._conn().set_queue(name, {"paused": True})

    def resume_queue(self, name: str) -> dict:
        """Hand out the queue's tasks again; held polls get them at once."""
        return self._conn().set_queue(name, {"paused": False})

    def set_queue(self, name: str, **changes: Any) -> dict:
        """Change a queue's settings: any of paused (bool), max_in_flight (int, or None
        for no limit), rate_limit ((count, per_seconds), {"count", "per_seconds"}, or
        None). What is left out keeps its value. Returns the queue's settings."""
        unknown = changes.keys() - {"paused", "max_in_flight", "rate_limit"}
        if unknown:
            raise TypeError(
                f"set_queue() got an unexpected keyword argument {sorted(unknown)[0]!r} "
                "(the settings are paused, max_in_flight, rate_limit)"
            )
        rate = changes.get("rate_limit")
        if isinstance(rate, tuple):
            if len(rate) != 2:
                raise TypeError("rate_limit is (count, per_seconds)")
            changes["rate_limit"] = {"count": rate[0], "per_seconds": rate[1]}
        return self._conn().set_queue(name, changes)

    # -- waiting ----------------------------------------------------------------------

    def _wait(self, task_id: str, timeout: float | None, conn: http.Client | None = None) -> dict:
        """The task's record once it is finished; TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            record = self._poll(conn or self._conn(), task_id, deadline, self.max_wait)
            if record["status"] in FINISHED:
                return record
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"task {task_id} is still {record['status']} after {timeout:g} s"
                )

    def _poll(
        self, conn: http.Client, task_id: str, deadline: float | None, longest: float
    ) -> dict:
        """One GET /task/<id>?wait=: held until the task finishes, `longest` seconds pass
        or the deadline comes."""
        return self._held(
            lambda wait: conn.task(task_id, wait=wait),
            lambda record: record["status"] in FINISHED,
            deadline,
            longest,
        )

    def _held(
        self,
        request: Callable[[float], Any],
        done: Callable[[Any], bool],
        deadline: float | None,
        longest: float,
    ) -> Any:
        """`request(wait)`, a held request, with the wait the deadline, `longest` and the
        dispatcher allow. Follows a dispatcher whose MAX_WAIT_SECONDS is smaller than
        ours (its 400 says it); a 429 (it holds all the polls it may) waits its
        Retry-After; with no wait allowed at all, an answer not `done` is asked again
        after NO_WAIT_POLL seconds."""
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            wait = (
                min(longest, self.max_wait) if left is None else min(longest, self.max_wait, left)
            )
            try:
                answer = request(wait)
            except InvalidRequest as exc:
                match = WAIT_LIMIT.match(exc.message)
                if match is None or float(match[1]) >= wait:
                    raise
                self.max_wait = min(self.max_wait, float(match[1]))
                continue
            except ApiError as exc:
                if exc.status != 429 or (left is not None and left <= 0):
                    raise
                time.sleep(min(exc.retry_after or 1.0, 1.0 if left is None else left))
                continue
            if wait <= 0 and not done(answer) and (left is None or left > 0):
                time.sleep(min(NO_WAIT_POLL, NO_WAIT_POLL if left is None else left))
            return answer

    def as_completed(
        self, handles: Iterable[TaskHandle], timeout: float | None = None
    ) -> Iterator[TaskHandle]:
        """Yield each handle as its task finishes (its `record` then holds the finished
        task, so `.result()` asks nothing more); TimeoutError if some are not finished
        within `timeout` seconds (None: no limit). See _Pollers for how it waits."""
        handles = list(handles)
        return self._as_completed(handles, timeout)

    def _as_completed(
        self, handles: list[TaskHandle], timeout: float | None
    ) -> Iterator[TaskHandle]:
        line = [h for h in handles if h.record is None or h.record["status"] not in FINISHED]
        waiting = set(map(id, line))
        for h in handles:  # finished already: no request
            if id(h) not in waiting:
                yield h
        if not line:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        pollers = _Pollers(self, deadline)
        try:
            pollers.add(line)
            for finished in range(len(line)):
                try:
                    yield pollers.next_done()
                except TimeoutError:
                    raise TimeoutError(
                        f"{len(line) - finished} of {len(handles)} tasks not finished "
                        f"after {timeout:g} s"
                    ) from None
        finally:
            pollers.stop()

    def wait_all(self, handles: Iterable[TaskHandle], timeout: float | None = None) -> list[dict]:
        """Wait until every task is finished; their records, in the order of `handles`
        (a failed task is not an exception here: look at `status`, or call `.result()`,
        which answers at once). TimeoutError if some are not finished within `timeout`."""
        handles = list(handles)
        for _ in self.as_completed(handles, timeout):
            pass
        return [h.record for h in handles]  # type: ignore[misc]

    def map(
        self,
        type_or_task: Any,
        payloads: Iterable[dict],
        max_in_flight: int = 100,
        batch_size: int | None = None,
        **options: Any,
    ) -> Iterator[Any]:
        """Run `type_or_task` on each payload; yield the results in the order of
        `payloads`. At most `max_in_flight` tasks are outstanding (submitted and not yet
        yielded), and `payloads` is read only as far as that allows, so an iterable of a
        million payloads takes the memory of `max_in_flight`. Tasks are submitted in
        batches (at most `batch_size`, default MAX_BATCH). A failed task raises TaskFailed
        when its turn comes (a cancelled one TaskCancelled); the tasks after it keep
        running. `options` apply to every task (queue, priority, ...)."""
        if options and not OPTIONS.issuperset(options):
            raise _unknown_options("map", options)
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
        return self._map(type_or_task, iter(payloads), max_in_flight, batch_size, options)

    def _map(
        self,
        type_or_task: Any,
        payloads: Iterator[dict],
        max_in_flight: int,
        batch_size: int | None,
        options: dict,
    ) -> Iterator[Any]:
        window: deque[TaskHandle] = deque()  # submitted, not yet yielded: in input order
        refill = max(1, max_in_flight // 2)  # submit when this much room is free
        more = True
        pollers = _Pollers(self)
        try:
            while True:
                room = max_in_flight - len(window)
                if more and (room >= refill or not window):
                    want = min(room, batch_size or self.max_batch)
                    bodies = [_body(type_or_task, p, options) for p in islice(payloads, want)]
                    more = len(bodies) == want
                    if bodies:
                        handles = self._submit_bodies(bodies, batch_size)
                        window += handles
                        pollers.add(handles)
                    continue
                if not window:
                    return
                head = window[0]
                while head.record is None:  # the pollers set it once the task is finished
                    pollers.next_done()
                window.popleft()
                yield outcome(head.record)
        finally:
            pollers.stop()


# -- helpers -------------------------------------------------------------------------


class _Pollers:
    """Threads that wait for tasks to finish and hand each handle over (next_done()) with
    its finished record, in the order the tasks finish.

    Each thread has its own connection and takes handles from the front of the line:
    up to MAX_BATCH of them for one POST /wait-tasks, held by the dispatcher until one
    of them finishes; the finished ones are handed over, the others go back to the
    front. A thread per MAX_BATCH handles waiting, at most WAIT_THREADS. A dispatcher
    without /wait-tasks (404) is asked for each task alone instead, GET /task/<id>?wait=
    with up to WAIT_THREADS threads: while more handles wait their turn than threads
    poll, a poll is held at most SLICE seconds and its task goes to the back of the line,
    so one slow task holds up no other for long. stop() ends the threads (their held
    requests aborted)."""

    def __init__(self, client: Client, deadline: float | None = None) -> None:
        self.client = client
        self.deadline = deadline
        self.line: deque[TaskHandle] = deque()
        self.cv = threading.Condition()
        self.done: queue.SimpleQueue[TaskHandle | BaseException] = queue.SimpleQueue()
        self.stopping = False
        self.conns: list[_Connection] = []
        self.polling = 0  # handles added and not handed over yet

    def add(self, handles: list[TaskHandle]) -> None:
        with self.cv:
            self.line.extend(handles)
            self.polling += len(handles)
            self.cv.notify(len(handles))
        self._grow()

    def _grow(self) -> None:
        """Start the threads the handles waiting call for."""
        client = self.client
        with self.cv:
            per_thread = client.max_batch if client.wait_many else 1
            wanted = min(WAIT_THREADS, -(-self.polling // per_thread))
            more = 0 if self.stopping else wanted - len(self.conns)
            conns = [client._new_conn() for _ in range(more)]
            self.conns += conns
        for conn in conns:
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def next_done(self) -> TaskHandle:
        """The next handle whose task finished; TimeoutError at the deadline; what a
        thread's request raised."""
        left = None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
        try:
            item = self.done.get(timeout=left)
        except queue.Empty:
            raise TimeoutError from None
        if isinstance(item, BaseException):
            raise item
        return item

    def stop(self) -> None:
        with self.cv:
            self.stopping = True
            self.cv.notify_all()
            conns = list(self.conns)
        for conn in conns:  # end held requests now rather than when they time out
            conn.abort()

    def _take(self, n: int) -> list[TaskHandle]:
        """Up to `n` handles from the front of the line, once there are any; [] when
        stopping."""
        with self.cv:
            while not self.line and not self.stopping:
                self.cv.wait()
            if self.stopping:
                return []
            return [self.line.popleft() for _ in range(min(n, len(self.line)))]

    def _hand_over(self, h: TaskHandle, record: dict) -> None:
        h.record = record
        with self.cv:
            self.polling -= 1
        self.done.put(h)

    def _run(self, conn: _Connection) -> None:
        client = self.client
        try:
            if client.wait_many:
                self._wait_many(conn)
            if not client.wait_many:
                self._wait_each(conn)
        except BaseException as exc:  # handed to the caller's thread, which raises it
            if not self.stopping:
                self.done.put(exc)
        finally:
            _close(conn, client._open, client._lock)

    def _wait_many(self, conn: _Connection) -> None:
        """POST /wait-tasks for up to MAX_BATCH handles at a time; returns when stopping,
        at the deadline, or when the dispatcher has no /wait-tasks."""
        client = self.client
        while batch := self._take(client.max_batch):
            ids = [h.id for h in batch]
            try:
                tasks, missing = client._held(
                    lambda wait, ids=ids: conn.wait_tasks(ids, wait),
                    lambda answer: bool(answer[0] or answer[1]),
                    self.deadline,
                    client.max_wait,
                )
            except (NotFound, InvalidRequest) as exc:
                with self.cv:
                    self.line.extendleft(reversed(batch))
                match = BATCH_LIMIT.match(exc.message) if isinstance(exc, InvalidRequest) else None
                if match and 0 < int(match[1]) < len(batch):
                    client.max_batch = int(match[1])  # the dispatcher's MAX_BATCH
                    continue
                if isinstance(exc, InvalidRequest):
                    raise
                client.wait_many = False  # an older dispatcher: each task alone
                self._grow()
                return
            if missing:
                raise NotFound(404, f"task {missing[0]} not found")
            finished = {t["task_id"]: t for t in tasks}
            rest = []
            for h in batch:
                record = finished.get(h.id)
                if record is None:
                    rest.append(h)
                else:
                    self._hand_over(h, record)
            with self.cv:
                self.line.extendleft(reversed(rest))
                if rest:
                    self.cv.notify()  # another thread may take what this one held
            if not finished and self.deadline is not None and time.monotonic() >= self.deadline:
                return

    def _wait_each(self, conn: _Connection) -> None:
        """GET /task/<id>?wait= for one handle at a time."""
        client = self.client
        while batch := self._take(1):
            [h] = batch
            with self.cv:
                crowded = len(self.line) >= len(self.conns)
            record = client._poll(conn, h.id, self.deadline, SLICE if crowded else client.max_wait)
            if record["status"] in FINISHED:
                self._hand_over(h, record)
            elif self.deadline is not None and time.monotonic() >= self.deadline:
                return
            else:
                with self.cv:
                    self.line.append(h)
                    self.cv.notify()


class _Guard:
    """Kept in a thread's locals; its finalizer closes the thread's connection."""


class _Smaller(Exception):
    """The dispatcher wants batches of at most `size`."""

    def __init__(self, size: int) -> None:
        self.size = size


@functools.cache
def default_client() -> Client:
    """The Client of `@task` objects' .submit, .delay and .map: made on first use from
    DISPATCHER_URL and API_TOKEN (environment, then .env), shared by the process's
    threads. Use a Client of your own for another dispatcher."""
    return Client()


class Group:
    """Tasks of Client.group, not submitted yet."""

    def __init__(self, client: Client, bodies: list[dict]) -> None:
        self.client = client
        self.bodies = bodies

    def then(self, task: Any, payload: dict | None = None, **options: Any) -> list[TaskHandle]:
        """Submit the group and `task` (a type or task object with its payload and
        options, as submit takes them, or an item as submit_many takes them), which
        waits for every task of the group and sees all their results in
        `TaskContext.dependencies`. One POST /submit-tasks. Returns the handles of the
        group's tasks in order, then the last one's: `handles[-1]` is the fan-in task."""
        if isinstance(task, (dict, tuple)) and payload is None and not options:
            body = _item_body(len(self.bodies), task, {})
        else:
            body = _body(task, payload, _ids_of(options))
        _add_dependencies(body, [f"#{i}" for i in range(len(self.bodies))])
        return self.client._flow([*self.bodies, body], "group")

    def submit(self) -> list[TaskHandle]:
        """Submit the group's tasks alone (one batch); their handles in order."""
        return self.client._flow(list(self.bodies), "group")


def _add_dependencies(body: dict, refs: list[str]) -> None:
    body["depends_on"] = [*body.get("depends_on", ()), *refs]


def _ids_of(options: dict) -> dict:
    """`options` with depends_on's TaskHandles as their ids."""
    refs = options.get("depends_on")
    if refs is None:
        return options
    if isinstance(refs, (str, TaskHandle)):
        refs = [refs]
    return {**options, "depends_on": [r.id if isinstance(r, TaskHandle) else r for r in refs]}


def _body(type_or_task: Any, payload: dict | None, options: dict) -> dict:
    """One submission body: {"type", "payload", **options}."""
    options = _ids_of(options) if "depends_on" in options else options
    if isinstance(type_or_task, str):
        body = {"type": type_or_task, "payload": {} if payload is None else payload}
    else:
        name = getattr(type_or_task, "name", None)
        check = getattr(type_or_task, "check", None)
        if not isinstance(name, str) or not callable(check):
            raise TypeError(
                "a task is named by its type (a str) or given as a task object "
                f"(with .name and .check), not {type_or_task!r}"
            )
        body = {"type": name, "payload": check({} if payload is None else payload)}
    if options:
        body.update(options)
    return body


def _rebased(body: dict, offset: int, stored: list[TaskHandle]) -> dict:
    """An item of submit_many as its batch sends it: a `"#N"` in depends_on counts from
    the start of the whole list, a batch's from its own first task, so a reference to a
    task of an earlier batch becomes that task's id, and a later one `#(N - offset)`."""
    refs = body.get("depends_on")
    if not offset or not isinstance(refs, list):
        return body
    moved = []
    for ref in refs:
        if isinstance(ref, str) and ref.startswith("#") and ref[1:].isdigit():
            n = int(ref[1:])
            ref = stored[n].id if n < offset else f"#{n - offset}"
        moved.append(ref)
    return {**body, "depends_on": moved}


def _item_body(index: int, item: Any, options: dict) -> dict:
    """One item of submit_many: a dict as the HTTP API takes it, or (type, payload)."""
    if isinstance(item, dict):
        unknown = item.keys() - ITEM_FIELDS
        if unknown:
            raise TypeError(
                f"submit_many item {index}: unknown field {sorted(unknown)[0]!r} "
                f"(a task has type, payload and the options {', '.join(sorted(OPTIONS))})"
            )
        if "type" not in item:
            raise TypeError(f"submit_many item {index}: no 'type'")
        fields = {k: v for k, v in item.items() if k in OPTIONS}
        return _body(item["type"], item.get("payload"), {**options, **fields})
    if isinstance(item, tuple) and len(item) == 2:
        return _body(item[0], item[1], options)
    raise TypeError(
        f"submit_many item {index}: a task is a dict ({{'type': ..., 'payload': ...}}) "
        f"or a pair (type, payload), not {item!r}"
    )


def _unknown_options(where: str, options: dict) -> TypeError:
    name = sorted(options.keys() - OPTIONS)[0]
    return TypeError(
        f"{where}() got an unexpected keyword argument {name!r} "
        f"(the options are {', '.join(sorted(OPTIONS))})"
    )


def _partial(
    exc: ApiError | DispatcherUnreachable, offset: int, handles: list[TaskHandle]
) -> Exception:
    """The error of a batch of submit_many, naming items in the whole list, with the
    handles of the batches stored before it as `.submitted`."""
    if isinstance(exc, ApiError) and offset:
        exc = refine(exc, shift_index(exc.message, offset))
    exc.submitted = handles  # type: ignore[union-attr]
    return exc


def _close(conn: _Connection, open_conns: set, lock: threading.Lock) -> None:
    conn.close()
    with lock:
        open_conns.discard(conn)


def settings(env: dict[str, str] | None = None) -> Config:
    """The configuration a Client takes its defaults from: the environment, then `.env` in
    the current directory, then the project's `.env` (python-dotenv's rule: a variable
    already set wins). Read without changing os.environ."""
    if env is None:
        from dotenv import dotenv_values

        env = {}
        for path in (PROJECT_ROOT / ".env", Path.cwd() / ".env"):
            if path.is_file():
                env.update((k, v) for k, v in dotenv_values(path).items() if v is not None)
        env.update(os.environ)
    return Config.from_env(env)
