"""The worker's circuit breaker (common/breaker.py): its state machine under an injected
clock and jitter (no sleeps), and a Client that fails fast while it is open."""

from __future__ import annotations

import logging
import socket
import threading

import pytest

from common.breaker import CLOSED, HALF_OPEN, OPEN, BreakerOpen, CircuitBreaker
from common.client import ApiError, Client, DispatcherUnreachable
from common.config import Config, ConfigError
from common.procs import poll


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, failures: int = 3, max_backoff: float = 8.0, rand=lambda: 1.0):
    """rand 1.0: every wait is its whole delay (the top of the jitter range)."""
    return CircuitBreaker(failures, max_backoff, first=1.0, clock=clock, rand=rand)


def fail(b: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        b.allow()
        b.failure("refused")


def test_it_opens_after_the_configured_failures_in_a_row():
    clock = Clock()
    b = breaker(clock)
    fail(b, 2)
    assert b.state == CLOSED
    fail(b)
    assert b.state == OPEN
    with pytest.raises(BreakerOpen) as raised:
        b.allow()
    assert raised.value.retry_in == pytest.approx(1.0)
    assert b.retry_in() == pytest.approx(1.0)


def test_a_success_resets_the_count_of_failures():
    b = breaker(Clock())
    fail(b, 2)
    b.allow()
    b.success()
    fail(b, 2)
    assert b.state == CLOSED
    assert b.failures == 2


def test_after_its_backoff_one_probe_goes_out_and_others_wait():
    clock = Clock()
    b = breaker(clock)
    fail(b, 3)
    clock.now += 0.99
    with pytest.raises(BreakerOpen):
        b.allow()
    clock.now += 0.02
    b.allow()  # the probe
    assert b.state == HALF_OPEN
    with pytest.raises(BreakerOpen) as raised:  # another thread meanwhile
        b.allow()
    assert raised.value.retry_in == 0.0


def test_a_probe_that_succeeds_closes_it():
    clock = Clock()
    b = breaker(clock)
    fail(b, 3)
    clock.now += 1.0
    b.allow()
    b.success()
    assert b.state == CLOSED
    b.allow()  # calls go out again
    fail(b, 2)
    assert b.state == CLOSED  # the count started again from zero


def test_a_probe_that_fails_reopens_it_with_the_backoff_doubled_up_to_the_cap():
    clock = Clock()
    b = breaker(clock, max_backoff=8.0)
    fail(b, 3)
    waits = []
    for _ in range(6):
        waits.append(b.retry_in())
        clock.now += b.retry_in()
        b.allow()
        assert b.state == HALF_OPEN
        b.failure("refused")  # one failed probe re-opens it
        assert b.state == OPEN
    assert waits == pytest.approx([1.0, 2.0, 4.0, 8.0, 8.0, 8.0])


def test_after_closing_the_backoff_starts_again_from_the_first():
    clock = Clock()
    b = breaker(clock)
    fail(b, 3)
    clock.now += 1.0
    fail(b)  # probe failed: 2 s
    assert b.retry_in() == pytest.approx(2.0)
    clock.now += 2.0
    b.allow()
    b.success()
    fail(b, 3)
    assert b.retry_in() == pytest.approx(1.0)


def test_jitter_keeps_each_wait_within_half_and_all_of_its_delay():
    clock = Clock()
    b = breaker(clock, rand=lambda: 0.0)
    fail(b, 3)
    assert b.retry_in() == pytest.approx(0.5)
    b = breaker(clock, rand=lambda: 0.5)
    fail(b, 3)
    assert b.retry_in() == pytest.approx(0.75)


def test_the_first_backoff_is_never_above_the_cap():
    clock = Clock()
    b = CircuitBreaker(1, max_backoff=0.2, first=1.0, clock=clock, rand=lambda: 1.0)
    fail(b)
    assert b.retry_in() == pytest.approx(0.2)


def test_a_probe_without_an_outcome_lets_the_next_call_probe():
    clock = Clock()
    b = breaker(clock)
    fail(b, 3)
    clock.now += 1.0
    b.allow()
    b.release()  # the probe was aborted
    b.allow()  # the next call probes
    assert b.state == HALF_OPEN


def test_a_late_failure_while_open_changes_nothing():
    clock = Clock()
    b = breaker(clock)
    fail(b, 3)
    until = b.retry_in()
    b.failure("a call let out before it opened")
    assert b.state == OPEN
    assert b.retry_in() == until


def test_each_change_of_state_is_one_log_line(caplog):
    clock = Clock()
    b = breaker(clock)
    with caplog.at_level(logging.INFO, logger="client"):
        fail(b, 3)  # closed -> open
        clock.now += 1.0
        b.allow()  # open -> half-open
        b.failure("refused")  # half-open -> open
        clock.now += 2.0
        b.allow()  # open -> half-open
        b.success()  # half-open -> closed
        b.allow()
        b.success()  # closed stays closed: no line
    lines = [r.getMessage() for r in caplog.records if "circuit breaker" in r.getMessage()]
    assert [line.split(":")[0] for line in lines] == [
        "circuit breaker open",
        "circuit breaker half-open",
        "circuit breaker open",
        "circuit breaker half-open",
        "circuit breaker closed",
    ], lines


def test_the_threshold_must_be_at_least_one():
    with pytest.raises(ValueError):
        CircuitBreaker(0)


# -- configuration ----------------------------------------------------------------------


def test_its_settings_are_read_and_checked():
    config = Config.from_env({"WORKER_BREAKER_FAILURES": "3", "WORKER_BREAKER_MAX_BACKOFF": "2.5"})
    assert (config.worker_breaker_failures, config.worker_breaker_max_backoff) == (3, 2.5)
    assert Config().worker_breaker_failures == 5
    assert Config().worker_breaker_max_backoff == 30.0
    for key, value in [
        ("WORKER_BREAKER_FAILURES", "0"),
        ("WORKER_BREAKER_FAILURES", "2.5"),
        ("WORKER_BREAKER_FAILURES", "many"),
        ("WORKER_BREAKER_MAX_BACKOFF", "0"),
        ("WORKER_BREAKER_MAX_BACKOFF", "-1"),
    ]:
        with pytest.raises(ConfigError, match=key):
            Config.from_env({key: value})


# -- in a Client ------------------------------------------------------------------------


class Refuser:
    """Accepts connections and closes them at once, counting them: a dispatcher that
    never answers, whose every attempt is seen."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.accepts = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepts += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


def test_an_open_breaker_fails_calls_fast_without_connecting():
    server = Refuser()
    clock = Clock()
    b = CircuitBreaker(3, max_backoff=8.0, clock=clock, rand=lambda: 1.0)
    try:
        with Client(server.url, breaker=b) as client:
            for _ in range(10):
                with pytest.raises(DispatcherUnreachable):
                    client.stats()
            assert b.state == OPEN
            with pytest.raises(DispatcherUnreachable, match="circuit breaker open"):
                client.stats()
        assert server.accepts == 3  # the other 8 calls never left the process
    finally:
        server.close()


def test_answers_below_500_count_as_the_dispatcher_answering(monkeypatch):
    b = breaker(Clock(), failures=2)
    client = Client("http://127.0.0.1:9", breaker=b)
    answers = iter(
        [
            DispatcherUnreachable("HTTP 503"),
            ApiError(429, "busy", 1.0),
            DispatcherUnreachable("refused"),
            ApiError(404, "unknown task"),
            DispatcherUnreachable("refused"),
        ]
    )

    def send(*args):
        raise next(answers)

    monkeypatch.setattr(client, "_send", send)
    for _ in range(5):
        with pytest.raises((DispatcherUnreachable, ApiError)):
            client.stats()
    assert b.state == CLOSED  # never two failures in a row


def test_a_request_ended_by_abort_is_not_a_failure():
    """A stopping worker aborts its held claim: that says nothing about the dispatcher."""
    silent = socket.socket()  # accepts (the kernel's backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    b = breaker(Clock(), failures=1)
    client = Client(f"http://127.0.0.1:{silent.getsockname()[1]}", breaker=b)
    raised: list[BaseException] = []

    def held_claim():
        try:
            client.stats()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=held_claim)
    thread.start()
    try:
        poll(
            lambda: client._conn is not None and client._conn.sock is not None,
            10,
            lambda: "the request never connected",
            pytest.fail,
            every=0.01,
        )
        client.abort()
        thread.join(10)
        assert not thread.is_alive()
        assert [type(e) for e in raised] == [DispatcherUnreachable]
        assert b.state == CLOSED
    finally:
        client.close()
        silent.close()
