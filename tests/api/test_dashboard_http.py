"""The dashboard's HTTP rules, through Flask's test client on a real SQLite file: the
login and its cookie, CSRF and origin checks on every POST, the API's token check left
to the API, page headers, bad input as a 4xx page, and what the pages show."""

from __future__ import annotations

import re

import pytest

from common.config import Config
from dispatcher.app import create_app
from dispatcher.storage import NewTask, Result
from tests.api.test_api import Clock

TOKEN = "s3cret-token"
ORIGIN = {"Origin": "http://localhost"}  # the test client's own origin


@pytest.fixture
def make_app(tmp_path):
    made = []

    def make(**settings):
        url = f"sqlite:///{tmp_path}/tasks-{len(made)}.db"
        app = create_app(Config(database_url=url, **settings), clock=Clock(), background=False)
        made.append(app)
        return app

    yield make
    for app in made:
        app.extensions["taskqueue"].storage.close()


def storage_of(app):
    return app.extensions["taskqueue"].storage


def now_of(app) -> float:
    return app.extensions["taskqueue"].clock()


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]*)"', html).group(1)


def logged_in(app):
    client = app.test_client()
    answer = client.post("/login", data={"token": TOKEN, "next": "/"}, headers=ORIGIN)
    assert answer.status_code == 302, answer.text
    return client


def test_without_a_token_every_page_answers_html(make_app):
    app = make_app()
    storage = storage_of(app)
    [(task_id, _)] = storage.submit([NewTask("sleep", {"duration": 1})], now=now_of(app))
    client = app.test_client()
    for path in ["/", "/dashboard/overview", "/dashboard/tasks", "/dashboard/workers"]:
        answer = client.get(path)
        assert answer.status_code == 200, (path, answer.text[:300])
        assert answer.mimetype == "text/html"
        assert answer.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"]
    page = client.get(f"/dashboard/task/{task_id}").text
    assert task_id in page and "&#34;duration&#34;: 1" in page
    with client.get("/dashboard/static/dashboard.js") as script:  # a file: closed after
        assert script.status_code == 200 and "refresh" in script.text


def test_the_api_still_wants_its_token_while_the_dashboard_wants_a_login(make_app):
    client = make_app(api_token=TOKEN).test_client()
    assert client.get("/stats").status_code == 401
    assert client.get("/metrics").status_code == 401
    answer = client.get("/dashboard/tasks?status=failed")
    assert answer.status_code == 302
    assert answer.headers["Location"] == "/login?next=/dashboard/tasks?status%3Dfailed"
    assert client.get("/").status_code == 302
    # the fragment the overview fetches: no page for a stranger either
    assert client.get("/dashboard/overview").status_code == 302
    # a session cookie is not an API token
    client = logged_in(make_app(api_token=TOKEN))
    assert client.get("/dashboard/workers").status_code == 200
    assert client.get("/stats").status_code == 401


def test_a_wrong_token_is_refused_and_the_right_one_sets_a_strict_httponly_cookie(make_app):
    app = make_app(api_token=TOKEN)
    client = app.test_client()
    wrong = client.post("/login", data={"token": TOKEN + "x", "next": "/"}, headers=ORIGIN)
    assert wrong.status_code == 401 and "wrong token" in wrong.text
    assert "Set-Cookie" not in wrong.headers
    right = client.post(
        "/login", data={"token": TOKEN, "next": "/dashboard/workers"}, headers=ORIGIN
    )
    assert (right.status_code, right.headers["Location"]) == (302, "/dashboard/workers")
    cookie = right.headers["Set-Cookie"]
    assert cookie.startswith("taskqueue_session=")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert TOKEN not in cookie
    page = client.get("/dashboard/workers").text
    assert TOKEN not in page
    # a session made with another token (a rotated API_TOKEN) is not one of ours
    other = logged_in(make_app(api_token=TOKEN))
    assert other.get("/").status_code == 200
    rotated = make_app(api_token="new-token").test_client()
    rotated.set_cookie("taskqueue_session", other.get_cookie("taskqueue_session").value)
    assert rotated.get("/").status_code == 302


EVIL_TARGETS = ["https://evil.example/", "//evil.example/x", "/\tt/evil.example", "/\\evil.example"]


def test_login_goes_on_only_to_a_page_of_this_site(make_app):
    client = make_app(api_token=TOKEN).test_client()
    for target in [*EVIL_TARGETS, "/\r\nSet-Cookie: x=1"]:
        answer = client.post("/login", data={"token": TOKEN, "next": target}, headers=ORIGIN)
        assert answer.headers["Location"] == "/", target
    answer = client.post(
        "/login", data={"token": TOKEN, "next": "/dashboard/tasks?q=a"}, headers=ORIGIN
    )
    assert answer.headers["Location"] == "/dashboard/tasks?q=a"
    # without a token /login sends everyone on at once: still only to this site
    open_client = make_app().test_client()
    for target in ["/%09/evil.example", "/%0D/x", "//evil.example"]:
        answer = open_client.get(f"/login?next={target}")
        assert (answer.status_code, answer.headers["Location"]) == (302, "/"), target
    assert open_client.post("/logout", headers=ORIGIN).status_code == 302


def test_a_link_cannot_make_a_page_say_something(make_app):
    app = make_app()
    [(task_id, _)] = storage_of(app).submit([NewTask("sleep", {"duration": 1})], now=1.0)
    client = app.test_client()
    assert "pwned" not in client.get("/dashboard/tasks?notice=pwned&action=x&moved=1").text
    page = client.get(f"/dashboard/task/{task_id}?notice=pwned&done=cancel").text
    assert "pwned" not in page and "task pending" in page


def test_a_post_from_another_site_or_without_the_form_token_is_refused(make_app):
    app = make_app(api_token=TOKEN)
    [(task_id, _)] = storage_of(app).submit([NewTask("sleep", {"duration": 1})], now=1.0)
    client = logged_in(app)
    csrf = csrf_of(client.get(f"/dashboard/task/{task_id}").text)
    path = f"/dashboard/task/{task_id}/cancel"
    cross = client.post(path, data={"csrf": csrf}, headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403 and "cross-site" in cross.text
    no_origin = client.post(path, data={"csrf": csrf})
    assert no_origin.status_code == 403
    stale = client.post(path, data={"csrf": "0" * 32}, headers=ORIGIN)
    assert stale.status_code == 403 and "form token" in stale.text
    assert storage_of(app).get(task_id)["status"] == "pending"  # nothing happened
    done = client.post(path, data={"csrf": csrf}, headers=ORIGIN)
    assert done.status_code == 302
    assert storage_of(app).get(task_id)["status"] == "cancelled"
    # and without a token the origin check still stands
    open_app = make_app()
    [(other, _)] = storage_of(open_app).submit([NewTask("sleep", {"duration": 1})], now=1.0)
    refused = open_app.test_client().post(
        f"/dashboard/task/{other}/cancel", headers={"Origin": "https://evil.example"}
    )
    assert refused.status_code == 403
    assert storage_of(open_app).get(other)["status"] == "pending"


def test_bad_input_is_a_4xx_page_and_changes_nothing(make_app):
    app = make_app()
    client = app.test_client()
    assert client.get("/dashboard/tasks?status=nope").status_code == 400
    answer = client.post("/dashboard/tasks/bulk", data={"action": "delete"}, headers=ORIGIN)
    assert answer.status_code == 400 and answer.mimetype == "text/html"
    mismatch = {"action": "retry", "status": "pending"}
    assert client.post("/dashboard/tasks/bulk", data=mismatch, headers=ORIGIN).status_code == 400
    assert client.get("/dashboard/task/nope").status_code == 404
    assert client.post("/dashboard/task/nope/cancel", headers=ORIGIN).status_code == 404
    assert client.post("/dashboard/task/x/explode", headers=ORIGIN).status_code == 404
    assert client.get("/dashboard/tasks?before=%00%ff&q=%25_%5C").status_code == 200


def test_bulk_cancel_confirms_the_count_then_cancels_only_the_matching_pending(make_app):
    app = make_app()
    storage = storage_of(app)
    ids = [
        task_id
        for task_id, _ in storage.submit(
            [NewTask("sleep", {"duration": 1}, queue=q) for q in ["a", "a", "a", "b"]], now=1.0
        )
    ]
    client = app.test_client()
    form = {"action": "cancel", "queue": "a"}
    confirm = client.post("/dashboard/tasks/bulk", data=form, headers=ORIGIN)
    assert confirm.status_code == 200 and "Cancel 3 pending tasks?" in confirm.text
    assert {storage.get(t)["status"] for t in ids} == {"pending"}  # only asked
    done = client.post("/dashboard/tasks/bulk", data=form | {"confirm": "yes"}, headers=ORIGIN)
    assert done.status_code == 302 and "action=cancel&moved=3" in done.headers["Location"]
    assert "3 pending tasks cancelled" in client.get(done.headers["Location"]).text
    assert [storage.get(t)["status"] for t in ids] == ["cancelled"] * 3 + ["pending"]


def test_the_overview_shows_counts_queues_and_the_last_hours_throughput(make_app):
    app = make_app()
    storage, now = storage_of(app), now_of(app)
    ids = [t for t, _ in storage.submit([NewTask("sleep", {"duration": 1})] * 3, now=now - 600)]
    claimed = storage.claim("w1", "i1", ("default",), 2, now=now - 300, lease_s=600)
    results = [
        Result(claimed[0]["task_id"], claimed[0]["lease_token"], "w1", "completed", result=1),
        Result(claimed[1]["task_id"], claimed[1]["lease_token"], "w1", "failed", error="x"),
    ]
    storage.finish(results, now=now - 30)
    page = app.test_client().get("/").text
    assert re.search(r'id="count-pending">\s*2\s*<', page), page  # the failure retries
    assert re.search(r'id="count-completed">\s*1\s*<', page)
    assert "1 completed · 0 failed" in page  # the retried failure is not a final one
    assert len(ids) == 3


def test_the_task_page_shows_a_running_task_s_progress(make_app):
    app = make_app()
    client = app.test_client()
    task_id = client.post("/submit-task", json={"type": "sleep", "payload": {"duration": 1}}).json[
        "task_id"
    ]
    assert 'id="progress"' not in client.get(f"/dashboard/task/{task_id}").text
    [claimed] = client.post("/get-task", json={"worker_id": "w1"}).json["tasks"]
    beat = {"worker_id": "w1", "progress": {task_id: {"fraction": 0.25, "message": "<b>x</b>"}}}
    assert client.post("/heartbeat", json=beat).status_code == 200, claimed
    page = client.get(f"/dashboard/task/{task_id}").text
    shown = re.search(r'<dd id="progress">(.*?)</dd>', page, re.S)
    assert shown, page[-2000:]
    assert "25 %" in shown[1] and "&lt;b&gt;x&lt;/b&gt;" in shown[1]  # escaped
