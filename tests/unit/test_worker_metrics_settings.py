"""WORKER_METRICS_PORT and what feeds the worker's metrics without serving them."""

from __future__ import annotations

import pytest

from common.breaker import CircuitBreaker
from common.config import Config, ConfigError


def test_worker_metrics_are_off_by_default():
    assert Config.from_env({}).worker_metrics_port == 0
    assert Config.from_env({"WORKER_METRICS_PORT": "9101"}).worker_metrics_port == 9101


@pytest.mark.parametrize("bad", ["-1", "65536", "x", "1.5"])
def test_a_bad_worker_metrics_port_names_the_key(bad):
    with pytest.raises(ConfigError, match="WORKER_METRICS_PORT"):
        Config.from_env({"WORKER_METRICS_PORT": bad})


def test_the_breaker_reports_each_failed_call():
    failed = []
    breaker = CircuitBreaker(2, 10.0, on_failure=lambda: failed.append(1), rand=lambda: 0.5)
    breaker.failure("refused")
    breaker.failure("refused")  # opens
    breaker.failure("late")  # a call let out before it opened
    assert breaker.state == "open"
    assert len(failed) == 3
