"""Hostile input against a real dispatcher, a real SQLite file and a real worker.

Every SQL statement is parameterised, so payloads, ids, keys, queue names, worker ids
and filters full of quotes, semicolons, `'; DROP TABLE tasks; --`, NUL bytes, unicode
(emoji, right-to-left, combining marks, lone surrogates inside JSON), backslashes and
1 MB strings are either stored and returned exactly (the same JSON values: types, key
order, every character) or refused with a 4xx JSON error; never a 500. After each test
the tasks table still holds exactly the tasks the test created.

A worker runs `testing_echo` (tests/integration/echo_tasks.py), which returns its payload,
so a payload makes the whole trip (client, dispatcher, database, worker, pool process,
result, database, client) and must come back unchanged. For queue names no worker
setting can hold (commas), the test itself plays the worker over HTTP.
"""

from __future__ import annotations

import http.client
import json
import sqlite3
from contextlib import closing
from typing import Any
from urllib.parse import quote

import pytest
from harness import Cluster, wait_for

pytestmark = pytest.mark.integration

MODULES = "tests.integration.echo_tasks"
LIMIT = 1_048_576  # MAX_REQUEST_BYTES's default, which the cluster keeps
FINISHED = ("completed", "failed", "cancelled")

NASTY = [
    "'",
    '"',
    ";",
    "'; DROP TABLE tasks; --",
    "\"); DELETE FROM tasks WHERE ('1'='1",
    "' OR '1'='1",
    "\x00",
    "before\x00after",
    "\\",
    "ends with a backslash\\",
    "\\\\\\",
    "\\u0000",  # the six characters, not a NUL
    "%00%27%22",
    "_%",
    "🙂👍🏽👨‍👩‍👧",
    "\u202eright-to-left\u202c שלום مرحبا",
    "e\u0301 a\u0308\u0301",  # combining marks
    "\ufeffBOM \u2028\u2029 line separators",
    "tab\tnewline\ncarriage\r",
    "𝕏 astral",
    "",
]
# what ids, names and keys may be: every nasty string but blank ones and those with a NUL
# character (a 400: PostgreSQL text cannot hold one); error messages may hold NUL
NAMES = [s for s in NASTY if s.strip() and "\x00" not in s]
WITH_NUL = [s for s in NASTY if "\x00" in s]


def canon(value: Any) -> str:
    """The JSON value as text that tells apart what == does not (1, 1.0 and True; key order)."""
    return json.dumps(value)


def hostile_payloads() -> list[dict]:
    every = {s: s for s in NASTY}  # each string as a key and as its value
    deep: Any = NASTY[3]
    for _ in range(50):
        deep = [deep, {"'": deep}] if _ % 10 == 0 else [deep]
    return [
        every,
        {"nested": {"list": [*NASTY, {"deeper": NASTY}], "key; --": {"'": '"'}}},
        {
            "int": 7,
            "float": 7.0,
            "true": True,
            "null": None,
            "big": 2**80,
            "negative big": -(3**50),
            "negative zero": -0.0,
            "huge": 1e308,
            "tiny": 5e-324,
            "pi": 3.141592653589793,
        },
        {"lone surrogates": "\ud800 and \udfff", "\udbff": ["\udc00"]},
        {"order": 1, "matters": 2, "a": 3, "Z": 4, "0": 5},
        {"deep": deep},
        {},
    ]


# -- plumbing -------------------------------------------------------------------------


def request(cluster: Cluster, method: str, path: str, body: Any = None, raw: bytes | None = None):
    """One HTTP call on a new connection: (status, parsed JSON body). Any answer but a JSON
    object, and any 5xx, fails the test."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    conn = http.client.HTTPConnection("127.0.0.1", cluster.port, timeout=60)
    try:
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        status, text = response.status, response.read()
    finally:
        conn.close()
    assert status < 500, f"{method} {path[:200]}: {status} {text[:300]!r}\n{cluster.logs()}"
    answer = json.loads(text)
    assert isinstance(answer, dict), f"{method} {path[:200]}: {status} {text[:300]!r}"
    if status >= 400:
        assert isinstance(answer.get("error"), str) and answer["error"], answer
    return status, answer


def task_path(task_id: str, suffix: str = "") -> str:
    return f"/task/{quote(task_id, safe='')}{suffix}"


def submit(cluster: Cluster, task: dict) -> str:
    status, answer = request(cluster, "POST", "/submit-task", task)
    assert status == 201, answer
    return answer["task_id"]


def get(cluster: Cluster, task_id: str, wait: float = 0) -> dict:
    """GET /task/<id>; with `wait`, held until the task finishes or `wait` seconds pass."""
    status, answer = request(cluster, "GET", task_path(task_id, f"?wait={wait}"))
    assert status == 200, answer
    return answer


def wait_finished(cluster: Cluster, task_id: str) -> dict:
    seen: dict = {}

    def finished():
        nonlocal seen
        seen = get(cluster, task_id, wait=5)
        return seen if seen["status"] in FINISHED else None

    return wait_for(finished, 90, lambda: f"task {task_id} not finished: {str(seen)[:500]}")


def count_tasks(cluster: Cluster) -> int:
    """The tasks as /stats counts them, checked against the table itself, whose schema
    must still be whole."""
    _, stats = request(cluster, "GET", "/stats")
    counted = sum(stats["tasks"].values())
    with closing(sqlite3.connect(f"{cluster.db_path.as_uri()}?mode=ro", uri=True)) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
        assert {"tasks", "attempts", "workers"} <= tables, tables
        [(rows,)] = db.execute("SELECT count(*) FROM tasks").fetchall()
    assert counted == rows, f"/stats counts {counted} tasks, the table holds {rows}"
    return rows


def claim(cluster: Cluster, worker_id: str, queue: str) -> list[dict]:
    status, answer = request(
        cluster,
        "POST",
        "/get-task",
        {"worker_id": worker_id, "instance_id": worker_id, "queues": [queue], "max_tasks": 5},
    )
    assert status == 200, answer
    return answer["tasks"]


@pytest.fixture(scope="module")
def echo_cluster(tmp_path_factory):
    """One dispatcher and one worker (queue `default`) that can run `testing_echo`."""
    cluster = Cluster(tmp_path_factory.mktemp("injection"), TASK_MODULES=MODULES)
    try:
        cluster.start_dispatcher()
        cluster.wait_worker_alive(cluster.start_worker("echo-worker"))
        yield cluster
    finally:
        cluster.close()


# -- payloads -------------------------------------------------------------------------


def test_hostile_payloads_come_back_byte_for_byte_stored_and_through_a_worker(echo_cluster):
    cluster = echo_cluster
    before = count_tasks(cluster)
    payloads = hostile_payloads()
    singles = [submit(cluster, {"type": "testing_echo", "payload": p}) for p in payloads]
    status, answer = request(
        cluster,
        "POST",
        "/submit-tasks",
        {"tasks": [{"type": "testing_echo", "payload": p} for p in payloads]},
    )
    assert status == 201, answer
    batch = answer["task_ids"]

    for ids in (singles, batch):
        for task_id, payload in zip(ids, payloads, strict=True):
            assert canon(get(cluster, task_id)["payload"]) == canon(payload)
    for ids in (singles, batch):
        for task_id, payload in zip(ids, payloads, strict=True):
            task = wait_finished(cluster, task_id)
            assert task["status"] == "completed", task
            assert canon(task["result"]) == canon(payload), "the echoed result changed"
            assert canon(task["payload"]) == canon(payload)
    assert count_tasks(cluster) == before + 2 * len(payloads)


def test_a_1_mb_string_round_trips_and_a_body_one_byte_over_the_limit_is_413(echo_cluster):
    cluster = echo_cluster
    before = count_tasks(cluster)
    big = "x" * 1_000_000 + "".join(NASTY)
    task_id = submit(cluster, {"type": "testing_echo", "payload": {"big": big}})
    assert get(cluster, task_id)["payload"]["big"] == big
    task = wait_finished(cluster, task_id)
    assert task["status"] == "completed", {k: str(v)[:200] for k, v in task.items()}
    assert task["result"] == {"big": big}

    head = b'{"type": "testing_echo", "payload": {"s": "'
    tail = b'"}}'
    over = head + b"y" * (LIMIT + 1 - len(head) - len(tail)) + tail
    assert len(over) == LIMIT + 1
    status, answer = request(cluster, "POST", "/submit-task", raw=over)
    assert status == 413, answer
    assert count_tasks(cluster) == before + 1


def test_a_result_too_large_to_deliver_ends_the_task_failed_with_the_reason(echo_cluster):
    cluster = echo_cluster
    before = count_tasks(cluster)
    task_id = submit(
        cluster,
        {"type": "testing_big_result", "payload": {"size": LIMIT + 1}, "max_retries": 0},
    )
    task = wait_finished(cluster, task_id)
    assert task["status"] == "failed", {k: str(v)[:200] for k, v in task.items()}
    assert "too large" in task["error"], task["error"]
    assert task["result"] is None
    assert count_tasks(cluster) == before + 1


# -- names: queues, idempotency keys, worker ids, errors ------------------------------


def test_hostile_queue_names_keys_worker_ids_and_errors_are_kept_exactly(echo_cluster):
    cluster = echo_cluster
    before = count_tasks(cluster)
    worker_id = "'; DROP TABLE workers; --🙂\u202e\\"
    payload = hostile_payloads()[0]
    created = 0
    for i, name in enumerate(NAMES):
        queue = f"q{i} {name}"  # unique per name: the test worker takes only its own task
        key = f"key {name}"
        task_id = submit(
            cluster,
            {"type": "testing_echo", "payload": payload, "queue": queue, "idempotency_key": key},
        )
        created += 1
        status, again = request(
            cluster,
            "POST",
            "/submit-task",
            {"type": "testing_echo", "payload": payload, "queue": queue, "idempotency_key": key},
        )
        assert (status, again["task_id"]) == (200, task_id), "a repeated key made a task"
        assert get(cluster, task_id)["queue"] == queue

        [task] = claim(cluster, worker_id, queue)
        assert task["task_id"] == task_id
        assert canon(task["payload"]) == canon(payload)
        status, beat = request(
            cluster,
            "POST",
            "/heartbeat",
            {"worker_id": worker_id, "instance_id": worker_id, "task_ids": [task_id]},
        )
        assert (status, beat["abandon"]) == (200, []), beat
        result = {"echo": payload, name: [name]}
        status, answer = request(
            cluster,
            "POST",
            "/submit-result",
            {
                "task_id": task_id,
                "worker_id": worker_id,
                "lease_token": task["lease_token"],
                "status": "completed",
                "result": result,
            },
        )
        assert (status, answer["status"]) == (200, "completed"), answer
        stored = get(cluster, task_id)
        assert canon(stored["result"]) == canon(result)
        assert stored["worker_id"] == worker_id
        assert [h["worker_id"] for h in stored["history"]] == [worker_id]

    # a worker-reported failure keeps its error message exactly, NUL characters too
    queue = "fail'; --"
    for name in [*NAMES, *WITH_NUL]:
        task_id = submit(
            cluster, {"type": "testing_echo", "payload": {}, "queue": queue, "max_retries": 0}
        )
        created += 1
        [task] = claim(cluster, worker_id, queue)
        error = f"{name} went wrong: {name}"
        status, answer = request(
            cluster,
            "POST",
            "/submit-results",
            {
                "results": [
                    {
                        "task_id": task_id,
                        "worker_id": worker_id,
                        "lease_token": task["lease_token"],
                        "status": "failed",
                        "error": error,
                    }
                ]
            },
        )
        assert (status, answer["results"]) == (200, [{"task_id": task_id, "status": "failed"}])
        stored = get(cluster, task_id)
        assert (stored["status"], stored["error"]) == ("failed", error)
        assert stored["history"][-1]["error"] == error

    _, listed = request(cluster, "GET", "/workers")
    assert worker_id in [w["worker_id"] for w in listed["workers"]]
    _, stats = request(cluster, "GET", "/stats")
    assert f"q3 {NASTY[3]}" in stats["queues"]
    assert count_tasks(cluster) == before + created


@pytest.mark.parametrize(
    "change",
    [
        {"type": "'; DROP TABLE tasks; --"},  # unknown type
        {"type": "testing_echo\x00"},
        {"type": ""},
        {"queue": ""},
        {"queue": "   "},
        {"queue": "\ud800"},  # a lone surrogate: not text a database column holds
        {"queue": "q" * 201},
        {"queue": "q\x00'; --"},  # a NUL character: PostgreSQL text cannot hold it
        {"idempotency_key": "k\x00"},
        {"idempotency_key": "k" * 201},
        {"idempotency_key": "\udfff'; --"},
        {"idempotency_key": 5},
        {"payload": "'; DROP TABLE tasks; --"},
        {"payload": ["not", "an", "object"]},
        {"priority": "1; DROP TABLE tasks"},
        {"max_retries": "3'"},
        {"delay": "0 OR 1=1"},
        {"'; DROP TABLE tasks; --": 1},  # unknown field
    ],
)
def test_hostile_task_fields_are_refused_with_400_and_store_nothing(echo_cluster, change):
    before = count_tasks(echo_cluster)
    body = {"type": "testing_echo", "payload": {}, **change}
    status, answer = request(echo_cluster, "POST", "/submit-task", body)
    assert status == 400, answer
    status, answer = request(echo_cluster, "POST", "/submit-tasks", {"tasks": [body]})
    assert status == 400, answer
    assert count_tasks(echo_cluster) == before


@pytest.mark.parametrize(
    "raw",
    [
        b"'; DROP TABLE tasks; --",
        b'{"type": "testing_echo", "payload": {}',  # cut short
        b'{"type": "testing_echo", "payload": {"x": NaN}}',
        b'{"type": "testing_echo", "payload": {"x": "\xff\xfe"}}',  # not UTF-8
        b'{"type": "testing_echo", "payload": {"x": "\\ud800"}, "queue": "\\udc00"}',
        b"[" * 100_000 + b"]" * 100_000,  # nested past any recursion limit
        b"\x00" * 1000,
        b"",
    ],
)
def test_bodies_that_are_not_usable_json_are_400(echo_cluster, raw):
    before = count_tasks(echo_cluster)
    for path in ("/submit-task", "/submit-tasks", "/get-task", "/submit-result", "/heartbeat"):
        status, answer = request(echo_cluster, "POST", path, raw=raw)
        assert status == 400, (path, answer)
    assert count_tasks(echo_cluster) == before


# -- ids in URLs and in worker calls --------------------------------------------------

HOSTILE_IDS = [*NAMES, "x" * 201, "x" * 3000, "../../etc/passwd", "1 OR 1=1", "*", "?", "#"]
ENCODED_JUNK = ["%00", "%ff%fe", "%ed%a0%80", "%25%30%30", "%27%3B--", "a%3Fwait%3D1", "%C0%AE"]


def test_hostile_task_ids_in_urls_are_404_never_500(echo_cluster):
    cluster = echo_cluster
    before = count_tasks(cluster)
    paths = [task_path(t) for t in HOSTILE_IDS] + [f"/task/{junk}" for junk in ENCODED_JUNK]
    for path in paths:
        status, answer = request(cluster, "GET", path)
        assert status == 404, (path[:100], answer)
        status, answer = request(cluster, "GET", path + "?wait=0.01")
        assert status == 404, (path[:100], answer)
        for action in ("/cancel", "/retry"):
            status, answer = request(cluster, "POST", path + action)
            assert status == 404, (path[:100] + action, answer)
    for wait in ("'; --", "nan", "inf", "-1", "1e999", "%00"):
        status, answer = request(cluster, "GET", f"/task/abc?wait={quote(wait, safe='%')}")
        assert status == 400, (wait, answer)
    assert count_tasks(cluster) == before


def test_an_id_longer_than_the_servers_request_line_is_refused_not_500(echo_cluster):
    conn = http.client.HTTPConnection("127.0.0.1", echo_cluster.port, timeout=60)
    try:
        conn.request("GET", "/task/" + "x" * 10_000)
        response = conn.getresponse()
        status, text = response.status, response.read()
    finally:
        conn.close()
    # gunicorn refuses a request line over 4094 bytes itself, before the app (414)
    assert 400 <= status < 500, (status, text[:300])


def test_hostile_ids_in_worker_calls_are_404_409_or_abandoned(echo_cluster):
    cluster = echo_cluster
    before = count_tasks(cluster)
    real = submit(cluster, {"type": "testing_echo", "payload": {}, "queue": "ids'; --"})
    [task] = claim(cluster, "ids-worker", "ids'; --")
    bad_ids = [t for t in HOSTILE_IDS if len(t) <= 200]  # longer ones: 400, as below
    results = []
    for bad in bad_ids:
        for task_id, lease in ((bad, task["lease_token"]), (real, bad)):
            results.append(
                {
                    "task_id": task_id,
                    "worker_id": "ids-worker",
                    "lease_token": lease,
                    "status": "completed",
                    "result": bad,
                }
            )
    status, answer = request(cluster, "POST", "/submit-results", {"results": results})
    assert status == 200, answer
    for sent, got in zip(results, answer["results"], strict=True):
        if "\x00" in sent["task_id"] + sent["lease_token"]:
            expected = 400  # no id holds a NUL character
        else:
            expected = 409 if sent["task_id"] == real else 404
        assert got.get("code") == expected, (sent["task_id"], sent["lease_token"], got)
    assert get(cluster, real)["status"] == "in_progress"

    usable = [t for t in bad_ids if "\x00" not in t]
    status, answer = request(
        cluster, "POST", "/heartbeat", {"worker_id": "ids-worker", "task_ids": [real, *usable]}
    )
    assert (status, answer["abandon"]) == (200, usable), answer
    status, answer = request(
        cluster,
        "POST",
        "/release",
        {
            "worker_id": "ids-worker",
            "tasks": [{"task_id": t, "lease_token": task["lease_token"]} for t in usable],
        },
    )
    assert (status, answer["released"]) == (200, 0), answer
    refused = [
        ("/heartbeat", {"worker_id": "ids-worker", "task_ids": [real, *WITH_NUL]}),
        ("/heartbeat", {"worker_id": "ids\x00worker"}),
        ("/get-task", {"worker_id": "ids\x00worker"}),
        ("/get-task", {"worker_id": "ids-worker", "queues": ["ids'; --\x00"]}),
        ("/get-task", {"worker_id": "ids-worker", "instance_id": "\x00"}),
        ("/heartbeat", {"worker_id": "ids-worker", "task_ids": ["x" * 201]}),
        (
            "/release",
            {"worker_id": "ids-worker", "tasks": [{"task_id": "\x00", "lease_token": "x"}]},
        ),
        ("/submit-result", {**results[0], "task_id": "x" * 201}),
        ("/submit-result", {**results[0], "lease_token": "x" * 201}),
        ("/submit-result", {**results[0], "worker_id": "a\x00b"}),
    ]
    for path, body in refused:
        status, answer = request(cluster, "POST", path, body)
        assert status == 400, (path, body, answer)
    assert get(cluster, real)["status"] == "in_progress"
    assert count_tasks(cluster) == before + 1


# -- list filters ---------------------------------------------------------------------


def test_list_filters_with_injection_strings_are_400_or_empty_never_500(echo_cluster):
    cluster = echo_cluster
    submit(cluster, {"type": "testing_echo", "payload": {}, "queue": "filters"})
    before = count_tasks(cluster)
    for value in [*NAMES, "pending' OR '1'='1", "pending; --", "%00"]:  # NUL: below
        q = quote(value, safe="")
        status, answer = request(cluster, "GET", f"/tasks?status={q}")
        assert status == 400, (value, answer)
        for query in (f"type={q}", f"status=pending&type={q}"):
            status, answer = request(cluster, "GET", f"/tasks?{query}")
            assert status == 200 and answer["tasks"] == [], (value, answer)
        for number in ("limit", "offset"):
            status, answer = request(cluster, "GET", f"/tasks?{number}={q}")
            assert status == 400, (number, value, answer)
    for value in WITH_NUL:  # no type holds a NUL character: none found, or a 400
        status, answer = request(cluster, "GET", f"/tasks?type={quote(value, safe='')}")
        assert status == 400 or answer["tasks"] == [], (value, answer)
    status, answer = request(cluster, "GET", "/tasks?type=testing_echo&limit=1000")
    assert status == 200 and answer["tasks"], answer
    assert {t["type"] for t in answer["tasks"]} == {"testing_echo"}
    assert count_tasks(cluster) == before


# -- bodies far over the limit (last: a failure here leaves a worker re-sending) -----


def test_a_body_megabytes_over_the_limit_still_gets_its_413(echo_cluster):
    before = count_tasks(echo_cluster)
    head = b'{"type": "testing_echo", "payload": {"s": "'
    body = head + b"y" * 8_000_000 + b'"}}'
    status, answer = request(echo_cluster, "POST", "/submit-task", raw=body)
    assert status == 413, answer
    assert count_tasks(echo_cluster) == before


def test_a_result_megabytes_too_large_ends_the_task_failed_with_the_reason(echo_cluster):
    """Without the 413 the worker takes the reset for an outage: it caches the result and
    re-sends it every CACHE_RETRY_INTERVAL until CACHE_TTL_SECONDS (blocking the cached
    results behind it), and the task ends 'lease expired' instead of saying why."""
    task_id = submit(
        echo_cluster,
        {"type": "testing_big_result", "payload": {"size": 8_000_000}, "max_retries": 0},
    )
    task = wait_finished(echo_cluster, task_id)
    assert task["status"] == "failed", {k: str(v)[:200] for k, v in task.items()}
    assert "too large" in task["error"], task["error"]
