"""Tokens per role through Flask's test client on a real SQLite file: every route of the
API called with each role's token, the refused ones 403 with the JSON error that names
role and call, the others not refused; 401 for a missing or unknown token; /health
open; GET /whoami; hashed tokens; API_TOKEN's list beside the file."""

from __future__ import annotations

import hashlib

import pytest

from common.config import Config
from dispatcher.app import create_app
from tests.api.test_api import Clock

TOKENS = {
    "admin": "admin-token-0123456789",
    "submit": "submit-token-0123456789",
    "worker": "worker-token-0123456789",
    "read": "read-token-0123456789",
}
ENV_TOKENS = "env-one-0123456789,env-two-0123456789"

# What the issue grants each role, written out here (not read from dispatcher/access.py)
SUBMIT = {("POST", "/submit-task"), ("POST", "/submit-tasks")}
WORKER = {
    ("POST", "/get-task"),
    ("POST", "/submit-result"),
    ("POST", "/submit-results"),
    ("POST", "/heartbeat"),
    ("POST", "/release"),
}
READ_POST = {("POST", "/wait-tasks")}
ADMIN_ONLY_READS = {"/audit"}


def expected_allowed(role: str, method: str, rule: str) -> bool:
    if role == "admin":
        return True
    if method == "GET":
        return rule not in ADMIN_ONLY_READS
    if (method, rule) in READ_POST:
        return True
    return (method, rule) in {"submit": SUBMIT, "worker": WORKER}.get(role, set())


@pytest.fixture
def app(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(
        "# role name token\n"
        + "".join(
            f"{role} the-{role} {token}\n" for role, token in TOKENS.items() if role != "read"
        )
        + "read the-read sha256:"
        + hashlib.sha256(TOKENS["read"].encode()).hexdigest()
        + "\n"
    )
    config = Config(
        database_url=f"sqlite:///{tmp_path}/tasks.db",
        api_token=ENV_TOKENS,
        api_tokens_file=str(path),
    )
    app = create_app(config, clock=Clock(), background=False)
    yield app
    app.extensions["taskqueue"].storage.close()


def api_routes(app) -> list[tuple[str, str]]:
    """(method, rule) of every API route (not the dashboard's pages)."""
    found = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("dashboard.") or rule.endpoint == "api.health":
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            found.append((method, rule.rule))
    return sorted(found)


def concrete(rule: str) -> str:
    return (
        rule.replace("<task_id>", "0" * 32)
        .replace("<path:name>", "q1")
        .replace("<name>", "nightly")
    )


def shown(rule: str) -> str:
    return rule.replace("<task_id>", "<id>").replace("<path:name>", "<name>")


def call(client, method: str, path: str, token: str | None):
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    body = None if method in ("GET", "DELETE") else {}
    return client.open(path, method=method, headers=headers, json=body)


@pytest.mark.parametrize("role", list(TOKENS))
def test_each_role_may_make_its_calls_and_gets_403_naming_the_call_for_the_others(app, role):
    client = app.test_client()
    routes = api_routes(app)
    assert ("POST", "/task/<task_id>/cancel") in routes and ("GET", "/whoami") in routes
    refused, allowed = [], []
    for method, rule in routes:
        answer = call(client, method, concrete(rule), TOKENS[role])
        if expected_allowed(role, method, rule):
            assert answer.status_code not in (401, 403), (role, method, rule, answer.get_json())
            allowed.append(rule)
        else:
            assert answer.status_code == 403, (role, method, rule, answer.get_data(as_text=True))
            assert answer.get_json() == {"error": f"role {role} may not {method} {shown(rule)}"}
            refused.append(rule)
    assert allowed  # every role may at least read
    assert bool(refused) == (role != "admin")


def test_the_issue_s_example_refusal(app):
    answer = call(app.test_client(), "POST", "/task/" + "0" * 32 + "/cancel", TOKENS["worker"])
    assert answer.status_code == 403
    assert answer.get_json() == {"error": "role worker may not POST /task/<id>/cancel"}


def test_a_refused_call_changes_nothing(app):
    client = app.test_client()
    submitted = call(client, "POST", "/submit-task", TOKENS["submit"])
    assert submitted.status_code == 400  # allowed, and the empty body is refused as such
    task = {"type": "sleep", "payload": {"duration": 0}}
    created = client.post(
        "/submit-task", json=task, headers={"Authorization": f"Bearer {TOKENS['submit']}"}
    )
    task_id = created.get_json()["task_id"]
    for role in ("submit", "worker", "read"):
        answer = call(client, "POST", f"/task/{task_id}/cancel", TOKENS[role])
        assert answer.status_code == 403
    status = client.get(f"/task/{task_id}", headers={"Authorization": f"Bearer {TOKENS['read']}"})
    assert status.get_json()["status"] == "pending"
    paused = client.put(
        "/queues/default",
        json={"paused": True},
        headers={"Authorization": f"Bearer {TOKENS['worker']}"},
    )
    assert paused.status_code == 403
    queues = client.get("/queues", headers={"Authorization": f"Bearer {TOKENS['read']}"})
    assert not [q for q in queues.get_json()["queues"] if q["paused"]]


@pytest.mark.parametrize(
    "header",
    [None, "Bearer ", "Bearer wrong-token", "Basic " + TOKENS["admin"], TOKENS["admin"]],
)
def test_a_missing_or_unknown_token_is_401_and_health_stays_open(app, header):
    client = app.test_client()
    headers = {} if header is None else {"Authorization": header}
    for method, path in (("GET", "/stats"), ("POST", "/submit-task"), ("GET", "/whoami")):
        answer = client.open(path, method=method, headers=headers, json={})
        assert answer.status_code == 401, (method, path)
        assert "missing or wrong API token" in answer.get_json()["error"]
    assert client.get("/health", headers=headers).status_code == 200
    assert client.post("/health", headers=headers).status_code == 405  # open: not a 401


def test_whoami_names_each_token_and_api_token_s_list_are_admins_named_env(app):
    client = app.test_client()
    for role, token in TOKENS.items():
        answer = client.get("/whoami", headers={"Authorization": f"Bearer {token}"})
        assert answer.get_json() == {"name": f"the-{role}", "role": role}
    for token in ENV_TOKENS.split(","):
        answer = client.get("/whoami", headers={"Authorization": f"bearer {token}"})
        assert answer.get_json() == {"name": "env", "role": "admin"}


def test_without_tokens_the_api_is_open_and_everyone_is_an_anonymous_admin(tmp_path):
    app = create_app(
        Config(database_url=f"sqlite:///{tmp_path}/open.db"), clock=Clock(), background=False
    )
    try:
        answer = app.test_client().get("/whoami")
        assert answer.get_json() == {"name": "anonymous", "role": "admin"}
    finally:
        app.extensions["taskqueue"].storage.close()


def test_an_audit_record_names_the_token_that_made_the_change(app):
    client = app.test_client()
    task = {"type": "sleep", "payload": {"duration": 0}}
    as_submit = {"Authorization": f"Bearer {TOKENS['submit']}"}
    task_id = client.post("/submit-task", json=task, headers=as_submit).get_json()["task_id"]
    as_admin = {"Authorization": f"Bearer {TOKENS['admin']}", "X-Request-ID": "ops-1"}
    assert client.post(f"/task/{task_id}/cancel", headers=as_admin).status_code == 200
    refused = client.get("/audit", headers=as_submit)
    assert refused.status_code == 403
    assert refused.get_json() == {"error": "role submit may not GET /audit"}
    [record] = client.get("/audit", headers=as_admin).get_json()["records"]
    assert (record["name"], record["role"], record["action"], record["target"]) == (
        "the-admin",
        "admin",
        "task.cancel",
        f"task {task_id}",
    )
    assert record["request_id"] == "ops-1"
