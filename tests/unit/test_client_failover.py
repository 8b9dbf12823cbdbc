"""DISPATCHER_URL with several dispatchers: the client moves to the next one that
answers. Real tiny HTTP servers on free ports; a closed port is a real "down"."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from common import cli
from common.client import ApiError, Client, Dispatchers, DispatcherUnreachable, split_urls
from common.config import Config, ConfigError


class Server:
    """A stand-in dispatcher that records what it was sent. `mode`: "ok" answers 200
    (JSON), "lose" reads the request and hangs up without a reply, "503" and "404"
    answer that status with a JSON error."""

    def __init__(self, mode: str = "ok"):
        self.mode = mode
        self.seen: list[tuple[str, str, dict | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as gunicorn does

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                server.seen.append((self.command, self.path, body))
                if server.mode == "lose":
                    self.close_connection = True  # hang up: the reply is lost
                    return
                status = 200 if server.mode == "ok" else int(server.mode)
                errors = {503: "database unavailable", 404: "no such task"}
                reply = {"error": errors[status]} if status != 200 else _reply(self.path)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _handle

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def paths(self) -> list[str]:
        return [path for _, path, _ in self.seen]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _reply(path: str) -> dict:
    if path == "/get-task":
        return {"tasks": []}
    if path == "/submit-task":
        return {"task_id": "t1", "status": "pending"}
    if path == "/heartbeat":
        return {"abandon": []}
    if path == "/submit-results":
        return {"results": []}
    return {"status": "ok", "tasks": {}, "workers": []}


def closed_port_url() -> str:
    """A URL where nothing listens: connecting is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    made: list[Server] = []
    yield made
    for s in made:
        s.stop()


def serve(servers: list[Server], mode: str = "ok") -> Server:
    server = Server(mode)
    servers.append(server)
    return server


def client_for(*urls: str, start: int = 0) -> Client:
    return Client(Dispatchers(",".join(urls), start=start))


# -- moving on when a dispatcher is down --------------------------------------------------


def test_a_refused_connection_moves_the_request_to_the_next_dispatcher(servers, caplog):
    down, up = closed_port_url(), serve(servers)
    with client_for(down, up.url) as client, caplog.at_level(logging.WARNING, "client"):
        assert client.stats()["status"] == "ok"
        assert client.base_url == up.url  # the next request starts there
        client.heartbeat("w1", "", [])
    assert up.paths() == ["/stats", "/heartbeat"]
    moves = [r.getMessage() for r in caplog.records if r.name == "client"]
    assert len(moves) == 1, moves
    assert down in moves[0] and f"using {up.url} now" in moves[0]


def test_a_submission_that_never_left_goes_to_the_next_dispatcher(servers):
    down, up = closed_port_url(), serve(servers)
    with client_for(down, up.url) as client:  # no idempotency key: still safe, never sent
        assert client.submit_task({"type": "sleep", "payload": {"duration": 0}}) == "t1"
    assert up.paths() == ["/submit-task"]


def test_the_list_wraps_around_from_the_start_position(servers):
    up, down = serve(servers), closed_port_url()
    with client_for(up.url, down, start=1) as client:
        client.stats()
        assert client.base_url == up.url
    assert up.paths() == ["/stats"]


def test_all_down_is_one_error_naming_every_dispatcher_tried():
    first, second = closed_port_url(), closed_port_url()
    with client_for(first, second) as client, pytest.raises(DispatcherUnreachable) as caught:
        client.stats()
    assert [url for url, _ in caught.value.failures] == [first, second]
    assert str(caught.value).startswith(f"{first}: ConnectionRefusedError")
    assert f"; {second}: ConnectionRefusedError" in str(caught.value)
    assert client.base_url == first  # nothing answered: nobody moved


def test_one_url_down_reads_as_before():
    url = closed_port_url()
    with Client(url) as client, pytest.raises(DispatcherUnreachable) as caught:
        client.stats()
    assert str(caught.value).startswith(f"{url}: ConnectionRefusedError")
    assert len(caught.value.failures) == 1


def test_clients_of_one_process_share_the_dispatcher_in_use(servers):
    down, up = closed_port_url(), serve(servers)
    dispatchers = Dispatchers(f"{down},{up.url}", start=0)
    first, second = Client(dispatchers), Client(dispatchers)
    try:
        first.stats()  # finds the first dispatcher down and moves both
        assert second.base_url == up.url
        second.workers()
    finally:
        first.close()
        second.close()
    assert up.paths() == ["/stats", "/workers"]


def test_start_positions_spread_over_the_list():
    urls = "http://127.0.0.1:1,http://127.0.0.1:2,http://127.0.0.1:3"
    starts = {Dispatchers(urls).current for _ in range(200)}  # a miss has odds of 3 * (2/3)^200
    assert starts == {0, 1, 2}


def test_an_http_error_answer_is_not_sent_elsewhere(servers):
    failing, other = serve(servers, "503"), serve(servers)
    with client_for(failing.url, other.url) as client:
        with pytest.raises(DispatcherUnreachable, match="HTTP 503 database unavailable"):
            client.stats()
        assert client.base_url == failing.url
    assert other.seen == []


def test_a_refusal_is_the_callers_and_is_not_sent_elsewhere(servers):
    refusing, other = serve(servers, "404"), serve(servers)
    with client_for(refusing.url, other.url) as client, pytest.raises(ApiError) as caught:
        client.task("nope")
    assert caught.value.status == 404
    assert other.seen == []


# -- a reply lost after the request was sent ----------------------------------------------


def test_a_lost_reply_to_a_claim_is_claimed_again_elsewhere(servers):
    lost, up = serve(servers, "lose"), serve(servers)
    with client_for(lost.url, up.url) as client:
        assert client.get_task("w1", "i1", ("default",), wait=0, max_tasks=1) == []
        assert client.base_url == up.url
    assert lost.paths() == ["/get-task"] and up.paths() == ["/get-task"]


def test_a_lost_reply_to_results_is_sent_again_elsewhere(servers):
    lost, up = serve(servers, "lose"), serve(servers)
    with client_for(lost.url, up.url) as client:
        client.submit_results([])
    assert up.paths() == ["/submit-results"]


def test_a_lost_reply_to_a_submission_without_key_is_not_sent_again(servers):
    lost, other = serve(servers, "lose"), serve(servers)
    with client_for(lost.url, other.url) as client:
        with pytest.raises(DispatcherUnreachable) as caught:
            client.submit_task({"type": "sleep", "payload": {"duration": 0}})
    assert lost.paths() == ["/submit-task"]
    assert other.seen == []  # it may be stored at the first: a resend could duplicate it
    assert str(caught.value).startswith(lost.url)


def test_a_lost_reply_to_a_submission_with_key_is_sent_again(servers):
    lost, other = serve(servers, "lose"), serve(servers)
    task = {"type": "sleep", "payload": {"duration": 0}, "idempotency_key": "k1"}
    with client_for(lost.url, other.url) as client:
        assert client.submit_task(task) == "t1"
    assert other.seen == [("POST", "/submit-task", task)]


def test_with_one_url_a_lost_reply_is_never_sent_twice(servers):
    lost = serve(servers, "lose")
    with Client(lost.url) as client, pytest.raises(DispatcherUnreachable):
        client.get_task("w1", "i1", ("default",), wait=0, max_tasks=1)
    assert lost.paths() == ["/get-task"]


# -- configuration and messages ------------------------------------------------------------


def test_dispatcher_url_accepts_a_list():
    config = Config.from_env({"DISPATCHER_URL": "http://a:5000, https://b.example/queue/"})
    assert config.dispatcher_urls == ["http://a:5000", "https://b.example/queue"]


@pytest.mark.parametrize(
    "value",
    ["http://a:5000,b:5000", "http://a:5000,", ",", "http://a:99999", "http://a:5000,ftp://b"],
)
def test_a_bad_entry_in_the_list_is_one_line_naming_dispatcher_url(value):
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"DISPATCHER_URL": value})
    assert str(caught.value).startswith("DISPATCHER_URL")
    assert "\n" not in str(caught.value)


def test_split_urls_names_the_bad_entry():
    with pytest.raises(ValueError, match="'b:5000'"):
        split_urls("http://a:5000,b:5000")


def test_cli_messages_for_one_and_several_dispatchers():
    one, two = closed_port_url(), closed_port_url()
    for setting in (one, f"{one},{two}"):
        config = Config.from_env({"DISPATCHER_URL": setting})
        with cli.connect(config) as client, pytest.raises(DispatcherUnreachable) as caught:
            client.stats()
        message = cli.unreachable(config, caught.value)
        if setting == one:
            assert message.startswith(f"cannot reach the dispatcher at {one} (Connection")
        else:
            assert message.startswith("cannot reach the dispatchers (")
            assert f"{one}: Connection" in message and f"{two}: Connection" in message
