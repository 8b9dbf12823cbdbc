"""Typed task types through the HTTP API: GET /task-types, validation messages that name
the field and the rule, and @task's options as the defaults of a type's submissions."""

from __future__ import annotations

import pytest

from common.config import Config
from dispatcher.app import create_app
from tests.api.test_api import claim

MODULE = "tests.api.typed_tasks"


@pytest.fixture
def make_api(tmp_path):
    apps = []

    def make(**settings):
        url = f"sqlite:///{tmp_path}/tasks-{len(apps)}.db"
        apps.append(create_app(Config(database_url=url, **settings), background=False))
        return apps[-1].test_client()

    yield make
    for app in apps:
        app.extensions["taskqueue"].wakeup.stop()
        app.extensions["taskqueue"].storage.close()


@pytest.fixture
def api(make_api):
    return make_api(task_modules=MODULE, primes_max_limit=500)


def test_task_types_lists_every_type_with_schema_defaults_and_description(api):
    listed = {t["name"]: t for t in api.get("/task-types").get_json()["task_types"]}
    assert {"compute", "fail", "http_request", "primes", "sleep", "testing_typed"} <= set(listed)
    typed = listed["testing_typed"]
    assert typed["description"] == "Echo the arguments, with the task's id."
    assert typed["defaults"] == {"word": "hi", "mode": "a", "ratio": 0.5, "tags": []}
    assert typed["options"] == {"queue": "slow", "priority": 7, "timeout": 12.5, "max_retries": 0}
    schema = typed["schema"]
    assert schema["required"] == ["n"]
    assert schema["additionalProperties"] is False
    assert "context" not in schema["properties"]  # the TaskContext is not a payload field
    assert schema["properties"]["n"] == {"type": "integer", "minimum": 1, "maximum": 1000}
    assert schema["properties"]["word"]["maxLength"] == 5
    assert schema["properties"]["mode"]["enum"] == ["a", "b"]
    primes = listed["primes"]
    assert primes["defaults"] == {"start": 2, "algorithm": "sieve"}
    assert primes["description"].startswith("Count the primes")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"n": 1001}, "testing_typed field 'n' must be between 1 and 1000, not 1001"),
        ({"n": "3"}, "testing_typed field 'n' must be an integer, not a string"),
        ({"n": True}, "testing_typed field 'n' must be an integer, not a boolean"),
        ({"n": 501}, "testing_typed field 'n' must be at most 500"),  # from the config
        ({"n": 1, "word": "toolong"}, "'word' must be at most 5 characters long, not 7"),
        ({"n": 1, "mode": "c"}, "testing_typed field 'mode' must be one of a, b, not 'c'"),
        ({"n": 1, "tags": ["a", 2]}, "testing_typed field 'tags[1]' must be a string"),
        ({"n": 1, "tags": ["a"] * 4}, "'tags' must be at most 3 items long, not 4"),
        ({"n": 1, "ratio": "x"}, "testing_typed field 'ratio' must be a number, not a string"),
        ({}, "missing required field 'n' for testing_typed"),
        ({"n": 1, "nope": 2}, "unknown field 'nope' for testing_typed (allowed fields: "),
    ],
)
def test_a_bad_payload_is_400_naming_the_field_and_the_rule(api, payload, message):
    response = api.post("/submit-task", json={"type": "testing_typed", "payload": payload})
    assert response.status_code == 400, response.get_json()
    assert message in response.get_json()["error"]
    assert api.get("/stats").get_json()["tasks"]["pending"] == 0  # nothing stored


def test_the_type_s_options_are_its_submissions_defaults_and_a_submission_overrides_them(api):
    plain = api.post("/submit-task", json={"type": "testing_typed", "payload": {"n": 2}})
    own = api.post(
        "/submit-task",
        json={
            "type": "testing_typed",
            "payload": {"n": 3},
            "queue": "fast",
            "priority": 1,
            "timeout": 3,
            "max_retries": 4,
        },
    )
    plain_id, own_id = plain.get_json()["task_id"], own.get_json()["task_id"]
    stored = api.get(f"/task/{plain_id}").get_json()
    assert (stored["queue"], stored["priority"], stored["max_retries"]) == ("slow", 7, 0)
    assert stored["payload"] == {"n": 2, "word": "hi", "mode": "a", "ratio": 0.5, "tags": []}
    [claimed] = claim(api, queues=["slow"])
    assert (claimed["task_id"], claimed["timeout"]) == (plain_id, 12.5)
    stored = api.get(f"/task/{own_id}").get_json()
    assert (stored["queue"], stored["priority"], stored["max_retries"]) == ("fast", 1, 4)
    [claimed] = claim(api, queues=["fast"])
    assert (claimed["task_id"], claimed["timeout"]) == (own_id, 3)


def test_a_type_without_options_takes_the_dispatcher_s_defaults(make_api):
    api = make_api(default_max_retries=5, default_task_timeout=40)
    sent = api.post("/submit-task", json={"type": "sleep", "payload": {"duration": 0}})
    stored = api.get(f"/task/{sent.get_json()['task_id']}").get_json()
    assert (stored["queue"], stored["priority"], stored["max_retries"]) == ("default", 0, 5)
    [claimed] = claim(api)
    assert claimed["timeout"] == 40


def test_two_types_whose_names_make_the_same_struct_name_both_get_their_schema(make_api):
    import tests.api.typed_twins  # noqa: F401  ("my-twin" and "my_twin")

    doc = make_api().get("/openapi.json").get_json()
    mapping = doc["components"]["schemas"]["NewTask"]["discriminator"]["mapping"]
    refs = set()
    for name in ("my-twin", "my_twin"):
        variant = doc["components"]["schemas"][mapping[name].rsplit("/", 1)[1]]
        refs.add(variant["properties"]["payload"]["$ref"])
    assert len(refs) == 2  # one schema each
