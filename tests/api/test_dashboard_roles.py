"""The dashboard with tokens per role, through Flask's test client on a real SQLite file:
any token logs in; a non-admin sees every page without the buttons that change
something, and its POSTs are refused (403 page) and change nothing; the header names
who is logged in; a change to the tokens file ends the sessions; the cookie is Secure
under TLS."""

from __future__ import annotations

import re

import pytest

from common.config import Config
from dispatcher.app import create_app
from dispatcher.storage import NewTask
from dispatcher.tokens import RECHECK_S
from tests.api.test_api import Clock

ORIGIN = {"Origin": "http://localhost"}
TOKENS = {"admin": "adm-0123456789abc", "read": "rd-0123456789abcd", "worker": "wk-0123456789abcd"}


@pytest.fixture
def setup(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("".join(f"{role} {role}-person {t}\n" for role, t in TOKENS.items()))
    clock = Clock()
    app = create_app(
        Config(database_url=f"sqlite:///{tmp_path}/tasks.db", api_tokens_file=str(path)),
        clock=clock,
        background=False,
    )
    yield app, path, clock
    app.extensions["taskqueue"].storage.close()


def log_in(app, role: str):
    client = app.test_client()
    answer = client.post("/login", data={"token": TOKENS[role], "next": "/"}, headers=ORIGIN)
    assert answer.status_code == 302, answer.get_data(as_text=True)
    return client


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]*)"', html).group(1)


def seeded(app) -> str:
    storage = app.extensions["taskqueue"].storage
    [(task_id, _)] = storage.submit(
        [NewTask("sleep", {"duration": 1})], now=app.extensions["taskqueue"].clock()
    )
    return task_id


@pytest.mark.parametrize("role", ["read", "worker"])
def test_a_non_admin_sees_every_page_without_buttons_and_cannot_post(setup, role):
    app, _, _ = setup
    task_id = seeded(app)
    client = log_in(app, role)
    for page in ("/", "/dashboard/tasks", f"/dashboard/task/{task_id}", "/dashboard/workers",
                 "/dashboard/queues", "/dashboard/schedules"):  # fmt: skip
        answer = client.get(page)
        assert answer.status_code == 200, page
        html = answer.get_data(as_text=True)
        assert f"{role}-person · {role}" in html, page
        assert 'id="cancel"' not in html and "Cancel every pending task" not in html, page
        assert 'class="pause danger"' not in html and 'class="save"' not in html, page
    queues = client.get("/dashboard/queues").get_data(as_text=True)
    assert "max in flight — · rate —" in queues  # the limits, read-only
    assert 'href="/dashboard/audit"' not in queues  # the Audit page is an admin's
    audit_page = client.get("/dashboard/audit")
    assert audit_page.status_code == 403
    assert f"role {role} may not GET /dashboard/audit" in audit_page.get_data(as_text=True)
    csrf = csrf_of(client.get("/dashboard/tasks").get_data(as_text=True))  # the logout form's
    for path, form in (
        (f"/dashboard/task/{task_id}/cancel", {}),
        ("/dashboard/tasks/bulk", {"action": "cancel", "confirm": "yes"}),
        ("/dashboard/queues/default", {"action": "pause"}),
    ):
        answer = client.post(path, data={"csrf": csrf, **form}, headers=ORIGIN)
        assert answer.status_code == 403, path
        assert f"role {role} may not POST" in answer.get_data(as_text=True)
    storage = app.extensions["taskqueue"].storage
    assert storage.get(task_id)["status"] == "pending"
    assert not [q for q in storage.queues(now=0) if q["paused"]]
    assert client.post("/logout", data={"csrf": csrf}, headers=ORIGIN).status_code == 302
    assert client.get("/dashboard/tasks").status_code == 302  # logged out: to the login


def test_an_admin_sees_the_buttons_and_its_post_is_taken(setup):
    app, _, _ = setup
    task_id = seeded(app)
    client = log_in(app, "admin")
    html = client.get(f"/dashboard/task/{task_id}").get_data(as_text=True)
    assert 'id="cancel"' in html and "admin-person · admin" in html
    assert 'href="/dashboard/audit"' in html
    answer = client.post(
        f"/dashboard/task/{task_id}/cancel", data={"csrf": csrf_of(html)}, headers=ORIGIN
    )
    assert answer.status_code == 302
    assert app.extensions["taskqueue"].storage.get(task_id)["status"] == "cancelled"
    audit_page = client.get("/dashboard/audit").get_data(as_text=True)
    assert "admin-person" in audit_page and "task.cancel" in audit_page


def test_a_wrong_token_does_not_log_in(setup):
    app, _, _ = setup
    client = app.test_client()
    answer = client.post("/login", data={"token": "nope", "next": "/"}, headers=ORIGIN)
    assert answer.status_code == 401
    assert client.get("/").status_code == 302


def test_a_change_to_the_tokens_ends_every_session_and_a_removed_token_cannot_log_in(setup):
    app, path, clock = setup
    reader = log_in(app, "read")
    admin = log_in(app, "admin")
    assert reader.get("/dashboard/workers").status_code == 200
    path.write_text(f"admin admin-person {TOKENS['admin']}\n")  # read and worker removed
    clock.now += RECHECK_S
    assert reader.get("/dashboard/workers").status_code == 302  # to the login
    assert admin.get("/dashboard/workers").status_code == 302  # the key changed: log in again
    again = app.test_client()
    refused = again.post("/login", data={"token": TOKENS["read"], "next": "/"}, headers=ORIGIN)
    assert refused.status_code == 401
    assert log_in(app, "admin").get("/dashboard/workers").status_code == 200
    # a session gone stale can still log out (origin checked, no form token to check)
    assert reader.post("/logout", headers=ORIGIN).status_code == 302
    assert reader.post("/logout", headers={"Origin": "http://evil.example"}).status_code == 403


def test_the_login_page_names_nobody_and_links_no_audit(setup):
    app, _, _ = setup
    page = app.test_client().get("/login").get_data(as_text=True)
    assert "anonymous" not in page and 'href="/dashboard/audit"' not in page
    assert "Log out" not in page


def test_a_session_is_good_across_processes_of_one_database_and_nowhere_else(setup, tmp_path):
    """The cookie's key is the database's shared secret keyed with the tokens: another
    server process on the same database takes the cookie; a dispatcher with the same
    tokens file on another database does not (the file alone cannot make a cookie)."""
    app, path, clock = setup
    reader = log_in(app, "read")
    cookie = reader.get_cookie("taskqueue_session").value
    url = app.extensions["taskqueue"].config.database_url

    def other(database_url: str):
        config = Config(database_url=database_url, api_tokens_file=str(path))
        return create_app(config, clock=clock, background=False)

    same, elsewhere = other(url), other(f"sqlite:///{tmp_path}/elsewhere.db")
    try:
        for peer, expected in ((same, 200), (elsewhere, 302)):
            client = peer.test_client()
            client.set_cookie("taskqueue_session", cookie)
            assert client.get("/dashboard/workers").status_code == expected
    finally:
        for peer in (same, elsewhere):
            peer.extensions["taskqueue"].storage.close()


def test_the_session_cookie_is_secure_under_tls_only(setup, tmp_path):
    app, path, _ = setup
    plain = app.test_client().post(
        "/login", data={"token": TOKENS["read"], "next": "/"}, headers=ORIGIN
    )
    assert "Secure" not in plain.headers["Set-Cookie"]
    # the app factory reads only the setting: no certificate is loaded by create_app
    tls = create_app(
        Config(
            database_url=f"sqlite:///{tmp_path}/tls.db",
            api_tokens_file=str(path),
            tls_cert_file="cert.pem",
            tls_key_file="key.pem",
        ),
        clock=Clock(),
        background=False,
    )
    try:
        answer = tls.test_client().post(
            "/login", data={"token": TOKENS["read"], "next": "/"}, headers=ORIGIN
        )
        assert "; Secure" in answer.headers["Set-Cookie"]
        assert "HttpOnly" in answer.headers["Set-Cookie"]
    finally:
        tls.extensions["taskqueue"].storage.close()
