"""GET /openapi.json stays true: every route is described, the document is valid OpenAPI,
and real answers of the dispatcher match the response schemas it documents.

The live, generated counterpart is tests/integration/test_schemathesis.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import jsonschema_rs
import pytest
import schemathesis

import tasks
from common.config import Config
from dispatcher.app import create_app
from dispatcher.scheduler import fire_due

T0 = 1_700_000_000.0
TOKEN = "s3cret"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


@pytest.fixture
def make_app(tmp_path):
    apps = []

    def make(**settings):
        url = f"sqlite:///{tmp_path}/tasks-{len(apps)}.db"
        config = Config(database_url=url, **settings)
        app = create_app(config, clock=lambda: T0, background=False)
        apps.append(app)
        return app

    yield make
    for app in apps:
        context = app.extensions["taskqueue"]
        context.wakeup.stop()
        context.storage.close()


def operations(doc: dict) -> Iterator[tuple[str, str, dict]]:
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield path, method, operation


def served(app, headers=None) -> dict:
    response = app.test_client().get("/openapi.json", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


# -- the document describes the app ---------------------------------------------------


def test_every_route_is_documented_and_every_documented_operation_exists(make_app):
    app = make_app()
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("dashboard."):
            continue  # HTML pages for people (docs/DASHBOARD.md), not the API
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        routes |= {(path, m.lower()) for m in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {(path, method) for path, method, _ in operations(served(app))}
    assert documented == routes


@pytest.mark.parametrize("token", ["", TOKEN], ids=["open", "with-token"])
def test_the_document_is_valid_openapi(make_app, token):
    headers = {"Authorization": f"Bearer {token}"} if token else None
    doc = served(make_app(api_token=token), headers)
    assert doc["openapi"].startswith("3.1")
    schemathesis.openapi.from_dict(doc).validate()  # the OpenAPI 3.1 meta-schema
    # every reference points at something, and every operation names its answers
    text = json.dumps(doc)
    for ref in set(re.findall(r'"\$ref": "#/([^"]+)"', text)):
        node = doc
        for part in ref.split("/"):
            assert part in node, f"dangling $ref #/{ref}"
            node = node[part]
    ids = [operation["operationId"] for _, _, operation in operations(doc)]
    assert len(ids) == len(set(ids))
    for path, method, operation in operations(doc):
        assert any(code.startswith("2") for code in operation["responses"]), (method, path)


def test_request_examples_match_their_schema_and_are_accepted(make_app):
    app = make_app()
    doc = served(app)
    client = app.test_client()
    tried = 0
    for path, method, operation in operations(doc):
        media = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
        for name, example in media.get("examples", {}).items():
            schema = {**media["schema"], "components": doc["components"]}
            value = example["value"]
            errors = [str(e) for e in jsonschema_rs.validator_for(schema).iter_errors(value)]
            assert not errors, (path, name, errors)
            response = client.open(path, method=method.upper(), json=value)
            assert response.status_code in (200, 201), (path, name, response.get_json())
            tried += 1
    assert tried >= 2


def test_every_link_leads_to_a_documented_operation(make_app):
    doc = served(make_app())
    ids = {operation["operationId"] for _, _, operation in operations(doc)}
    links = [
        link
        for _, _, operation in operations(doc)
        for answer in operation["responses"].values()
        for link in answer.get("links", {}).values()
    ]
    assert links
    for link in links:
        assert link["operationId"] in ids, link


def test_limits_come_from_the_running_configuration(make_app):
    doc = served(make_app(max_batch=7, max_wait_seconds=2.5, max_request_bytes=5000))
    post = {path: op for path, method, op in operations(doc) if method == "post"}

    def body(path: str) -> dict:
        return resolve(doc, post[path]["requestBody"]["content"]["application/json"]["schema"])

    assert body("/submit-tasks")["properties"]["tasks"]["maxItems"] == 7
    assert body("/submit-results")["properties"]["results"]["maxItems"] == 7
    assert body("/release")["properties"]["tasks"]["maxItems"] == 7
    claim = body("/get-task")["properties"]
    assert claim["max_tasks"]["maximum"] == 7
    assert claim["wait"]["maximum"] == 2.5
    [wait] = [
        p for p in doc["paths"]["/task/{task_id}"]["get"]["parameters"] if p["name"] == "wait"
    ]
    assert wait["schema"]["maximum"] == 2.5
    assert "5000" in doc["components"]["responses"]["TooLarge"]["description"]
    new_task = doc["components"]["schemas"]["NewTask"]
    assert sorted(new_task["discriminator"]["mapping"]) == tasks.registry.names()


def test_with_a_token_every_operation_but_health_documents_401(make_app):
    doc = served(make_app(api_token=TOKEN), {"Authorization": f"Bearer {TOKEN}"})
    assert doc["security"] == [{"bearerAuth": []}]
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    for path, _, operation in operations(doc):
        if path == "/health":
            assert operation["security"] == []
            assert "401" not in operation["responses"]
        else:
            assert "401" in operation["responses"], path


def test_without_a_token_nothing_documents_401(make_app):
    doc = served(make_app())
    assert "security" not in doc
    assert all("401" not in op["responses"] for _, _, op in operations(doc))


def test_the_document_needs_the_token_like_every_endpoint_but_health(make_app):
    client = make_app(api_token=TOKEN).test_client()
    response = client.get("/openapi.json")
    assert response.status_code == 401
    assert client.get("/health").status_code == 200


# -- real answers match the documented schemas ----------------------------------------


class Checked:
    """A test client whose every answer is checked against the document: its status is
    documented for that operation, and its JSON body matches that status's schema."""

    def __init__(self, app, headers=None):
        self.app = app
        self.client = app.test_client()
        self.headers = headers or {}
        self.doc = served(app, self.headers)
        self.seen: set[tuple[str, str, str]] = set()
        self._routes = [
            (re.compile("^" + re.sub(r"\{\w+\}", "[^/]+", path) + "$"), path)
            for path in self.doc["paths"]
        ]

    def call(self, method: str, url: str, headers=None, **kwargs):
        response = self.client.open(
            url, method=method.upper(), headers={**self.headers, **(headers or {})}, **kwargs
        )
        path = url.split("?")[0]
        [template] = [t for pattern, t in self._routes if pattern.match(path)]
        operation = self.doc["paths"][template][method]
        code = str(response.status_code)
        assert code in operation["responses"], (
            f"{method.upper()} {template} answered {code}, not documented: "
            f"{response.get_data(as_text=True)[:300]}"
        )
        answer = resolve(self.doc, operation["responses"][code])
        if "application/json" not in answer["content"]:  # GET /metrics: Prometheus text
            [media] = answer["content"]
            assert response.mimetype == media, f"{template}: {response.mimetype}"
            self.seen.add((template, method, code))
            return response
        schema = answer["content"]["application/json"]["schema"]
        validator = jsonschema_rs.validator_for(
            {**schema, "components": self.doc["components"]}, validate_formats=True
        )
        body = response.get_json()
        errors = [str(e) for e in validator.iter_errors(body)]
        assert not errors, f"{method.upper()} {template} {code}: {errors}\n{body}"
        self.seen.add((template, method, code))
        return response

    def get(self, url, **kwargs):
        return self.call("get", url, **kwargs)

    def post(self, url, **kwargs):
        return self.call("post", url, **kwargs)

    def put(self, url, **kwargs):
        return self.call("put", url, **kwargs)

    def delete(self, url, **kwargs):
        return self.call("delete", url, **kwargs)


def resolve(doc: dict, node: dict) -> dict:
    while "$ref" in node:
        target = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


@pytest.fixture
def api(make_app) -> Checked:
    return Checked(make_app(api_token=TOKEN), {"Authorization": f"Bearer {TOKEN}"})


def test_answers_of_a_whole_task_life_match_the_document(api):
    body = {"type": "primes", "payload": {"limit": 100}, "idempotency_key": "k1"}
    first = api.post("/submit-task", json=body).get_json()["task_id"]
    assert api.post("/submit-task", json=body).status_code == 200  # the idempotent repeat
    ids = api.post("/submit-tasks", json={"tasks": [{"type": "fail"}] * 3}).get_json()
    second, third, fourth = ids["task_ids"]
    api.get(f"/task/{first}")
    api.get("/tasks?status=pending&limit=2&offset=1")
    worker = {"worker_id": "w1", "instance_id": "i1"}
    claimed = api.post("/get-task", json={**worker, "max_tasks": 3}).get_json()["tasks"]
    leases = {t["task_id"]: t["lease_token"] for t in claimed}
    api.post("/heartbeat", json={**worker, "task_ids": [first, second, "gone"]})
    progress = {first: {"fraction": 0.5, "message": "halfway"}, second: {"fraction": 1}}
    api.post("/heartbeat", json={**worker, "progress": progress})
    assert api.get(f"/task/{first}").get_json()["progress"]["message"] == "halfway"
    assert set(api.get("/workers").get_json()["workers"][0]["progress"]) == {first, second}
    api.get("/tasks?status=in_progress")
    done = {"worker_id": "w1", "status": "completed", "result": {"count": 25}}
    api.post("/submit-result", json={**done, "task_id": first, "lease_token": leases[first]})
    results = [
        {**done, "task_id": second, "lease_token": leases[second]},
        {**done, "task_id": third, "lease_token": "forged"},
        {**done, "task_id": "nope", "lease_token": "x"},
        {"task_id": {"not": "an id"}},
        "not an object",
    ]
    answers = api.post("/submit-results", json={"results": results}).get_json()["results"]
    assert [a.get("code") for a in answers] == [None, 409, 404, 400, 400]
    released = api.post(
        "/release", json={"worker_id": "w1", "tasks": [{"task_id": third, "lease_token": "x"}]}
    )
    assert released.get_json() == {"released": 0}
    api.post(f"/task/{fourth}/cancel")
    api.post(f"/task/{fourth}/retry")
    api.get(f"/task/{first}?wait=0")
    finished = api.post("/wait-tasks", json={"task_ids": [first, second, fourth, "gone"]})
    assert [t["task_id"] for t in finished.get_json()["tasks"]] == [first, second]
    api.get(f"/task/{second}")
    api.get("/tasks")
    api.get("/stats")
    limits = {"max_in_flight": 2, "rate_limit": {"count": 5, "per_seconds": 1.5}}
    assert api.call("put", "/queues/q1", json=limits).get_json()["max_in_flight"] == 2
    api.call("put", "/queues/q1", json={"paused": True, "rate_limit": None})
    assert [q["name"] for q in api.get("/queues").get_json()["queues"]] == ["default", "q1"]
    api.get("/workers")
    api.get("/task-types")
    api.get("/health")
    api.get("/metrics")
    api.get("/openapi.json")
    # periodic tasks: one fired, its task shows the schedule that made it
    every = {"name": "tick", "every": 60, "task": {"type": "primes", "payload": {"limit": 10}}}
    api.post("/schedules", json=every)
    api.put("/schedules/tick", json={"catch_up": "all"})
    context = api.app.extensions["taskqueue"]
    fire_due(context.storage, context.config, context.registry, now=T0 + 120)
    fired = api.get("/schedules/tick").get_json()["last_task_id"]
    assert api.get(f"/task/{fired}").get_json()["schedule"]["name"] == "tick"
    api.get("/schedules")
    api.delete("/schedules/tick")
    assert api.get("/whoami").get_json() == {"name": "env", "role": "admin"}  # API_TOKEN
    # the audit trail of the changes above: cancel, retry, queue settings, schedules
    audited = api.get("/audit?limit=20").get_json()["records"]
    assert [r["action"] for r in audited][:3] == [
        "schedule.delete",
        "schedule.update",
        "schedule.create",
    ]
    assert api.get("/audit?limit=2&offset=3").get_json()["records"][0]["action"] == "queue.update"
    # every documented success answer was seen
    successes = {
        (path, method, code)
        for path, method, op in operations(api.doc)
        for code in op["responses"]
        if code.startswith("2")
    }
    assert successes <= api.seen, successes - api.seen


def test_error_answers_match_the_document(api, make_app):
    task_id = api.post("/submit-task", json={"type": "fail"}).get_json()["task_id"]
    api.post("/submit-task", json={"type": "nope"})  # 400
    api.post("/submit-tasks", json={"tasks": []})  # 400
    api.post("/get-task", json={"worker_id": " "})  # 400
    api.get("/tasks?limit=0")  # 400
    api.post("/wait-tasks", json={"task_ids": []})  # 400
    api.get("/task/x?wait=-1")  # 400
    api.get("/task/nope")  # 404
    api.post("/task/nope/cancel")  # 404
    api.post("/submit-result", json={"task_id": "nope", "worker_id": "w", "lease_token": "x"})
    api.post("/task/nope/retry")  # 404
    api.post(f"/task/{task_id}/retry")  # 409: pending
    api.post(f"/task/{task_id}/cancel")
    api.post(f"/task/{task_id}/cancel")  # 409: cancelled
    api.post("/get-task", json={"worker_id": "w", "instance_id": "old"})
    api.post("/get-task", json={"worker_id": "w", "instance_id": "new"})
    api.post("/heartbeat", json={"worker_id": "w", "instance_id": "old"})  # 409
    api.post("/get-task", json={"worker_id": "w", "instance_id": "old"})  # 409
    api.post("/submit-task", json={"type": "fail", "payload": {"x": "y" * 1_100_000}})  # 413
    api.get("/stats", headers={"Authorization": "Bearer wrong"})  # 401
    api.post("/schedules", json={"name": "s", "every": 0, "task": {"type": "fail"}})  # 400
    api.post("/schedules", json={"name": "s", "every": 5, "task": {"type": "fail"}})
    api.post("/schedules", json={"name": "s", "every": 5, "task": {"type": "fail"}})  # 409
    api.get("/schedules/nope")  # 404
    api.put("/schedules/nope", json={"enabled": False})  # 404
    api.delete("/schedules/nope")  # 404
    api.call("put", "/queues/q1", json={"max_in_flight": 0})  # 400
    api.get("/audit?offset=-1")  # 400
    expected = {
        ("/submit-task", "post", "400"),
        ("/submit-tasks", "post", "400"),
        ("/get-task", "post", "400"),
        ("/tasks", "get", "400"),
        ("/task/{task_id}", "get", "400"),
        ("/task/{task_id}", "get", "404"),
        ("/task/{task_id}/cancel", "post", "404"),
        ("/submit-result", "post", "400"),
        ("/task/{task_id}/retry", "post", "404"),
        ("/task/{task_id}/retry", "post", "409"),
        ("/task/{task_id}/cancel", "post", "409"),
        ("/heartbeat", "post", "409"),
        ("/get-task", "post", "409"),
        ("/submit-task", "post", "413"),
        ("/stats", "get", "401"),
        ("/schedules", "post", "400"),
        ("/schedules", "post", "409"),
        ("/schedules/{name}", "get", "404"),
        ("/schedules/{name}", "put", "404"),
        ("/schedules/{name}", "delete", "404"),
        ("/queues/{name}", "put", "400"),
        ("/audit", "get", "400"),
    }
    assert expected <= api.seen, expected - api.seen


def test_an_unavailable_database_answer_matches_the_document(make_app, tmp_path):
    app = make_app()
    api = Checked(app)
    app.extensions["taskqueue"].storage.close()  # every later query fails
    (tmp_path / "tasks-0.db").unlink()
    (tmp_path / "tasks-0.db").mkdir()  # and cannot reopen the file
    response = api.get("/health")
    assert response.status_code == 503, response.get_data(as_text=True)


def test_a_405_is_not_an_operation_but_is_still_the_error_shape(api):
    response = api.client.delete("/stats", headers=api.headers)
    assert response.status_code == 405
    assert set(response.get_json()) == {"error"}
    assert response.headers["Allow"]
