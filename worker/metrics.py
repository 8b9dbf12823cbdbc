"""The worker's own Prometheus metrics, served on WORKER_METRICS_PORT (0: off).

Off, nothing is imported (prometheus_client costs ~0.1 s of a worker's start-up) and
each metric is a stand-in that does nothing. On, serve() makes the real ones and starts
the endpoint. One worker process, one registry: the pool processes record nothing (a
result is counted when it comes back to the worker).
"""

from __future__ import annotations

import os
from collections.abc import Callable

CIRCUIT_STATES = ("closed", "open", "half-open")


class _Off:
    """A metric while WORKER_METRICS_PORT is 0."""

    def labels(self, *_values: str) -> _Off:
        return self

    def inc(self, _amount: float = 1) -> None:
        pass

    def observe(self, _value: float) -> None:
        pass


TASKS_RUN = TASK_SECONDS = RESULTS_CACHED = DISPATCHER_ERRORS = _Off()


def serve(port: int, host: str, breaker_state: Callable[[], str]) -> None:
    """Make the metrics and start their endpoint (a daemon thread); once per process."""
    global TASKS_RUN, TASK_SECONDS, RESULTS_CACHED, DISPATCHER_ERRORS
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the dispatcher's, never a worker's
    from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
    from prometheus_client.core import GaugeMetricFamily

    TASKS_RUN = Counter(
        "taskqueue_worker_tasks", "Tasks this worker ran, by type and outcome", ["type", "outcome"]
    )
    TASK_SECONDS = Histogram(
        "taskqueue_worker_task_duration_seconds",
        "Run time of a task (the tasks of one pool call share its time evenly)",
        ["type"],
        buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, float("inf")),
    )
    RESULTS_CACHED = Counter(
        "taskqueue_worker_results_cached", "Results written to the on-disk cache"
    )
    DISPATCHER_ERRORS = Counter(
        "taskqueue_worker_dispatcher_errors", "Calls to the dispatcher with no answer or a 5xx"
    )

    class Circuit:
        def collect(self):
            family = GaugeMetricFamily(
                "taskqueue_worker_circuit_state",
                "The circuit breaker towards the dispatcher: 1 for its current state",
                labels=["state"],
            )
            now = breaker_state()
            for s in CIRCUIT_STATES:
                family.add_metric([s], 1.0 if s == now else 0.0)
            yield family

    REGISTRY.register(Circuit())
    start_http_server(port, addr=host)
