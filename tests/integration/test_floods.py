"""Connection floods against a real dispatcher (SQLite and PostgreSQL): while each is
open, /health, a submission and another queue's worker are each answered within a
second; held polls end with their normal answer; slow clients are cut off."""

from __future__ import annotations

import select
import socket
import time

import pytest
from attacks import (
    HeldPolls,
    Probes,
    ShortBody,
    Silent,
    SlowHeaders,
    Unterminated,
    probe,
    read_response,
)
from harness import Cluster, wait_for

from tests.pg import fresh_schema_url

ROUNDS = 3  # probe rounds per attack, the first right after the attack is in place
POLL_WAIT_S = 6.0


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def dispatcher(request, tmp_path_factory):
    """One dispatcher per backend for all the floods of this module."""
    tmp = tmp_path_factory.mktemp(request.param)
    if request.param == "sqlite":
        cluster = Cluster(tmp)
        cluster.start_dispatcher()
        yield cluster
        cluster.close()
        return
    with fresh_schema_url() as url:
        cluster = Cluster(tmp, DATABASE_URL=url)
        cluster.start_dispatcher()
        yield cluster
        cluster.close()


def run_probes(cluster: Cluster) -> Probes:
    probes = Probes()
    for _ in range(ROUNDS):
        probe(cluster.port, probes)
    return probes


def check(probes: Probes, cluster: Cluster, attack: str) -> None:
    assert not probes.failures, (
        f"during {attack}: {probes.failures}; worst times {probes.worst}\n{cluster.logs()}"
    )
    print(
        f"{attack}: worst " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in probes.worst.items())
    )


@pytest.mark.parametrize(
    "attack, count",
    [(SlowHeaders, 100), (Silent, 200), (ShortBody, 40), (Unterminated, 40)],
    ids=["slow-headers", "silent", "short-bodies", "unterminated-chunked"],
)
def test_slow_clients_leave_the_dispatcher_answering(dispatcher, attack, count):
    with attack(dispatcher.port, count) as flood:
        probes = run_probes(dispatcher)
        open_now = sum(1 for s in flood.socks if s.fileno() >= 0)
    check(probes, dispatcher, f"{count} {attack.name}")
    assert open_now == count


def test_500_held_polls_leave_the_dispatcher_answering_and_end_normally(dispatcher):
    with HeldPolls(dispatcher.port, 500, wait=POLL_WAIT_S) as polls:
        polls.wait_held(dispatcher.client, timeout=POLL_WAIT_S)
        probes = run_probes(dispatcher)
        answers = polls.answers(timeout=POLL_WAIT_S + 20)
        waited = time.monotonic() - polls.started
    check(probes, dispatcher, "500 held long polls")
    wrong = [a for a in answers if a[0] != 200 or a[1] != {"tasks": []}]
    assert not wrong, f"{len(wrong)} of 500 polls did not end with 200 and no task: {wrong[:5]}"
    assert waited >= POLL_WAIT_S, "the polls were answered before their wait ended"


def test_a_slow_client_is_cut_off_after_the_read_timeout(make_cluster):
    cluster = make_cluster(DISPATCHER_READ_TIMEOUT="1")
    cluster.start_dispatcher()
    with (
        SlowHeaders(cluster.port, 5) as slow,
        Silent(cluster.port, 5) as silent,
        ShortBody(cluster.port, 5) as short,
    ):
        for sock in slow.socks + silent.socks + short.socks:
            sock.settimeout(10)
        heads = [read_response(s) for s in slow.socks]  # the 408 of a head not finished
        bodies = [read_response(s) for s in short.socks]  # the 408 of a body not finished
        closed = [s.recv(1) for s in silent.socks]  # nothing sent: closed without a word
    assert {status for status, _, _ in heads} == {408}, heads
    assert "DISPATCHER_READ_TIMEOUT" in heads[0][1]["error"]
    assert {status for status, _, _ in bodies} == {408}, bodies
    assert "DISPATCHER_READ_TIMEOUT" in bodies[0][1]["error"]
    assert closed == [b""] * 5
    assert cluster.client.stats()["tasks"]["pending"] == 0  # nothing half-read was stored


def test_polls_over_the_cap_get_429_and_a_worker_waits_then_claims(make_cluster):
    """DISPATCHER_CONNECTIONS=20: the process holds at most 10 polls (one process, so
    that every connection meets the same count). A worker that starts while it is full
    is told 429, waits (its client tries the claim again after Retry-After), and claims
    once a poll ends."""
    cluster = make_cluster(DISPATCHER_CONNECTIONS="20", DISPATCHER_PROCESSES="1")
    cluster.start_dispatcher()
    with HeldPolls(cluster.port, 40, wait=POLL_WAIT_S, queue="idle") as polls:
        # the ones over the cap are answered at once, the others are held for 6 s
        refused, waiting, deadline = [], list(polls.socks), time.monotonic() + 1.0
        while waiting and (left := deadline - time.monotonic()) > 0:
            for sock in select.select(waiting, [], [], left)[0]:
                refused.append(read_response(sock))
                waiting.remove(sock)
                sock.close()  # its slot is free for the worker's connections
        assert len(refused) == 30, f"{len(refused)} of 40 polls refused, not 30"
        assert {s for s, _, _ in refused} == {429}, refused
        assert "retry after" in refused[0][1]["error"]
        worker = cluster.start_worker("w1")  # nothing to do: it asks to wait
        wait_for(
            lambda: "dispatcher answered 429, trying again" in worker.log(200),
            30,
            lambda: f"the worker never met the cap:\n{worker.log()}",
        )
        task_id = cluster.submit("compute", {"operation": "double", "value": 4})
        done = cluster.wait_status(task_id, "completed", timeout=30)
    assert done["result"]["result"] == 8 and done["worker_id"] == "w1"


def test_a_malformed_request_gets_a_json_error(cluster):
    cluster.start_dispatcher()
    cases = [
        (b"GET /health HTTP/9.9\r\n\r\n", 400),
        (b"POST /submit-task HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
        (b"POST /submit-task HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET /health HTTP/1.1\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", 431),
    ]
    for raw, expected in cases:
        with socket.create_connection(("127.0.0.1", cluster.port), timeout=5) as sock:
            sock.sendall(raw)
            status, body, _ = read_response(sock)
        assert status == expected, (raw[:60], status, body)
        assert isinstance(body, dict) and body["error"], (raw[:60], body)


def test_an_upload_to_an_endpoint_that_takes_none_is_not_read(make_cluster):
    """POST /health (no token needed, no body wanted) with 50 MB announced: answered at
    once and the connection closed, without reading the upload."""
    cluster = make_cluster(API_TOKEN="secret")
    cluster.start_dispatcher()
    with socket.create_connection(("127.0.0.1", cluster.port), timeout=5) as sock:
        sock.sendall(b"POST /health HTTP/1.1\r\nContent-Length: 50000000\r\n\r\n" + b"x" * 1000)
        status, body, _ = read_response(sock)
        assert status in (405, 413), body
        sent = 1000
        sock.settimeout(5)
        try:  # keep sending: the server stops reading and closes, so this fails soon
            while sent < 50_000_000:
                sent += sock.send(b"x" * 65536)
        except OSError:
            pass
    assert sent < 10_000_000, f"the server read {sent} bytes of an upload nobody wanted"
    wait_for(lambda: cluster.client.call("GET", "/health"), 5, lambda: "no health")
