"""The dashboard's Queues page through Flask's test client: what it shows, its POSTs
under the CSRF and origin rules of every dashboard form, and bad limits refused as a
400 page naming the field, with nothing changed."""

from __future__ import annotations

import html

from dispatcher.storage import NewTask
from tests.api import test_dashboard_http as dashboard
from tests.api.test_dashboard_http import ORIGIN, TOKEN, csrf_of, logged_in, storage_of

make_app = dashboard.make_app  # the fixture


def settings_of(app, name: str) -> dict:
    [queue] = [q for q in storage_of(app).queues(now=0) if q["name"] == name]
    return queue


def test_the_page_lists_queues_with_counts_and_controls(make_app):
    app = make_app()
    storage_of(app).submit([NewTask("sleep", {"duration": 1}, queue="mail")] * 3, now=1.0)
    storage_of(app).set_queue("idle", {"paused": True, "max_in_flight": 4}, now=1.0)
    page = app.test_client().get("/dashboard/queues").text
    assert 'data-queue="mail"' in page and 'data-queue="idle"' in page
    assert 'class="badge paused"' in page and 'value="4"' in page
    assert ">Queues</a>" in page  # the nav link


def test_pause_resume_and_limits_need_the_form_token_and_origin(make_app):
    app = make_app(api_token=TOKEN)
    client = logged_in(app)
    csrf = csrf_of(client.get("/dashboard/queues").text)
    path = "/dashboard/queues/team/mail"  # a name with a slash is one queue
    stale = client.post(path, data={"csrf": "0" * 32, "action": "pause"}, headers=ORIGIN)
    assert stale.status_code == 403
    cross = client.post(
        path, data={"csrf": csrf, "action": "pause"}, headers={"Origin": "https://evil.example"}
    )
    assert cross.status_code == 403
    assert storage_of(app).queues(now=0) == []  # nothing happened
    done = client.post(path, data={"csrf": csrf, "action": "pause"}, headers=ORIGIN)
    assert done.status_code == 302 and "done=pause" in done.location
    assert settings_of(app, "team/mail")["paused"] is True
    limits = {"csrf": csrf, "action": "limits", "max_in_flight": "3", "rate_count": "5"}
    done = client.post(path, data={**limits, "rate_seconds": "0.5"}, headers=ORIGIN)
    assert done.status_code == 302
    got = settings_of(app, "team/mail")
    assert (got["max_in_flight"], got["rate_limit"]) == (3, {"count": 5, "per_seconds": 0.5})
    assert "limits saved" in client.get(done.location).text
    cleared = {"csrf": csrf, "action": "limits", "max_in_flight": "", "rate_count": ""}
    client.post(path, data={**cleared, "rate_seconds": ""}, headers=ORIGIN)
    got = settings_of(app, "team/mail")
    assert (got["max_in_flight"], got["rate_limit"], got["paused"]) == (None, None, True)


def test_bad_limits_are_a_400_page_naming_the_field(make_app):
    app = make_app()
    client = app.test_client()
    storage_of(app).set_queue("mail", {"max_in_flight": 2}, now=1.0)
    for form, words in (
        ({"max_in_flight": "0"}, "'max_in_flight' must be between 1 and"),
        ({"max_in_flight": "two"}, "'max_in_flight' must be a whole number"),
        ({"rate_count": "5"}, "'per_seconds' must be a number"),
        ({"rate_count": "5", "rate_seconds": "-1"}, "'per_seconds' must be more than 0"),
    ):
        answer = client.post(
            "/dashboard/queues/mail", data={"action": "limits", **form}, headers=ORIGIN
        )
        text = html.unescape(answer.text)
        assert answer.status_code == 400 and words in text, (form, text[-600:])
        assert settings_of(app, "mail")["max_in_flight"] == 2
    answer = client.post("/dashboard/queues/mail", data={"action": "drop"}, headers=ORIGIN)
    assert answer.status_code == 400
