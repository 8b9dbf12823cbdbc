"""TLS (issue 19, docs/SECURITY.md): a dispatcher serving HTTPS with TLS_CERT_FILE and
TLS_KEY_FILE, and workers, add_task.py and the client library verifying it with
DISPATCHER_CA_FILE. The certificates are made by the test (trustme), for localhost and
127.0.0.1; nothing here needs the openssl command."""

from __future__ import annotations

import http.client
import json
import subprocess
from pathlib import Path

import pytest
import trustme
from harness import Cluster, free_port, wait_for

import taskqueue
from common.client import Client
from common.config import PROJECT_ROOT

pytestmark = pytest.mark.integration


class Certs:
    """A CA, a server certificate it signed, and their PEM files under `directory`."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA()
        server = self.ca.issue_cert("localhost", "127.0.0.1")
        self.ca_file = directory / "ca.pem"
        self.cert_file = directory / "server.pem"
        self.key_file = directory / "server.key"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        server.cert_chain_pems[0].write_to_path(str(self.cert_file))
        for pem in server.cert_chain_pems[1:]:
            pem.write_to_path(str(self.cert_file), append=True)
        server.private_key_pem.write_to_path(str(self.key_file))


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """A dispatcher over HTTPS only, and one worker trusting it through DISPATCHER_CA_FILE."""
    tmp = tmp_path_factory.mktemp("tls")
    certs = Certs(tmp / "certs")
    port = free_port()
    c = Cluster(
        tmp,
        DISPATCHER_PORT=str(port),
        DISPATCHER_URL=f"https://127.0.0.1:{port}",
        DISPATCHER_CA_FILE=str(certs.ca_file),
        TLS_CERT_FILE=str(certs.cert_file),
        TLS_KEY_FILE=str(certs.key_file),
    )
    c.certs = certs
    try:
        c.start_dispatcher()
        c.wait_worker_alive(c.start_worker("w-tls"))
        yield c
    finally:
        c.close()


def test_a_worker_over_https_with_the_ca_runs_tasks(tls):
    task_ids = [tls.submit("compute", {"operation": "double", "value": n}) for n in range(5)]
    finished = tls.wait_all_finished(task_ids, timeout=60)
    assert [t["status"] for t in finished] == ["completed"] * 5, finished
    assert {t["worker_id"] for t in finished} == {"w-tls"}, finished


def test_held_long_polls_are_answered_over_tls(tls):
    """The worker's claims are held (WORKER_POLL_INTERVAL) on the TLS connection; a task
    submitted while one is held is taken by that held claim."""
    task_id = tls.submit("compute", {"operation": "double", "value": 21})
    assert tls.wait_status(task_id, "completed")["status"] == "completed"


def test_plain_http_to_the_tls_port_gets_no_http_answer(tls):
    conn = http.client.HTTPConnection("127.0.0.1", tls.port, timeout=10)
    try:
        conn.request("GET", "/health")
        try:
            response = conn.getresponse()
        except (OSError, http.client.HTTPException):
            return  # closed or reset: nothing a client could take for an answer
        body = response.read()
        pytest.fail(f"plain HTTP got an answer: {response.status} {body[:200]!r}")
    finally:
        conn.close()
    dispatcher = tls.procs[0]
    assert dispatcher.alive(), tls.logs()
    # a failed handshake is a DEBUG line, not a traceback per connection
    assert "Traceback" not in dispatcher.log(tail=2000), dispatcher.log(tail=100)


def test_a_worker_without_the_ca_does_not_register_and_says_why_once(tls):
    worker = tls.start_worker("w-untrusting", DISPATCHER_CA_FILE="", LOG_LEVEL="DEBUG")

    def lines(text: str) -> list[str]:
        return [line for line in worker.log(tail=2000).splitlines() if text in line]

    # each try after the first logs "still not trusted" at DEBUG: wait for a few of them
    wait_for(
        lambda: len(lines("still not trusted")) >= 3,
        60,
        lambda: f"fewer than 3 tries seen:\n{worker.log(tail=100)}",
    )
    assert worker.alive(), worker.log()
    refused = lines("certificate verify failed")
    assert len(refused) == 1, worker.log(tail=200)
    assert "ERROR" in refused[0] and "DISPATCHER_CA_FILE" in refused[0], refused
    names = [w["worker_id"] for w in tls.client.workers()]
    assert "w-untrusting" not in names, names
    assert "Traceback" not in tls.procs[0].log(tail=2000), tls.procs[0].log(tail=100)
    worker.close()


def test_add_task_with_the_ca_submits_and_waits(tls, tmp_path):
    payload = '{"type":"compute","payload":{"operation":"double","value":4}}'
    env = {**tls.user_env(), "DISPATCHER_CA_FILE": str(tls.certs.ca_file)}
    done = subprocess.run(
        ["python3", str(PROJECT_ROOT / "add_task.py"), "--payload", payload, "--wait", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert json.loads(done.stdout)["tasks"][0]["status"] == "completed", done.stdout


def test_add_task_without_the_ca_fails_naming_the_certificate(tls, tmp_path):
    payload = '{"type":"compute","payload":{"operation":"double","value":4}}'
    done = subprocess.run(
        ["python3", str(PROJECT_ROOT / "add_task.py"), "--payload", payload],
        cwd=tmp_path,
        env=tls.user_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0, done.stdout
    assert "certificate verify failed" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_the_client_library_verifies_with_the_ca_file(tls):
    with taskqueue.Client(tls.url, "", ca_file=str(tls.certs.ca_file)) as client:
        handle = client.submit("compute", {"operation": "double", "value": 8})
        assert handle.result(timeout=30)["result"] == 16
    with taskqueue.Client(tls.url, "", ca_file="") as client:  # the system's store
        with pytest.raises(taskqueue.DispatcherUnreachable, match="certificate verify failed"):
            client.stats()


# -- misconfiguration: one line naming the setting, a non-zero exit --------------------


def _start(cluster: Cluster, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["./start_dispatcher.sh"],
        cwd=PROJECT_ROOT,
        env=cluster.env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _bad_settings(certs: Certs, tmp: Path) -> dict[str, tuple[dict[str, str], str]]:
    other = trustme.CA().issue_cert("localhost")
    other_key = tmp / "other.key"
    other.private_key_pem.write_to_path(str(other_key))
    unreadable = tmp / "unreadable.pem"
    unreadable.write_text("secret")
    unreadable.chmod(0)
    return {
        "cert-without-key": ({"TLS_CERT_FILE": str(certs.cert_file)}, "TLS_KEY_FILE"),
        "key-without-cert": ({"TLS_KEY_FILE": str(certs.key_file)}, "TLS_CERT_FILE"),
        "missing-cert": (
            {"TLS_CERT_FILE": str(tmp / "nope.pem"), "TLS_KEY_FILE": str(certs.key_file)},
            "TLS_CERT_FILE",
        ),
        "unreadable-key": (
            {"TLS_CERT_FILE": str(certs.cert_file), "TLS_KEY_FILE": str(tmp / "nope.key")},
            "TLS_KEY_FILE",
        ),
        "mismatched-key": (
            {"TLS_CERT_FILE": str(certs.cert_file), "TLS_KEY_FILE": str(other_key)},
            "TLS_KEY_FILE",
        ),
        "unreadable-ca": ({"DISPATCHER_CA_FILE": str(tmp / "nope-ca.pem")}, "DISPATCHER_CA_FILE"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "cert-without-key",
        "key-without-cert",
        "missing-cert",
        "unreadable-key",
        "mismatched-key",
        "unreadable-ca",
    ],
)
def test_a_tls_misconfiguration_is_one_line_and_a_non_zero_exit(cluster, tmp_path, case):
    certs = Certs(tmp_path / "certs")
    env, key = _bad_settings(certs, tmp_path)[case]
    done = _start(cluster, **env)
    assert done.returncode != 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("configuration error: ") and key in lines[0], lines
    assert "Traceback" not in done.stderr


def test_the_client_library_takes_dispatcher_ca_file_from_the_environment(tls, monkeypatch):
    monkeypatch.setenv("DISPATCHER_CA_FILE", str(tls.certs.ca_file))
    with taskqueue.Client(tls.url, "") as client:  # url and token given: CA from the env
        assert isinstance(client.stats(), dict)


def test_calls_reuse_one_tls_connection(tls):
    """Keep-alive over TLS: one handshake per connection, not per call (a TLS 1.3 session
    ticket arriving after a reply must not make the idle connection look closed)."""
    with Client(tls.url, ca_file=str(tls.certs.ca_file)) as client:
        client.call("GET", "/health")
        first = client._conn.sock
        assert first.version() in ("TLSv1.2", "TLSv1.3"), first.version()
        for _ in range(20):
            client.call("GET", "/stats")
            assert client._conn.sock is first, "a call opened a new connection"
