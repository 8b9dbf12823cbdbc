"""The dashboard's Schedules page over HTTP: what it shows, and its Pause and Resume
POSTs held to the dashboard's rules (same origin, the session's form token)."""

from __future__ import annotations

from tests.api.test_dashboard_http import (  # noqa: F401 (make_app: a fixture)
    ORIGIN,
    TOKEN,
    csrf_of,
    logged_in,
    make_app,
    storage_of,
)

SLEEP = {"type": "sleep", "payload": {"duration": 1}}
DEFINITION = {"cron": None, "every": 60, "timezone": "UTC", "catch_up": "one", "task": SLEEP}


def test_pause_and_resume_need_this_origin_and_the_form_token(make_app):  # noqa: F811
    app = make_app(api_token=TOKEN)
    storage = storage_of(app)
    storage.create_schedule("tick", DEFINITION, True, 60.0, now=1.0)
    client = logged_in(app)
    page = client.get("/dashboard/schedules")
    assert page.status_code == 200 and "tick" in page.text and "every 60 s" in page.text
    csrf = csrf_of(page.text)
    path = "/dashboard/schedules/tick/pause"
    cross = client.post(path, data={"csrf": csrf}, headers={"Origin": "https://evil.example"})
    stale = client.post(path, data={"csrf": "0" * 32}, headers=ORIGIN)
    assert (cross.status_code, stale.status_code) == (403, 403)
    assert storage.get_schedule("tick")["enabled"] is True  # nothing happened
    done = client.post(path, data={"csrf": csrf}, headers=ORIGIN)
    assert done.status_code == 302 and "done=pause" in done.location
    assert storage.get_schedule("tick")["enabled"] is False
    assert "schedule tick paused" in client.get(done.location).text
    resumed = client.post("/dashboard/schedules/tick/resume", data={"csrf": csrf}, headers=ORIGIN)
    assert resumed.status_code == 302 and storage.get_schedule("tick")["enabled"] is True


def test_unknown_schedules_and_actions_are_404_pages(make_app):  # noqa: F811
    app = make_app()
    client = app.test_client()
    assert "No schedules yet" in client.get("/dashboard/schedules").text
    missing = client.post("/dashboard/schedules/nope/pause", headers=ORIGIN)
    assert missing.status_code == 404 and missing.mimetype == "text/html"
    storage_of(app).create_schedule("tick", DEFINITION, True, 60.0, now=1.0)
    assert client.post("/dashboard/schedules/tick/explode", headers=ORIGIN).status_code == 404
    # a link cannot make the page say something: only a schedule that exists is named
    assert "paused" not in client.get("/dashboard/schedules?done=pause&name=<b>x</b>").text
