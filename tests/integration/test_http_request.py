"""The real mode of `http_request` against a local HTTP server (http.server, in a thread
of the test, on 127.0.0.1): first `http_fetch.fetch` itself, then through a real
dispatcher and worker (HTTP_REQUEST_ALLOWED_HOSTS set for both)."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import ssl
import subprocess
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from harness import Cluster

from common.client import ApiError
from common.config import HostAllowList
from tasks import TaskFailed, http_fetch
from tasks.http_fetch import HostRefused, fetch

pytestmark = pytest.mark.integration

BIG = b"0123456789" * 10_000  # 100,000 bytes: more than the 64 KiB the result keeps


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that went away (a timed-out test request): nothing to report


class Site:
    """A small web site on 127.0.0.1 (a free port), served by threads of this process.

    /ok (JSON, with validators), /echo (the request as JSON), /status/<code>,
    /redirect?to=<url>, /loop (redirects to itself), /big, /binary, /hang (answers when
    the test ends); HEAD too. `hits` counts the requests per path (query included)."""

    def __init__(self, tls: ssl.SSLContext | None = None):
        site = self
        self.hits: Counter[str] = Counter()
        self.released = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                site.hits[self.path] += 1
                site.answer(self)

            do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_GET

            def log_message(self, *args):
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def answer(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        query = parse_qs(parts.query)
        headers: dict[str, str] = {}
        status, body = 200, b""
        if parts.path == "/ok":
            headers = {
                "Content-Type": "application/json; charset=utf-8",
                "ETag": '"v1"',
                "Last-Modified": "Tue, 01 Dec 2026 10:00:00 GMT",
                "Cache-Control": "max-age=60",
                "X-Not-Kept": "1",
            }
            body = b'{"hello": "world"}'
        elif parts.path == "/echo":
            length = int(h.headers.get("Content-Length") or 0)
            sent = h.rfile.read(length).decode()
            headers = {"Content-Type": "application/json"}
            body = json.dumps(
                {"method": h.command, "headers": dict(h.headers), "body": sent}
            ).encode()
        elif parts.path.startswith("/status/"):
            status = int(parts.path.rsplit("/", 1)[1])
            body = f"status {status}".encode()
        elif parts.path == "/redirect":
            status, headers = 302, {"Location": query["to"][0]}
        elif parts.path == "/loop":
            status, headers = 302, {"Location": "/loop"}
        elif parts.path == "/big":
            headers, body = {"Content-Type": "text/plain"}, BIG
        elif parts.path == "/binary":
            headers, body = {"Content-Type": "application/octet-stream"}, bytes(range(256))
        elif parts.path == "/hang":
            self.released.wait(60)
        else:
            status = 404
        h.send_response(status)
        for name, value in headers.items():
            h.send_header(name, value)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def site():
    s = Site()
    yield s
    s.close()


LOCAL = HostAllowList.parse("127.0.0.1/32")


def get(url: str, allowed: HostAllowList = LOCAL, **options) -> dict:
    request = {"method": "GET", "headers": {}, "body": None, "timeout": 10, **options}
    return fetch(
        url, request["method"], request["headers"], request["body"], request["timeout"], allowed
    )


# -- fetch ----------------------------------------------------------------------------------


def test_a_get_returns_status_selected_headers_body_and_its_digest(site):
    result = get(site.url("/ok"))
    body = b'{"hello": "world"}'
    assert result["url"] == result["final_url"] == site.url("/ok")
    assert result["method"] == "GET"
    assert result["simulated"] is False
    assert result["status_code"] == 200
    assert result["redirects"] == 0
    assert result["headers"] == {
        "content-type": "application/json; charset=utf-8",
        "content-length": str(len(body)),
        "etag": '"v1"',
        "last-modified": "Tue, 01 Dec 2026 10:00:00 GMT",
        "cache-control": "max-age=60",
    }
    assert result["body"] == body.decode()
    assert result["body_encoding"] == "text"
    assert (result["body_bytes"], result["body_truncated"]) == (len(body), False)
    assert result["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert isinstance(result["elapsed_ms"], float) and result["elapsed_ms"] >= 0
    json.dumps(result, allow_nan=False)


def test_method_headers_and_body_are_sent(site):
    result = get(
        site.url("/echo"),
        method="POST",
        headers={"Content-Type": "application/json", "X-Request-Id": "r-1"},
        body='{"caf\u00e9": 1}',
    )
    echoed = json.loads(result["body"])
    assert echoed["method"] == "POST"
    assert echoed["headers"]["Content-Type"] == "application/json"
    assert echoed["headers"]["X-Request-Id"] == "r-1"
    assert echoed["headers"]["Host"] == f"127.0.0.1:{site.port}"
    assert echoed["body"] == '{"caf\u00e9": 1}'  # sent as UTF-8


def test_a_long_body_is_cut_to_64_kib_and_hashed_whole(site):
    result = get(site.url("/big"))
    assert result["body"] == BIG[:65_536].decode()
    assert (result["body_bytes"], result["body_truncated"]) == (len(BIG), True)
    assert result["body_sha256"] == hashlib.sha256(BIG).hexdigest()


def test_a_binary_body_comes_back_as_base64(site):
    result = get(site.url("/binary"))
    assert result["body_encoding"] == "base64"
    assert result["body"].startswith("AAECAwQF")
    assert result["body_sha256"] == hashlib.sha256(bytes(range(256))).hexdigest()


def test_head_has_no_body(site):
    result = get(site.url("/ok"), method="HEAD")
    assert (result["status_code"], result["body"], result["body_bytes"]) == (200, "", 0)


@pytest.mark.parametrize("code", [404, 500, 503])
def test_a_status_outside_2xx_fails_the_attempt_naming_it(site, code):
    with pytest.raises(TaskFailed) as caught:
        get(site.url(f"/status/{code}"))
    assert str(caught.value).startswith(
        f"http_request GET {site.url(f'/status/{code}')} answered {code}"
    )


def test_a_redirect_to_an_allowed_host_is_followed(site):
    result = get(site.url("/redirect?to=/ok"))
    assert result["url"] == site.url("/redirect?to=/ok")
    assert result["final_url"] == site.url("/ok")
    assert (result["status_code"], result["redirects"]) == (200, 1)


def test_a_redirect_to_a_host_outside_the_list_is_refused_before_connecting(site):
    before = site.hits["/ok"]
    elsewhere = site.url("/ok", host="localhost")  # the same server, by a name not listed
    with pytest.raises(HostRefused) as caught:
        get(site.url(f"/redirect?to={elsewhere}"))
    assert str(caught.value) == (
        "http_request host 'localhost' is not in the worker's HTTP_REQUEST_ALLOWED_HOSTS "
        f"(redirected to it by {site.url(f'/redirect?to={elsewhere}')})"
    )
    with pytest.raises(HostRefused, match="host '127.0.0.2' is not in"):
        get(site.url("/redirect?to=http://127.0.0.2/ok"))
    assert site.hits["/ok"] == before


def test_redirects_are_bounded(site):
    with pytest.raises(TaskFailed, match="more than 5 redirects"):
        get(site.url("/loop"))


def test_a_server_that_does_not_answer_times_out(site):
    with pytest.raises(TaskFailed, match=r"timed out after 0\.5 s"):
        get(site.url("/hang"), timeout=0.5)


def test_a_closed_port_fails_the_attempt(site):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TaskFailed, match="failed: NewConnectionError: .*refused"):
        get(f"http://127.0.0.1:{port}/")


def test_the_worker_refuses_a_host_its_own_list_does_not_name(site):
    with pytest.raises(HostRefused, match="not in the worker's HTTP_REQUEST_ALLOWED_HOSTS"):
        get(site.url("/ok"), HostAllowList.parse("example.com"))


def test_a_name_is_resolved_once_and_the_checked_address_is_the_one_connected(site, monkeypatch):
    """DNS rebinding: the first answer is checked and used; a later, different answer
    (here a private address) cannot slip in between the check and the connection."""
    answers = iter(["127.0.0.1", "10.255.255.1"])
    lookups = []

    def rebinding(host, port, family=0, type_=0, proto=0, flags=0):
        lookups.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

    monkeypatch.setattr(http_fetch, "_getaddrinfo", rebinding)
    allowed = HostAllowList.parse("rebind.example, 127.0.0.1/32")
    result = get(site.url("/echo", host="rebind.example"), allowed)
    assert json.loads(result["body"])["headers"]["Host"] == f"rebind.example:{site.port}"
    assert lookups == ["rebind.example"]
    with pytest.raises(HostRefused, match=r"resolves to 10\.255\.255\.1, a non-public"):
        get(site.url("/echo", host="rebind.example"), allowed)


# -- https: the name's certificate, the pinned address ------------------------------------


@pytest.fixture(scope="module")
def tls_site(tmp_path_factory):
    """The same site over TLS, with a self-signed certificate for `localhost` only."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
        + ["-nodes", "-days", "2", "-subj", "/CN=localhost"]
        + ["-addext", "subjectAltName=DNS:localhost"]
        + ["-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(d / "cert.pem", d / "key.pem")
    names: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: names.append(name)
    s = Site(tls=context)
    s.cert, s.sni = d / "cert.pem", names
    yield s
    s.close()


def test_https_checks_the_names_certificate_on_the_pinned_address(tls_site, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_site.cert))
    allowed = HostAllowList.parse("localhost, 127.0.0.0/8")  # localhost is 127.0.0.1
    result = get(tls_site.url("/ok", host="localhost", scheme="https"), allowed)
    assert result["status_code"] == 200
    assert tls_site.sni[-1] == "localhost"


def test_https_verifies_certificates(tls_site, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_site.cert))
    with pytest.raises(TaskFailed, match="certificate verify failed"):  # made for localhost only
        get(tls_site.url("/ok", scheme="https"), LOCAL)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    with pytest.raises(TaskFailed, match="certificate verify failed"):  # self-signed: untrusted
        get(
            tls_site.url("/ok", host="localhost", scheme="https"),
            HostAllowList.parse("localhost, 127.0.0.1/32"),
        )


# -- through a dispatcher and a worker ------------------------------------------------------------


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory):
    """A dispatcher and a worker with HTTP_REQUEST_ALLOWED_HOSTS=127.0.0.1/32."""
    c = Cluster(tmp_path_factory.mktemp("cluster"), HTTP_REQUEST_ALLOWED_HOSTS="127.0.0.1/32")
    try:
        c.start_dispatcher()
        c.wait_worker_alive(c.start_worker("worker-1"))
        yield c
    finally:
        c.close()


def real(url: str, **fields) -> dict:
    return {"url": url, "simulate": False, **fields}


def test_a_worker_performs_the_request(local_cluster, site):
    task_id = local_cluster.submit("http_request", real(site.url("/ok"), timeout=5))
    stored = local_cluster.task(task_id)["payload"]
    assert stored == {
        "url": site.url("/ok"),
        "method": "GET",
        "simulate": False,
        "headers": {},
        "body": None,
        "timeout": 5,
    }
    task = local_cluster.wait_status(task_id, ("completed", "failed"), timeout=60)
    assert task["status"] == "completed", task
    result = task["result"]
    assert result["status_code"] == 200
    assert result["headers"]["etag"] == '"v1"'
    assert result["body"] == '{"hello": "world"}'
    assert result["body_sha256"] == hashlib.sha256(b'{"hello": "world"}').hexdigest()
    assert result["elapsed_ms"] >= 0


def test_a_status_outside_2xx_fails_each_attempt_and_is_retried(local_cluster, site):
    path = "/status/503?retried"
    task_id = local_cluster.submit("http_request", real(site.url(path)), max_retries=1)
    task = local_cluster.wait_status(task_id, ("completed", "failed"), timeout=60)
    assert task["status"] == "failed", task
    assert task["attempts"] == 2
    expected = f"http_request GET {site.url(path)} answered 503 Service Unavailable"
    assert [a["error"] for a in task["history"]] == [expected, expected]
    assert task["error"] == expected
    assert site.hits[path] == 2


def test_a_host_outside_the_list_is_refused_at_submission_with_400(local_cluster, site):
    for url in ("https://example.com/", site.url("/ok", host="localhost")):
        host = urlsplit(url).hostname
        with pytest.raises(ApiError) as caught:
            local_cluster.submit("http_request", real(url))
        assert caught.value.status == 400
        assert caught.value.message == (
            f"http_request host '{host}' is not in HTTP_REQUEST_ALLOWED_HOSTS"
        )
    with pytest.raises(ApiError) as caught:  # a batch is refused whole
        local_cluster.client.submit_tasks(
            [
                {"type": "http_request", "payload": real(site.url("/ok"))},
                {"type": "http_request", "payload": real("http://10.0.0.1/")},
            ]
        )
    assert caught.value.status == 400
    assert "host '10.0.0.1' is not in HTTP_REQUEST_ALLOWED_HOSTS" in caught.value.message
    # the simulated mode sends nothing, so the list does not apply to it
    task_id = local_cluster.submit("http_request", {"url": "https://example.com/"})
    task = local_cluster.wait_status(task_id, ("completed", "failed"), timeout=60)
    assert task["result"]["simulated"] is True


def test_a_listed_name_that_resolves_to_loopback_is_refused_by_the_worker(make_cluster, site):
    """`localhost` is listed, so the dispatcher takes the task; the worker resolves it
    to 127.0.0.1, which no IP or CIDR entry covers, and refuses to connect."""
    cluster = make_cluster(HTTP_REQUEST_ALLOWED_HOSTS="localhost")
    cluster.start_dispatcher()
    url = site.url("/ok?resolved", host="localhost")
    task_id = cluster.submit("http_request", real(url), max_retries=0)  # accepted
    cluster.start_worker("worker-1")
    task = cluster.wait_status(task_id, ("completed", "failed"), timeout=60)
    assert task["status"] == "failed", task
    assert task["error"] == (
        "http_request host 'localhost' resolves to 127.0.0.1, a non-public address "
        "(loopback); only an IP or CIDR entry of the worker's HTTP_REQUEST_ALLOWED_HOSTS "
        "allows it"
    )
    assert site.hits["/ok?resolved"] == 0
