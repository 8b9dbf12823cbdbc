"""X-Request-ID on every dispatcher response (Flask's test client): the client's when
valid, else a new one; also on errors, 401s included."""

from __future__ import annotations

import pytest

from common import logs
from common.config import Config
from dispatcher.app import create_app


@pytest.fixture
def client(tmp_path):
    config = Config.from_env({"DATABASE_URL": f"sqlite:///{tmp_path}/tasks.db"})
    return create_app(config, background=False).test_client()


def test_a_valid_id_is_echoed(client):
    r = client.get("/health", headers={"X-Request-ID": "abc-123_x.y"})
    assert r.headers["X-Request-ID"] == "abc-123_x.y"


@pytest.mark.parametrize("bad", ["", "has space", "x" * 129, "a/b"])
def test_an_invalid_id_is_replaced(client, bad):
    r = client.get("/health", headers={"X-Request-ID": bad})
    rid = r.headers["X-Request-ID"]
    assert rid != bad and logs.valid_request_id(rid) and len(rid) == 32


def test_without_an_id_each_response_gets_its_own(client):
    a = client.get("/health").headers["X-Request-ID"]
    b = client.get("/health").headers["X-Request-ID"]
    assert a != b and logs.valid_request_id(a) and logs.valid_request_id(b)


def test_errors_carry_it_too(client):
    assert client.get("/nope", headers={"X-Request-ID": "r404"}).headers["X-Request-ID"] == "r404"
    r = client.post("/submit-task", data="{", headers={"X-Request-ID": "r400"})
    assert r.status_code == 400 and r.headers["X-Request-ID"] == "r400"
    r = client.get("/submit-task", headers={"X-Request-ID": "r405"})
    assert r.status_code == 405 and r.headers["X-Request-ID"] == "r405"


def test_a_401_carries_it(tmp_path):
    config = Config.from_env({"DATABASE_URL": f"sqlite:///{tmp_path}/t.db", "API_TOKEN": "s"})
    client = create_app(config, background=False).test_client()
    r = client.get("/stats", headers={"X-Request-ID": "r401"})
    assert r.status_code == 401 and r.headers["X-Request-ID"] == "r401"
