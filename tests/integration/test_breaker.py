"""The worker's circuit breaker with real processes: facing a dead dispatcher, a worker
makes a bounded number of connection attempts, keeps running its task (its result goes
to the on-disk cache), and recovers on its own when the dispatcher comes back."""

from __future__ import annotations

import socket
import threading
import time

from harness import cache_entries, free_port, wait_for, wait_started

FAILURES = 3  # WORKER_BREAKER_FAILURES
MAX_BACKOFF = 2.0  # WORKER_BREAKER_MAX_BACKOFF
FIRST_BACKOFF = 1.0  # common/breaker.py's FIRST_BACKOFF_S
WINDOW = 7.0  # seconds of outage counted (the 20 s, scaled to the back-off)
THREADS = 3  # fetcher, heartbeat, reporter: calls in flight when the breaker opens


class HangUp:
    """A dead dispatcher whose every connection attempt is seen: a listening socket that
    accepts and closes each connection at once, without an HTTP answer, counting them."""

    def __init__(self, port: int):
        self.sock = wait_for(
            lambda: _listen(port),
            30,
            lambda: f"port {port} still taken (a killed dispatcher's processes?)",
        )
        self.times: list[float] = []  # time.monotonic() of each accept
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            with self._lock:
                self.times.append(time.monotonic())
            conn.close()

    def within(self, start: float, seconds: float) -> int:
        with self._lock:
            return sum(1 for t in self.times if start <= t < start + seconds)

    def close(self) -> None:
        self.sock.close()
        self.thread.join(timeout=5)


def _listen(port: int) -> socket.socket | None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        return None
    sock.listen(64)
    return sock


def attempts_bound(window: float) -> int:
    """Most connection attempts a worker with the breaker may make in `window` seconds:
    the failures that open it, a call in flight in each other thread, and one probe per
    open period (each at least half its delay: FIRST_BACKOFF / 2, then MAX_BACKOFF / 2)."""
    probes = 2 + int(window / (MAX_BACKOFF / 2))
    return FAILURES + THREADS + probes


def count_window(server: HangUp, worker, describe) -> tuple[float, int]:
    """From `worker`'s first attempt at `server`, WINDOW seconds of attempts."""
    wait_for(lambda: server.times, 60, lambda: f"no attempt at all:\n{describe()}")
    start = server.times[0]

    def window_over():
        assert worker.alive(), f"worker {worker.name} exited:\n{worker.log()}"
        return time.monotonic() >= start + WINDOW

    wait_for(window_over, WINDOW + 30, describe)  # measuring the outage, not syncing
    return start, server.within(start, WINDOW)


def test_a_worker_facing_a_dead_dispatcher_makes_bounded_attempts_and_recovers(make_cluster):
    settings = {
        "WORKER_BREAKER_FAILURES": str(FAILURES),
        "WORKER_BREAKER_MAX_BACKOFF": str(MAX_BACKOFF),
        "WORKER_DEAD_AFTER": "60",  # the worker stays registered over the outage
        "LEASE_SECONDS": "60",  # and its task's lease holds
    }
    cluster = make_cluster(**settings)
    dispatcher = cluster.start_dispatcher()
    worker = cluster.start_worker("worker-1")
    cluster.wait_worker_alive(worker)
    task_id = cluster.submit("sleep", {"duration": 2})
    wait_started(worker, task_id)

    # The same worker without a breaker (a threshold it never reaches), against a dead
    # dispatcher of its own, over the same minutes: what the breaker saves.
    control_port = free_port()
    control_server = HangUp(control_port)
    control = cluster.start_worker(
        "worker-control",
        WORKER_BREAKER_FAILURES="1000000",
        DISPATCHER_URL=f"http://127.0.0.1:{control_port}",
    )

    dispatcher.kill9()  # mid-task
    server = HangUp(cluster.port)
    try:
        _, attempts = count_window(server, worker, cluster.logs)
        _, control_attempts = count_window(control_server, control, cluster.logs)
    finally:
        server.close()
        control_server.close()
    control.close()

    bound = attempts_bound(WINDOW)
    print(
        f"connection attempts in {WINDOW:g} s: {attempts} with the breaker, "
        f"{control_attempts} without (bound {bound})"
    )
    assert attempts <= bound, (
        f"{attempts} connection attempts in {WINDOW:g} s (bound {bound}):\n{worker.log(80)}"
    )
    assert control_attempts > bound, (
        f"without the breaker only {control_attempts} attempts in {WINDOW:g} s "
        f"(bound {bound}): the test shows nothing\n{control.log(80)}"
    )
    log = worker.log(400)
    assert "circuit breaker open" in log, log
    assert "circuit breaker half-open" in log, log

    # the task went on during the outage: its result is in the on-disk cache
    cache_dir = cluster.tmp / "cache" / "worker-1"
    cached = wait_for(
        lambda: cache_entries(cache_dir),
        30,
        lambda: f"no cached result in {cache_dir}:\n{worker.log(80)}",
    )
    assert task_id in cached[0].name

    # the dispatcher comes back on the same port: the worker finds it by itself
    cluster.start_dispatcher("dispatcher-2")  # same database file
    done = cluster.wait_status(task_id, "completed", timeout=60)
    assert done["result"] == {"slept": 2}
    assert done["attempts"] == 1
    wait_for(
        lambda: "circuit breaker closed" in worker.log(400),
        30,
        lambda: f"breaker never closed:\n{worker.log(80)}",
    )
    after = cluster.submit("compute", {"operation": "double", "value": 21})
    assert cluster.wait_status(after, "completed", timeout=60)["result"]["result"] == 42
    assert worker.alive(), worker.log(80)
