"""The OpenAPI 3.1 description of the HTTP API, served at GET /openapi.json.

Data, not code: one dict built from the running configuration (its limits, whether a
token is needed) and the task types the registry knows. tests/api/test_openapi.py keeps
it true: every route is described, and real responses match the schemas below.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from common.config import Config

from . import parse
from .storage import STATUSES

OPENAPI_VERSION = "3.1.0"
JSON = "application/json"

# What an attempt in a task's history ended with (null while it runs).
OUTCOMES = (
    "completed",
    "failed",
    "expired",
    "worker dead",
    "worker restarted",
    "released",
    "cancelled",
    "superseded",
)


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict) -> dict:
    """`schema` or null; for an optional field, null means the same as leaving it out."""
    kind = schema["type"]
    return {**schema, "type": [*(kind if isinstance(kind, list) else [kind]), "null"]}


def _object(properties: dict, required: Iterable[str] = (), closed: bool = True) -> dict:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required := list(required):
        schema["required"] = required
    if closed:
        schema["additionalProperties"] = False
    return schema


# At least one character that Python's str.isspace() does not call white space.
NOT_BLANK = (
    "[^\\u0009-\\u000d\\u001c-\\u0020\\u0085\\u00a0\\u1680\\u2000-\\u200a"
    "\\u2028\\u2029\\u202f\\u205f\\u3000]"
)


def _name(description: str, max_len: int = parse.MAX_ID_LENGTH) -> dict:
    """A string the client chooses: not blank, at most `max_len` characters."""
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": max_len,
        "pattern": NOT_BLANK,
        "description": description,
    }


TIME = {"type": "string", "format": "date-time", "description": "ISO 8601, UTC"}
MAYBE_TIME = {**TIME, "type": ["string", "null"]}
COUNT = {"type": "integer", "minimum": 0}
COUNTS = _object(dict.fromkeys(STATUSES, COUNT), required=STATUSES)


TASK_ID = {"type": "string", "description": "opaque: compare it, don't parse it"}


def _schemas(config: Config, task_types: list[str]) -> dict:
    task_id = TASK_ID
    status = {"type": "string", "enum": list(STATUSES)}
    task_fields = {
        "task_id": task_id,
        "type": {"type": "string"},
        "queue": {"type": "string"},
        "payload": {"type": "object", "description": "as submitted, defaults filled in"},
        "status": status,
        "result": {"description": "what the task returned (any JSON), null until completed"},
        "error": {"type": ["string", "null"]},
        "attempts": {"type": "integer", "minimum": 0},
        "max_retries": {"type": "integer", "minimum": 0},
        "priority": {"type": "integer"},
        "worker_id": {"type": ["string", "null"]},
        "created_at": TIME,
        "started_at": MAYBE_TIME,
        "finished_at": MAYBE_TIME,
    }
    return {
        "Error": _object(
            {"error": {"type": "string", "minLength": 1, "description": "one clear sentence"}},
            required=["error"],
        ),
        "Status": status,
        "NewTask": _object(
            {
                "type": {
                    "type": "string",
                    "enum": task_types,
                    "description": "a registered task type (built-in or from TASK_MODULES)",
                },
                "payload": {
                    "type": "object",
                    "description": "checked by the task type (see docs/TASKS.md); "
                    f"nested at most {parse.MAX_DEPTH} levels",
                },
                "queue": _nullable(_name('default: "default"')),
                "priority": _nullable(
                    {
                        "type": "integer",
                        "minimum": -parse.MAX_PRIORITY,
                        "maximum": parse.MAX_PRIORITY,
                        "description": "higher runs first; default 0",
                    }
                ),
                "delay": _nullable(
                    {
                        "type": "number",
                        "minimum": 0,
                        "maximum": parse.MAX_DELAY,
                        "description": "seconds before the first claim; default 0",
                    }
                ),
                "max_retries": _nullable(
                    {
                        "type": "integer",
                        "minimum": 0,
                        "maximum": parse.MAX_RETRIES,
                        "description": f"default {config.default_max_retries}",
                    }
                ),
                "timeout": _nullable(
                    {
                        "type": "number",
                        "minimum": parse.MIN_TIMEOUT,
                        "maximum": parse.MAX_TIMEOUT,
                        "description": f"seconds; default {config.default_task_timeout:g}",
                    }
                ),
                "idempotency_key": _nullable(
                    _name("a key used before returns the first task", parse.MAX_KEY_LENGTH)
                ),
            },
            required=["type"],
        ),
        "Submitted": _object(
            {"task_id": task_id, "status": {"type": "string", "const": "pending"}},
            required=["task_id", "status"],
        ),
        "TaskStatus": _object(
            {"task_id": task_id, "status": _ref("Status")}, required=["task_id", "status"]
        ),
        "Attempt": _object(
            {
                "attempt": {"type": "integer", "minimum": 1},
                "worker_id": {"type": "string"},
                "started_at": TIME,
                "finished_at": MAYBE_TIME,
                "outcome": {"type": ["string", "null"], "enum": [*OUTCOMES, None]},
                "error": {"type": ["string", "null"]},
            },
            required=["attempt", "worker_id", "started_at", "finished_at", "outcome", "error"],
        ),
        "TaskSummary": _object(task_fields, required=task_fields),
        "Task": _object(
            {**task_fields, "history": {"type": "array", "items": _ref("Attempt")}},
            required=[*task_fields, "history"],
        ),
        "ClaimedTask": _object(
            {
                "task_id": task_id,
                "type": {"type": "string"},
                "payload": {"type": "object"},
                "attempt": {"type": "integer", "minimum": 1},
                "timeout": {"type": "number", "description": "seconds"},
                "lease_token": {"type": "string"},
                "lease_expires_at": TIME,
            },
            required=[
                "task_id",
                "type",
                "payload",
                "attempt",
                "timeout",
                "lease_token",
                "lease_expires_at",
            ],
        ),
        "Result": _object(
            {
                "task_id": _name("the task"),
                "worker_id": _name("the worker reporting"),
                "lease_token": _name("the token of the claim this result comes from"),
                "status": {"type": "string", "enum": ["completed", "failed"]},
                "result": {
                    "description": "the task's return value: any JSON, "
                    f"nested at most {parse.MAX_DEPTH} levels"
                },
                "error": {
                    "type": ["string", "null"],
                    "description": f"why it failed; cut at {parse.MAX_ERROR_LENGTH} characters",
                },
            },
            required=["task_id", "worker_id", "lease_token", "status"],
            closed=False,
        ),
        "ResultAnswer": {
            "oneOf": [
                _ref("TaskStatus"),
                _object(
                    {
                        "task_id": {
                            "type": ["string", "null"],
                            "description": "null when the item had no string task_id",
                        },
                        "error": {"type": "string", "minLength": 1},
                        "code": {"type": "integer", "enum": [400, 404, 409]},
                    },
                    required=["task_id", "error", "code"],
                ),
            ]
        },
        "Counts": COUNTS,
        "Stats": _object(
            {
                "tasks": _ref("Counts"),
                "workers": _object(
                    {"alive": COUNT, "dead": COUNT, "stopped": COUNT},
                    required=["alive", "dead", "stopped"],
                ),
                "throughput_per_minute": {"type": "integer", "minimum": 0},
                "oldest_pending_age_seconds": {"type": ["number", "null"], "minimum": 0},
                "queues": {"type": "object", "additionalProperties": _ref("Counts")},
                "types": {"type": "object", "additionalProperties": _ref("Counts")},
            },
            required=[
                "tasks",
                "workers",
                "throughput_per_minute",
                "oldest_pending_age_seconds",
                "queues",
                "types",
            ],
        ),
        "Worker": _object(
            {
                "worker_id": {"type": "string"},
                "instance_id": {"type": "string", "description": "empty if none was sent"},
                "status": {"type": "string", "enum": ["alive", "stopping", "stopped", "dead"]},
                "first_seen": TIME,
                "last_heartbeat": TIME,
                "current_tasks": {"type": "array", "items": task_id},
                "queues": {
                    "type": ["array", "null"],
                    "items": {"type": "string"},
                    "description": "the queues of its last claim; null before its first",
                },
                "attempts_completed": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "attempts it ran to completion (not tasks)",
                },
                "attempts_failed": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "attempts it reported failed (a task retried counts each)",
                },
            },
            required=[
                "worker_id",
                "instance_id",
                "status",
                "first_seen",
                "last_heartbeat",
                "current_tasks",
                "queues",
                "attempts_completed",
                "attempts_failed",
            ],
        ),
    }


def _error(description: str) -> dict:
    return {"description": description, "content": {JSON: {"schema": _ref("Error")}}}


def _reply(description: str, schema: dict) -> dict:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _body(schema: dict, examples: dict | None = None) -> dict:
    media: dict[str, Any] = {"schema": schema}
    if examples:
        media["examples"] = {name: {"value": value} for name, value in examples.items()}
    return {
        "required": True,
        "description": "a JSON object (read as JSON whatever the Content-Type says)",
        "content": {JSON: media},
    }


# Tasks of the built-in types that their validation accepts.
EXAMPLE_TASKS = {
    "primes": {"type": "primes", "payload": {"limit": 100000}},
    "compute": {
        "type": "compute",
        "payload": {"operation": "factorial", "value": 30},
        "priority": 5,
        "max_retries": 1,
        "timeout": 10,
        "idempotency_key": "order-42",
    },
    "sleep": {"type": "sleep", "payload": {"duration": 1}, "queue": "manual", "delay": 5},
    "fail": {"type": "fail", "payload": {"error_message": "boom"}, "max_retries": 0},
}


def _task_links(task_id: str) -> dict:
    """Where a new task's id leads (schemathesis follows these in its stateful phase)."""
    return {
        name: {"operationId": operation_id, "parameters": {"task_id": task_id}}
        for name, operation_id in (
            ("GetTask", "GetTaskById"),
            ("CancelTask", "PostTaskByIdCancel"),
            ("RetryTask", "PostTaskByIdRetry"),
        )
    }


def _query(name: str, schema: dict, description: str) -> dict:
    """A query parameter; an empty value (`?limit=`) means the same as leaving it out."""
    return {
        "name": name,
        "in": "query",
        "allowEmptyValue": True,
        "schema": schema,
        "description": description,
    }


TASK_ID_PARAM = {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}


def _operations(config: Config) -> dict:
    """path -> method -> operation; 401 and security are added in `document`."""
    wait_max = config.max_wait_seconds
    batch = config.max_batch
    bad, too_large, unavailable = (
        {"$ref": "#/components/responses/BadRequest"},
        {"$ref": "#/components/responses/TooLarge"},
        {"$ref": "#/components/responses/Unavailable"},
    )
    not_found = {"$ref": "#/components/responses/NotFound"}

    def post(
        summary: str,
        body: dict,
        answers: dict,
        *errors: tuple[str, dict],
        examples: dict | None = None,
        links: dict | None = None,
    ) -> dict:
        if links:
            for answer in answers.values():
                answer["links"] = links
        responses = {
            **answers,
            "400": bad,
            **dict(errors),
            "408": slow,
            "413": too_large,
            "503": unavailable,
        }
        request_body = _body(body, examples)
        return {"post": {"summary": summary, "requestBody": request_body, "responses": responses}}

    slow = _error("the body did not arrive within DISPATCHER_READ_TIMEOUT")
    busy = (
        "429",
        _error("this dispatcher process holds all the waiting requests it may; see Retry-After"),
    )
    worker_id = _name("the worker's name")
    instance_id = _nullable(_name("the worker process's random id"))
    taken_over = ("409", _error("this worker instance was taken over by a newer one"))
    return {
        "/submit-task": post(
            "Store one task",
            _ref("NewTask"),
            {
                "201": _reply("stored, pending", _ref("Submitted")),
                "200": _reply(
                    "the idempotency_key was used before: the first task, nothing stored",
                    _ref("TaskStatus"),
                ),
            },
            examples=EXAMPLE_TASKS,
            links=_task_links("$response.body#/task_id"),
        ),
        "/submit-tasks": post(
            "Store many tasks, all or nothing",
            _object(
                {
                    "tasks": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": batch,
                        "items": _ref("NewTask"),
                    }
                },
                required=["tasks"],
                closed=False,
            ),
            examples={"two": {"tasks": [EXAMPLE_TASKS["primes"], EXAMPLE_TASKS["sleep"]]}},
            links=_task_links("$response.body#/task_ids/0"),
            answers={
                "201": _reply(
                    "stored; ids in the order given",
                    _object(
                        {"task_ids": {"type": "array", "items": {"type": "string"}}},
                        required=["task_ids"],
                    ),
                )
            },
        ),
        "/get-task": post(
            "Claim ready tasks under a lease (long poll with wait)",
            _object(
                {
                    "worker_id": worker_id,
                    "instance_id": instance_id,
                    "queues": _nullable(
                        {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": parse.MAX_QUEUES,
                            "items": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": parse.MAX_ID_LENGTH,
                            },
                            "description": 'in order of preference; default ["default"]',
                        }
                    ),
                    "wait": _nullable(
                        {
                            "type": "number",
                            "minimum": 0,
                            "maximum": wait_max,
                            "description": "seconds to hold the request while nothing is ready",
                        }
                    ),
                    "max_tasks": _nullable({"type": "integer", "minimum": 1, "maximum": batch}),
                },
                required=["worker_id"],
                closed=False,
            ),
            {
                "200": _reply(
                    "the claimed tasks; empty when nothing was ready within wait",
                    _object(
                        {"tasks": {"type": "array", "items": _ref("ClaimedTask")}},
                        required=["tasks"],
                    ),
                )
            },
            taken_over,
            busy,
        ),
        "/submit-result": post(
            "Report one result",
            _ref("Result"),
            {"200": _reply("the task's status after this result", _ref("TaskStatus"))},
            ("404", not_found),
            ("409", _error("refused: another lease finished the task, or a foreign token")),
        ),
        "/submit-results": post(
            "Report many results, each judged alone",
            _object(
                {
                    "results": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": batch,
                        "items": {
                            "description": "a result as for /submit-result (schema Result); "
                            "an item that is not one gets its own answer with code 400",
                        },
                    }
                },
                required=["results"],
                closed=False,
            ),
            {
                "200": _reply(
                    "one answer per item, in order",
                    _object(
                        {"results": {"type": "array", "items": _ref("ResultAnswer")}},
                        required=["results"],
                    ),
                )
            },
        ),
        "/release": post(
            "Give claimed tasks back unfinished",
            _object(
                {
                    "worker_id": worker_id,
                    "tasks": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": batch,
                        "items": _object(
                            {"task_id": _name("the task"), "lease_token": _name("its lease")},
                            required=["task_id", "lease_token"],
                            closed=False,
                        ),
                    },
                },
                required=["worker_id", "tasks"],
                closed=False,
            ),
            {
                "200": _reply(
                    "how many were given back",
                    _object({"released": {"type": "integer", "minimum": 0}}, required=["released"]),
                )
            },
        ),
        "/heartbeat": post(
            "I am alive; extend my leases; what should I drop?",
            _object(
                {
                    "worker_id": worker_id,
                    "instance_id": instance_id,
                    "task_ids": _nullable(
                        {
                            "type": "array",
                            "items": {"type": "string", "maxLength": parse.MAX_ID_LENGTH},
                            "description": "the tasks the worker holds; default: all of them",
                        }
                    ),
                    "state": _nullable(
                        {
                            "type": "string",
                            "enum": ["stopping", "stopped"],
                            "description": "stopping: shutting down, give it no more tasks; "
                            "stopped: gone (shown as stopped, not dead)",
                        }
                    ),
                },
                required=["worker_id"],
                closed=False,
            ),
            {
                "200": _reply(
                    "leases extended",
                    _object(
                        {
                            "worker_id": {"type": "string"},
                            "abandon": {"type": "array", "items": {"type": "string"}},
                            "lease_expires_at": TIME,
                        },
                        required=["worker_id", "abandon", "lease_expires_at"],
                    ),
                )
            },
            taken_over,
        ),
        "/task/{task_id}": {
            "get": {
                "summary": "One task with its result and history; ?wait=S waits for it to finish",
                "parameters": [
                    TASK_ID_PARAM,
                    _query(
                        "wait",
                        {"type": "number", "minimum": 0, "maximum": wait_max},
                        "seconds to hold the answer until the task is finished; default 0",
                    ),
                ],
                "responses": {
                    "200": _reply("the task", _ref("Task")),
                    "400": bad,
                    "404": not_found,
                    "429": busy[1],
                    "503": unavailable,
                },
            }
        },
        "/tasks": {
            "get": {
                "summary": "List tasks, oldest first",
                "parameters": [
                    _query("status", _ref("Status"), "only tasks in this status"),
                    _query("type", {"type": "string"}, "only tasks of this type"),
                    _query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": batch},
                        "at most this many tasks; default 100",
                    ),
                    _query(
                        "offset",
                        {"type": "integer", "minimum": 0, "maximum": parse.MAX_OFFSET},
                        "tasks to skip, for paging; default 0",
                    ),
                ],
                "responses": {
                    "200": _reply(
                        "the tasks, without history",
                        _object(
                            {
                                "tasks": {"type": "array", "items": _ref("TaskSummary")},
                                "limit": {"type": "integer"},
                                "offset": {"type": "integer"},
                            },
                            required=["tasks", "limit", "offset"],
                        ),
                    ),
                    "400": bad,
                    "503": unavailable,
                },
            }
        },
        "/task/{task_id}/cancel": {
            "post": {
                "summary": "Cancel a pending or running task",
                "parameters": [TASK_ID_PARAM],
                "responses": {
                    "200": _reply(
                        "cancelled",
                        _object(
                            {"task_id": TASK_ID, "status": {"const": "cancelled"}},
                            required=["task_id", "status"],
                        ),
                    ),
                    "404": not_found,
                    "409": _error("the task is already finished"),
                    "503": unavailable,
                },
            }
        },
        "/task/{task_id}/retry": {
            "post": {
                "summary": "Run a failed or cancelled task again",
                "parameters": [TASK_ID_PARAM],
                "responses": {
                    "200": _reply("pending again", _ref("Submitted")),
                    "404": not_found,
                    "409": _error("only failed or cancelled tasks can be retried"),
                    "503": unavailable,
                },
            }
        },
        "/stats": {
            "get": {
                "summary": "Counts by status, queue and type; workers; throughput",
                "responses": {"200": _reply("the counts", _ref("Stats")), "503": unavailable},
            }
        },
        "/workers": {
            "get": {
                "summary": "Every worker ever seen, sorted by worker_id",
                "responses": {
                    "200": _reply(
                        "the workers",
                        _object(
                            {"workers": {"type": "array", "items": _ref("Worker")}},
                            required=["workers"],
                        ),
                    ),
                    "503": unavailable,
                },
            }
        },
        "/health": {
            "get": {
                "summary": "Is the dispatcher up and its database readable (no token needed)",
                "security": [],
                "responses": {
                    "200": _reply(
                        "ok; or degraded: reads work, writes are refused (error says why)",
                        _object(
                            {
                                "status": {"type": "string", "enum": ["ok", "degraded"]},
                                "error": {"type": "string"},
                            },
                            required=["status"],
                        ),
                    ),
                    "503": unavailable,
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": _reply("OpenAPI 3.1", {"type": "object"})},
            }
        },
    }


def document(config: Config, task_types: Iterable[str]) -> dict:
    """The OpenAPI document of a dispatcher running with `config`."""
    paths = _operations(config)
    secured = bool(config.api_token)
    for path, item in paths.items():
        for method, operation in item.items():
            operation["operationId"] = _operation_id(method, path)
            if secured and operation.get("security") != []:
                operation["responses"]["401"] = {"$ref": "#/components/responses/Unauthorized"}
    doc: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Task queue dispatcher",
            "version": "1",
            "description": (
                'JSON in and out; every error is {"error": "<one sentence>"}. '
                f"Limits of this dispatcher: MAX_BATCH {config.max_batch}, "
                f"MAX_WAIT_SECONDS {config.max_wait_seconds:g}, "
                f"MAX_REQUEST_BYTES {config.max_request_bytes} (larger bodies: 413). "
                "See docs/API.md."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": _schemas(config, sorted(task_types)),
            "responses": {
                "BadRequest": _error("invalid input; nothing was stored or changed"),
                "Unauthorized": _error("missing or wrong API token"),
                "NotFound": _error("unknown task"),
                "TooLarge": _error(f"the body is larger than {config.max_request_bytes} bytes"),
                "Unavailable": _error("the database cannot be used; nothing was changed"),
            },
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Authorization: Bearer <API_TOKEN>, when API_TOKEN is set",
                }
            },
        },
    }
    if secured:
        doc["security"] = [{"bearerAuth": []}]
    return doc


def _operation_id(method: str, path: str) -> str:
    words = path.replace("{task_id}", "by id").replace(".json", "").strip("/")
    return f"{method} {words}".replace("/", " ").replace("-", " ").title().replace(" ", "")
