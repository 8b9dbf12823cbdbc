"""The OpenAPI 3.1 description of the HTTP API, served at GET /openapi.json.

Its schemas are the Structs of bodies.py, written out by msgspec: the declarations that
parse.py reads request bodies with. This module adds the paths (what each operation takes
and answers), from the running configuration (its limits, whether a token is needed) and
the task types the registry knows. tests/api/test_openapi.py keeps it true: every route is
described, and real responses match the schemas.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from common.config import Config
from tasks import TaskType

from . import bodies as b
from .parse import MAX_OFFSET
from .storage import STATUSES

OPENAPI_VERSION = "3.1.0"
JSON = "application/json"
REF = "#/components/schemas/{name}"

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


def _ref(kind: type) -> dict:
    return {"$ref": REF.format(name=kind.__name__)}


def _reply(description: str, schema: dict | type) -> dict:
    schema = _ref(schema) if isinstance(schema, type) else schema
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description: str) -> dict:
    return _reply(description, b.Error)


def _shared(name: str) -> dict:
    return {"$ref": f"#/components/responses/{name}"}


def _query(name: str, schema: dict, description: str) -> dict:
    """A query parameter; an empty value (`?limit=`) means the same as leaving it out."""
    return {
        "name": name,
        "in": "query",
        "allowEmptyValue": True,
        "schema": schema,
        "description": description,
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


NAME_PARAM = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "the schedule's name",
}
NO_SCHEDULE = _error("no schedule of that name")
EXAMPLE_SCHEDULE = {
    "name": "nightly-report",
    "cron": "0 3 * * *",
    "timezone": "Europe/Berlin",
    "task": {"type": "compute", "payload": {"operation": "double", "value": 21}},
}
TASK_ID_PARAM = {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}
UNAVAILABLE = _shared("Unavailable")
NOT_FOUND = _shared("NotFound")
BUSY = _error("this dispatcher process holds all the waiting requests it may; see Retry-After")
QUEUE_FULL = _error(
    "the queue holds MAX_PENDING_TASKS pending tasks (or this submission would pass it): "
    "nothing stored; see Retry-After"
)
TAKEN_OVER = _error("this worker instance was taken over by a newer one")


def _post(
    summary: str,
    body: type,
    answers: dict,
    errors: dict | None = None,
    examples: dict | None = None,
    links: dict | None = None,
    method: str = "post",
    parameters: list | None = None,
) -> dict:
    """A POST (or `method`) with a JSON body; every one may answer 400, 408, 413, 503."""
    for answer in answers.values() if links else ():
        answer["links"] = links
    media: dict[str, Any] = {"schema": _ref(body)}
    if examples:
        media["examples"] = {name: {"value": value} for name, value in examples.items()}
    return {
        method: {
            "summary": summary,
            **({"parameters": parameters} if parameters else {}),
            "requestBody": {
                "required": True,
                "description": "a JSON object (read as JSON whatever the Content-Type says)",
                "content": {JSON: media},
            },
            "responses": {
                **answers,
                "400": _shared("BadRequest"),
                **(errors or {}),
                "408": _error("the body did not arrive within DISPATCHER_READ_TIMEOUT"),
                "413": _shared("TooLarge"),
                "503": UNAVAILABLE,
            },
        }
    }


def _operation(method: str, summary: str, responses: dict, parameters=(), **more) -> dict:
    """An operation without a body; every one may answer 503."""
    operation = {"summary": summary, **more, "responses": {**responses, "503": UNAVAILABLE}}
    if parameters:
        operation["parameters"] = list(parameters)
    return {method: operation}


def _operations(config: Config, requests: b.Requests) -> dict:
    """path -> method -> operation; 401 and security are added in `document`."""
    batch = {"type": "integer", "minimum": 1, "maximum": config.max_batch}
    answers = {"type": "array", "items": {"oneOf": [_ref(b.TaskStatus), _ref(b.Refusal)]}}
    return {
        "/submit-task": _post(
            "Store one task",
            requests.new_task,
            {
                "201": _reply("stored, pending", b.Submitted),
                "200": _reply(
                    "the idempotency_key was used before: the first task, nothing stored",
                    b.TaskStatus,
                ),
            },
            {"429": QUEUE_FULL},
            examples=EXAMPLE_TASKS,
            links=_task_links("$response.body#/task_id"),
        ),
        "/submit-tasks": _post(
            "Store many tasks, all or nothing",
            requests.new_tasks,
            {"201": _reply("stored; ids in the order given", b.TaskIds)},
            {"429": QUEUE_FULL},
            examples={"two": {"tasks": [EXAMPLE_TASKS["primes"], EXAMPLE_TASKS["sleep"]]}},
            links=_task_links("$response.body#/task_ids/0"),
        ),
        "/get-task": _post(
            "Claim ready tasks under a lease (long poll with wait)",
            requests.claim,
            {
                "200": _reply(
                    "the claimed tasks; empty when nothing was ready within wait", b.Claimed
                )
            },
            {"409": TAKEN_OVER, "429": BUSY},
        ),
        "/submit-result": _post(
            "Report one result",
            b.Result,
            {"200": _reply("the task's status after this result", b.TaskStatus)},
            {
                "404": NOT_FOUND,
                "409": _error("refused: another lease finished the task, or a foreign token"),
            },
        ),
        "/submit-results": _post(
            "Report many results, each judged alone",
            requests.results,
            {
                "200": _reply(
                    "one answer per item, in order",
                    {
                        "type": "object",
                        "properties": {
                            "results": answers,
                            "tasks": {
                                "description": "with a claim: the tasks it claimed",
                                "type": "array",
                                "items": _ref(b.ClaimedTask),
                            },
                            "claim_error": {
                                "description": "with a claim it refused (the results stand)",
                                "type": "object",
                                "properties": {
                                    "error": {"type": "string"},
                                    "code": {"type": "integer"},
                                },
                                "required": ["error", "code"],
                            },
                        },
                        "required": ["results"],
                        "additionalProperties": False,
                    },
                )
            },
        ),
        "/release": _post(
            "Give claimed tasks back unfinished",
            requests.release,
            {"200": _reply("how many were given back", b.Released)},
        ),
        "/heartbeat": _post(
            "I am alive; extend my leases; what should I drop?",
            b.Heartbeat,
            {"200": _reply("leases extended", b.Beat)},
            {"409": TAKEN_OVER},
        ),
        "/task/{task_id}": _operation(
            "get",
            "One task with its result and history; ?wait=S waits for it to finish",
            {
                "200": _reply("the task", b.Task),
                "400": _shared("BadRequest"),
                "404": NOT_FOUND,
                "429": BUSY,
            },
            [
                TASK_ID_PARAM,
                _query(
                    "wait",
                    {"type": "number", "minimum": 0, "maximum": config.max_wait_seconds},
                    "seconds to hold the answer until the task is finished; default 0",
                ),
            ],
        ),
        "/wait-tasks": _post(
            "The finished tasks among many (long poll with wait)",
            requests.wait_tasks,
            {"200": _reply("the finished ones; empty when none finished within wait", b.Finished)},
            {"429": BUSY},
        ),
        "/tasks": _operation(
            "get",
            "List tasks, oldest first",
            {"200": _reply("the tasks, without history", b.TaskList), "400": _shared("BadRequest")},
            [
                _query(
                    "status",
                    {"type": "string", "enum": list(STATUSES)},
                    "only tasks in this status",
                ),
                _query("type", {"type": "string"}, "only tasks of this type"),
                _query("limit", batch, "at most this many tasks; default 100"),
                _query(
                    "offset",
                    {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET},
                    "tasks to skip, for paging; default 0",
                ),
            ],
        ),
        "/task/{task_id}/cancel": _operation(
            "post",
            "Cancel a pending or running task",
            {
                "200": _reply("cancelled", b.Cancelled),
                "404": NOT_FOUND,
                "409": _error("the task is already finished"),
            },
            [TASK_ID_PARAM],
        ),
        "/task/{task_id}/retry": _operation(
            "post",
            "Run a failed or cancelled task again",
            {
                "200": _reply("pending again", b.Submitted),
                "404": NOT_FOUND,
                "409": _error("only failed or cancelled tasks can be retried"),
            },
            [TASK_ID_PARAM],
        ),
        "/queues": _operation(
            "get",
            "Every queue with tasks or settings: its settings and its tasks by status",
            {"200": _reply("the queues, by name", b.Queues)},
        ),
        "/queues/{name}": _post(
            "Pause or resume a queue, or set its max_in_flight and rate_limit",
            b.QueueChanges,
            {"200": _reply("the queue's settings now", b.QueueSettings)},
            examples={
                "pause": {"paused": True},
                "limits": {"max_in_flight": 2, "rate_limit": {"count": 10, "per_seconds": 1}},
                "no limits": {"max_in_flight": None, "rate_limit": None},
            },
            method="put",
            parameters=[
                {
                    "name": "name",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "minLength": 1, "maxLength": b.MAX_ID_LENGTH},
                    "description": "the queue (it need not have tasks)",
                }
            ],
        ),
        "/stats": _operation(
            "get",
            "Counts by status, queue and type; workers; throughput",
            {"200": _reply("the counts", b.Stats)},
        ),
        "/workers": _operation(
            "get",
            "Every worker ever seen, sorted by worker_id",
            {"200": _reply("the workers", b.Workers)},
        ),
        "/task-types": _operation(
            "get",
            "Every registered task type: its payload's JSON Schema, defaults and options",
            {"200": _reply("the task types, by name", b.TaskTypes)},
        ),
        "/health": _operation(
            "get",
            "Is the dispatcher up and its database readable (no token needed)",
            {
                "200": _reply(
                    "ok; or degraded: reads work, writes are refused (error says why)", b.Health
                )
            },
            security=[],
        ),
        "/whoami": _operation(
            "get",
            "The name and role of the token sent (a deploy's smoke test)",
            {"200": _reply("who the token is", b.WhoAmI)},
        ),
        "/metrics": _operation(
            "get",
            "Prometheus metrics (text format 0.0.4); docs/API.md lists the names",
            {
                "200": {
                    "description": "counters summed over the server processes, gauges read "
                    "from storage at most once a second",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        ),
        "/schedules": {
            **_post(
                "Create a periodic task (cron or every)",
                b.NewSchedule,
                {"201": _reply("created; next_run_at is its first tick", b.Schedule)},
                {"409": _error("a schedule of that name exists")},
                examples={"cron": EXAMPLE_SCHEDULE},
            ),
            **_operation(
                "get",
                "Every schedule, with its next run, last run and last task",
                {"200": _reply("the schedules, by name", b.ScheduleList)},
            ),
        },
        "/schedules/{name}": {
            **_operation(
                "get",
                "One schedule",
                {"200": _reply("the schedule", b.Schedule), "404": NO_SCHEDULE},
                [NAME_PARAM],
            ),
            "put": {
                **_post(
                    "Change a schedule: the fields given replace its own",
                    b.ScheduleChange,
                    {"200": _reply("the schedule as changed", b.Schedule)},
                    {
                        "404": NO_SCHEDULE,
                        "409": _error("changed by another request meanwhile; read it again"),
                    },
                )["post"],
                "parameters": [NAME_PARAM],
            },
            **_operation(
                "delete",
                "Delete a schedule (its tasks stay)",
                {"200": _reply("deleted", b.Deleted), "404": NO_SCHEDULE},
                [NAME_PARAM],
            ),
        },
        "/audit": _operation(
            "get",
            "The audit trail: changes made by people and scripts, newest first",
            {"200": _reply("a page of audit records", b.AuditList), "400": _shared("BadRequest")},
            [
                _query("limit", batch, "at most this many records; default 100"),
                _query(
                    "offset",
                    {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET},
                    "records to skip, for paging; default 0",
                ),
            ],
        ),
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": _reply("OpenAPI 3.1", {"type": "object"})},
            }
        },
    }


ANSWERS = (
    b.Error,
    b.Submitted,
    b.TaskStatus,
    b.Refusal,
    b.TaskIds,
    b.Claimed,
    b.Released,
    b.Beat,
    b.Task,
    b.Finished,
    b.TaskList,
    b.Cancelled,
    b.Stats,
    b.Workers,
    b.TaskTypes,
    b.Health,
    b.WhoAmI,
    b.Schedule,
    b.ScheduleList,
    b.Deleted,
    b.Queues,
    b.QueueSettings,
    b.AuditList,
)


def _schemas(requests: b.Requests, task_types: list[TaskType]) -> dict:
    """The bodies' schemas; NewTask is a union discriminated by `type`: one variant per
    task type, its payload the type's own schema (a typed task's, from its signature)."""
    payloads = [t.typed.payload_type for t in task_types if t.typed is not None]
    kinds = (
        *requests,
        b.Result,
        b.Heartbeat,
        b.NewSchedule,
        b.ScheduleChange,
        b.QueueChanges,
        *ANSWERS,
        *payloads,
    )
    refs, schemas = msgspec.json.schema_components(kinds, ref_template=REF)
    # msgspec names a component by its Struct, prefixed by module when two share a name
    payload_refs = dict(zip(payloads, refs[len(refs) - len(payloads) :], strict=True))
    schemas = _nullable(schemas)
    common = schemas.pop("NewTask")
    mapping = {}
    for task_type in task_types:
        name = f"NewTask.{task_type.name}"
        payload: dict = {"type": "object", "description": "checked by the type's own validate"}
        required = ["type"]
        if task_type.typed is not None:
            payload = payload_refs[task_type.typed.payload_type]
            if schemas[payload["$ref"].rsplit("/", 1)[1]].get("required"):
                required.append("payload")  # {} would lack a required field
        properties = {**common["properties"], "type": {"const": task_type.name}}
        properties["payload"] = payload
        schemas[name] = {**common, "title": name, "properties": properties, "required": required}
        mapping[task_type.name] = REF.format(name=name)
    schemas["NewTask"] = {
        "title": "NewTask",
        "description": "a task to store; `type` chooses the shape of `payload`",
        "oneOf": [{"$ref": ref} for ref in mapping.values()],
        "discriminator": {"propertyName": "type", "mapping": mapping},
    }
    return schemas


def _nullable(node: Any) -> Any:
    """msgspec writes `X or null` as anyOf; say it the shorter way OpenAPI 3.1 allows
    (`"type": [X, "null"]`, or null among an enum's values)."""
    if isinstance(node, list):
        return [_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _nullable(value) for key, value in node.items()}
    options = node.get("anyOf", ())
    if len(options) == 2 and {"type": "null"} in options:
        [other] = [o for o in options if o != {"type": "null"}]
        rest = {key: value for key, value in node.items() if key != "anyOf"}
        if isinstance(other.get("type"), str):
            return {**other, **rest, "type": [other["type"], "null"]}
        if "enum" in other:
            return {**other, **rest, "enum": [*other["enum"], None]}
    return node


def document(config: Config, task_types: Iterable[TaskType]) -> dict:
    """The OpenAPI document of a dispatcher running with `config`."""
    requests = b.requests(config)
    paths = _operations(config, requests)
    secured = bool(config.api_token or config.api_tokens_file)
    for path, item in paths.items():
        for method, operation in item.items():
            operation["operationId"] = _operation_id(method, path)
            if secured and operation.get("security") != []:
                operation["responses"]["401"] = _shared("Unauthorized")
                operation["responses"]["403"] = _shared("Forbidden")
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
            "schemas": _schemas(requests, sorted(task_types, key=lambda t: t.name)),
            "responses": {
                "BadRequest": _error("invalid input; nothing was stored or changed"),
                "Unauthorized": _error("missing or wrong API token"),
                "Forbidden": _error(
                    "the token's role may not make this call (docs/SECURITY.md), "
                    'e.g. "role worker may not POST /task/<id>/cancel"'
                ),
                "NotFound": _error("unknown task"),
                "TooLarge": _error(f"the body is larger than {config.max_request_bytes} bytes"),
                "Unavailable": _error("the database cannot be used; nothing was changed"),
            },
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Authorization: Bearer <token>, when API_TOKEN or "
                    "API_TOKENS_FILE is set",
                }
            },
        },
    }
    if secured:
        doc["security"] = [{"bearerAuth": []}]
    return doc


def _operation_id(method: str, path: str) -> str:
    words = (
        path.replace("{task_id}", "by id")
        .replace("{name}", "by name")
        .replace(".json", "")
        .strip("/")
    )
    return f"{method} {words}".replace("/", " ").replace("-", " ").title().replace(" ", "")
