"""Unit tests of the task types and the registry (no processes except the RSS test)."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tasks
from common.config import Config
from tasks import (
    InvalidPayload,
    Registry,
    TaskFailed,
    TaskType,
    UnknownTaskType,
    compute,
    load_modules,
    primes,
    registry,
    run_task,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG = Config()


def check(name: str, payload: object, config: Config = CONFIG) -> dict:
    return registry.validate(name, payload, config)


def execute(name: str, payload: dict, config: Config = CONFIG):
    return run_task(name, check(name, payload, config))


def rejects(name: str, payload: object, *words: str, config: Config = CONFIG) -> str:
    """Assert validation fails with InvalidPayload whose message contains all `words`."""
    with pytest.raises(InvalidPayload) as info:
        check(name, payload, config)
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert "\n" not in message
    return message


def naive_primes(start: int, limit: int) -> list[int]:
    return [n for n in range(max(start, 2), limit + 1) if all(n % d for d in range(2, n))]


# -- registry ----------------------------------------------------------------------------


def test_builtin_types_registered():
    builtin = [
        t.name
        for t in registry.types()
        if (t.typed.fn if t.typed else t.run).__module__.startswith("tasks.")
    ]
    assert builtin == ["compute", "fail", "http_request", "primes", "sleep"]  # (+ tests' own)
    assert "primes" in registry
    assert "nope" not in registry
    assert ["primes"] not in registry  # unhashable names are simply unknown


def test_unknown_type_lists_known_types():
    with pytest.raises(UnknownTaskType) as info:
        check("nope", {})
    message = str(info.value)
    assert message.startswith("unknown task type 'nope'; known types: ")
    known = message.partition("known types: ")[2].split(", ")
    assert {"compute", "fail", "http_request", "primes", "sleep"} <= set(known)
    assert known == sorted(known)
    assert isinstance(info.value, InvalidPayload)
    with pytest.raises(UnknownTaskType):
        run_task("nope", {})
    with pytest.raises(UnknownTaskType):
        check(None, {})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("payload", "kind"),
    [([1, 2], "an array"), ("x", "a string"), (None, "null"), (3, "an integer")],
)
def test_payload_must_be_an_object(payload, kind):
    rejects("primes", payload, "payload for primes must be a JSON object", kind)


def test_register_and_duplicate():
    reg = Registry()
    reg.register("echo", lambda p, c: p, lambda p: {"echo": p})
    assert reg.names() == ["echo"]
    assert reg.run("echo", {"a": 1}) == {"echo": {"a": 1}}
    with pytest.raises(ValueError, match="already registered"):
        reg.register("echo", lambda p, c: p, lambda p: p)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("primes", primes.primes.validate, primes.primes.run)
    with pytest.raises(ValueError):
        reg.register("", lambda p, c: p, lambda p: p)


def test_decorator_form():
    reg = Registry()

    @reg.task("add")
    def add(payload: dict) -> dict:
        return {"sum": payload["a"] + payload["b"]}

    def positive(payload: dict, config: Config) -> dict:
        if payload.get("n", 1) <= 0:
            raise InvalidPayload("field 'n' must be positive")
        return {"n": payload.get("n", 1)}

    @reg.task("twice", validate=positive)
    def twice(payload: dict) -> dict:
        return {"result": 2 * payload["n"]}

    assert add({"a": 1, "b": 2}) == {"sum": 3}  # the decorator returns the function
    assert reg.names() == ["add", "twice"]
    assert "add" in reg
    assert reg.validate("add", {"a": 1, "b": 2}, CONFIG) == {"a": 1, "b": 2}
    with pytest.raises(InvalidPayload, match="JSON object"):
        reg.validate("add", [1], CONFIG)
    assert reg.run("add", {"a": 1, "b": 2}) == {"sum": 3}
    assert reg.validate("twice", {}, CONFIG) == {"n": 1}
    with pytest.raises(InvalidPayload, match="'n'"):
        reg.validate("twice", {"n": -1}, CONFIG)
    assert reg.run("twice", {"n": 4}) == {"result": 8}
    with pytest.raises(ValueError, match="already registered"):
        reg.task("add")(add)
    assert isinstance(reg.get("add"), TaskType)


def test_run_task_dispatches_to_registry():
    assert run_task("compute", {"operation": "double", "value": 21})["result"] == 42
    assert run_task is tasks.run_task
    assert run_task.__module__ == "tasks"  # a top-level function: picklable by reference


def test_load_modules(tmp_path, monkeypatch):
    (tmp_path / "extra_tasks_for_test.py").write_text(
        textwrap.dedent(
            """
            from tasks import registry

            @registry.task("extra_echo_for_test")
            def echo(payload):
                return {"echo": payload}
            """
        )
    )
    (tmp_path / "broken_tasks_for_test.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        load_modules(["", " extra_tasks_for_test "])
        assert "extra_echo_for_test" in registry
        assert run_task("extra_echo_for_test", {"x": 1}) == {"echo": {"x": 1}}
        load_modules("extra_tasks_for_test")  # already imported: no duplicate registration
        with pytest.raises(ImportError, match="no_such_task_module_xyz"):
            load_modules(["no_such_task_module_xyz"])
        with pytest.raises(ImportError, match="broken_tasks_for_test.*boom"):
            load_modules(["broken_tasks_for_test"])
    finally:
        registry._types.pop("extra_echo_for_test", None)
        sys.modules.pop("extra_tasks_for_test", None)
        sys.modules.pop("broken_tasks_for_test", None)


def test_results_are_json_serialisable():
    payloads = {
        "primes": {"limit": 100},
        "compute": {"operation": "factorial", "value": 1500},
        "sleep": {"duration": 0},
        "http_request": {"url": "https://example.com/"},
    }
    for name, payload in payloads.items():
        json.dumps(execute(name, payload))


# -- primes ------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["sieve", "trial_division"])
@pytest.mark.parametrize(("limit", "count"), [(10**5, 9592), (10**6, 78498)])
def test_prime_counts(algorithm, limit, count):
    result = execute("primes", {"limit": limit, "algorithm": algorithm})
    assert result["count"] == count
    assert result["algorithm"] == algorithm
    assert "primes" not in result
    assert result["largest"] == {10**5: 99991, 10**6: 999983}[limit]


@pytest.mark.parametrize("algorithm", ["sieve", "trial_division"])
def test_small_prime_ranges(algorithm):
    def run(**payload):
        return execute("primes", {**payload, "algorithm": algorithm})

    assert run(limit=2) == {"count": 1, "largest": 2, "algorithm": algorithm, "primes": [2]}
    assert run(limit=3) == {"count": 2, "largest": 3, "algorithm": algorithm, "primes": [2, 3]}
    assert run(limit=30, start=10)["primes"] == [11, 13, 17, 19, 23, 29]
    assert run(limit=30, start=10)["largest"] == 29
    assert run(limit=97, start=97) == {
        "count": 1,
        "largest": 97,
        "algorithm": algorithm,
        "primes": [97],
    }
    assert run(limit=91, start=91) == {
        "count": 0,
        "largest": None,
        "algorithm": algorithm,
        "primes": [],
    }
    assert run(limit=2, start=2)["primes"] == [2]
    assert run(limit=10, start=0)["primes"] == [2, 3, 5, 7]
    assert run(limit=10, start=1)["primes"] == [2, 3, 5, 7]
    assert run(limit=10, start=3)["primes"] == [3, 5, 7]
    assert run(limit=28, start=24)["count"] == 0


@pytest.mark.parametrize("algorithm", ["sieve", "trial_division"])
def test_primes_listed_up_to_1000(algorithm):
    # the 1000th prime is 7919, the 1001st is 7927
    listed = execute("primes", {"limit": 7919, "algorithm": algorithm})
    assert listed["count"] == 1000
    assert listed["primes"] == naive_sieve(7919)
    over = execute("primes", {"limit": 7927, "algorithm": algorithm})
    assert over["count"] == 1001
    assert over["largest"] == 7927
    assert "primes" not in over


def naive_sieve(n: int) -> list[int]:
    flags = [True] * (n + 1)
    flags[0] = flags[1] = False
    for i in range(2, math.isqrt(n) + 1):
        if flags[i]:
            for j in range(i * i, n + 1, i):
                flags[j] = False
    return [i for i, f in enumerate(flags) if f]


def test_sieve_across_segments(monkeypatch):
    monkeypatch.setattr(primes, "SEGMENT_SIZE", 64)  # many tiny segments
    expected = naive_sieve(20000)
    for start, limit in [(0, 20000), (129, 20000), (5000, 5200), (19000, 19999), (2, 257)]:
        want = [p for p in expected if start <= p <= limit]
        count, largest, _ = primes.sieve(start, limit)
        assert count == len(want)
        assert largest == want[-1]
        assert list(primes.trial_division(start, limit)) == want


def test_sieve_start_near_limit_is_fast():
    # only the segment holding [start, limit] is sieved
    result = primes.primes(limit=10**8, start=10**8 - 100)
    assert result["primes"] == [99999931, 99999941, 99999959, 99999971, 99999989]


@settings(max_examples=150, deadline=None, database=None)
@given(st.integers(2, 5000), st.data())
def test_sieve_matches_trial_division_and_naive(limit, data):
    start = data.draw(st.integers(0, limit))
    want = naive_primes(start, limit)
    sieve = primes.primes(limit=limit, start=start, algorithm="sieve")
    trial = primes.primes(limit=limit, start=start, algorithm="trial_division")
    for result in (sieve, trial):
        assert result["count"] == len(want)
        assert result["largest"] == (want[-1] if want else None)
        assert result["primes"] == want


def test_primes_defaults_filled_in():
    assert check("primes", {"limit": 10}) == {"limit": 10, "start": 2, "algorithm": "sieve"}


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ({}, ["missing required field 'limit'"]),
        ({"limit": 10, "x": 1}, ["unknown field 'x' for primes"]),
        ({"limit": True}, ["'limit'", "integer", "boolean"]),
        ({"limit": 5.0}, ["'limit'", "integer"]),
        ({"limit": "100"}, ["'limit'", "integer", "string"]),
        ({"limit": None}, ["'limit'", "integer", "null"]),
        ({"limit": 1}, ["'limit'", "at least 2"]),
        ({"limit": -5}, ["'limit'", "at least 2"]),
        ({"limit": 10**8 + 1}, ["'limit'", "100000000", "PRIMES_MAX_LIMIT"]),
        ({"limit": 10**1000}, ["'limit'", "PRIMES_MAX_LIMIT"]),
        ({"limit": 10, "start": False}, ["'start'", "integer", "boolean"]),
        ({"limit": 10, "start": 2.0}, ["'start'", "integer"]),
        ({"limit": 10, "start": -1}, ["'start'", "between 0 and 10"]),
        ({"limit": 10, "start": 11}, ["'start'", "between 0 and 10"]),
        ({"limit": 10, "algorithm": "magic"}, ["'algorithm'", "sieve", "trial_division"]),
        ({"limit": 10, "algorithm": 1}, ["'algorithm'", "string"]),
        (
            {"limit": 10**7 + 1, "algorithm": "trial_division"},
            ["'limit'", "10000000", "use algorithm 'sieve' for larger limits"],
        ),
    ],
)
def test_primes_validation(payload, words):
    rejects("primes", payload, *words)


def test_primes_limits_come_from_config():
    small = Config(primes_max_limit=1000, trial_division_max_limit=100)
    assert check("primes", {"limit": 1000}, small)["limit"] == 1000
    rejects("primes", {"limit": 1001}, "at most 1000", "PRIMES_MAX_LIMIT", config=small)
    assert check("primes", {"limit": 100, "algorithm": "trial_division"}, small)
    rejects(
        "primes",
        {"limit": 101, "algorithm": "trial_division"},
        "at most 100",
        "TRIAL_DIVISION_MAX_LIMIT",
        "sieve",
        config=small,
    )
    assert check("primes", {"limit": 10**8})["limit"] == 10**8


def test_primes_1e8_sieve_memory():
    code = textwrap.dedent(
        """
        import json
        from tasks import run_task
        result = run_task("primes", {"limit": 10**8, "start": 2, "algorithm": "sieve"})
        status = open("/proc/self/status").read().splitlines()
        peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
        print(json.dumps({"result": result, "peak_kb": peak_kb}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    out = json.loads(proc.stdout)
    assert out["result"] == {"count": 5761455, "largest": 99999989, "algorithm": "sieve"}
    # the child's own peak, VmHWM of its own memory: getrusage's ru_maxrss would count
    # what it inherited (RUSAGE_SELF keeps the forked pytest's peak across exec, and
    # RUSAGE_CHILDREN is the largest child pytest ever waited for)
    assert out["peak_kb"] < 200 * 1024, f"peak RSS {out['peak_kb']} KB"


# -- compute -----------------------------------------------------------------------------


def test_factorial_exact():
    assert execute("compute", {"operation": "factorial", "value": 0})["result"] == 1
    assert execute("compute", {"operation": "factorial", "value": 1})["result"] == 1
    result = execute("compute", {"operation": "factorial", "value": 25})
    assert result == {"operation": "factorial", "value": 25, "result": 15511210043330985984000000}
    big = execute("compute", {"operation": "factorial", "value": 1500})["result"]
    assert big == math.factorial(1500)
    assert len(str(big)) == 4115  # under the 4300-digit int-to-str limit


def test_fibonacci():
    values = [0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144]
    assert [compute.fibonacci(n) for n in range(len(values))] == values
    a, b = 0, 1
    for n in range(300):
        assert compute.fibonacci(n) == a
        a, b = b, a + b
    assert execute("compute", {"operation": "fibonacci", "value": 100})["result"] == (
        354224848179261915075
    )
    big = execute("compute", {"operation": "fibonacci", "value": 20000})["result"]
    assert big == compute.fibonacci(19999) + compute.fibonacci(19998)
    assert len(str(big)) == 4180


def test_double():
    assert execute("compute", {"operation": "double", "value": 21})["result"] == 42
    assert execute("compute", {"operation": "double", "value": -7})["result"] == -14
    assert execute("compute", {"operation": "double", "value": 10**100})["result"] == 2 * 10**100
    assert execute("compute", {"operation": "double", "value": -(10**100)})["result"] == (
        -2 * 10**100
    )


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ({"value": 3}, ["missing required field 'operation'"]),
        ({"operation": "double"}, ["missing required field 'value'"]),
        ({"operation": "double", "value": 1, "extra": 1}, ["unknown field 'extra' for compute"]),
        ({"operation": "sqrt", "value": 4}, ["'operation'", "double, factorial, fibonacci"]),
        ({"operation": "double", "value": True}, ["'value'", "integer", "boolean"]),
        ({"operation": "double", "value": 2.0}, ["'value'", "integer"]),
        ({"operation": "double", "value": "2"}, ["'value'", "integer", "string"]),
        ({"operation": "factorial", "value": -1}, ["'value'", "between 0 and 1500"]),
        ({"operation": "factorial", "value": 1501}, ["'value'", "between 0 and 1500"]),
        ({"operation": "fibonacci", "value": -1}, ["'value'", "between 0 and 20000"]),
        ({"operation": "fibonacci", "value": 20001}, ["'value'", "between 0 and 20000"]),
        ({"operation": "double", "value": 10**100 + 1}, ["'value'", "10**100"]),
        ({"operation": "double", "value": -(10**100) - 1}, ["'value'", "10**100"]),
    ],
)
def test_compute_validation(payload, words):
    message = rejects("compute", payload, *words)
    assert len(message) < 300  # huge values are shortened


# -- sleep -------------------------------------------------------------------------------


def test_sleep():
    assert check("sleep", {"duration": 1.5}) == {"duration": 1.5}
    assert check("sleep", {"duration": 86400}) == {"duration": 86400}
    assert execute("sleep", {"duration": 0}) == {"slept": 0}
    assert execute("sleep", {"duration": 0.0}) == {"slept": 0.0}


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ({}, ["missing required field 'duration'"]),
        ({"duration": 1, "x": 2}, ["unknown field 'x' for sleep"]),
        ({"duration": True}, ["'duration'", "number", "boolean"]),
        ({"duration": "1"}, ["'duration'", "number", "string"]),
        ({"duration": -0.1}, ["'duration'", "between 0 and 86400"]),
        ({"duration": 86400.5}, ["'duration'", "between 0 and 86400"]),
        ({"duration": float("nan")}, ["'duration'", "finite"]),
        ({"duration": float("inf")}, ["'duration'", "finite"]),
    ],
)
def test_sleep_validation(payload, words):
    rejects("sleep", payload, *words)


# -- http_request ------------------------------------------------------------------------


def test_http_request_simulated():
    url = "https://example.com/path?q=1"
    assert check("http_request", {"url": url}) == {"url": url, "method": "GET"}
    assert check("http_request", {"url": url, "method": "post"})["method"] == "POST"
    result = execute("http_request", {"url": url, "method": "delete"})
    assert result == {
        "url": url,
        "method": "DELETE",
        "status_code": 200,
        "body_sha256": hashlib.sha256(f"DELETE {url}".encode()).hexdigest(),
        "simulated": True,
    }
    assert execute("http_request", {"url": url, "method": "delete"}) == result  # deterministic
    assert execute("http_request", {"url": "http://localhost:8080"})["method"] == "GET"
    assert check("http_request", {"url": "http://h/" + "a" * 2039})  # exactly 2048


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ({}, ["missing required field 'url'"]),
        ({"url": "http://a", "timeout": 3}, ["unknown field 'timeout' for http_request"]),
        ({"url": 5}, ["'url'", "string", "integer"]),
        ({"url": "ftp://example.com"}, ["'url'", "http:// or https://"]),
        ({"url": "example.com"}, ["'url'", "http:// or https://"]),
        ({"url": "http://"}, ["'url'", "host"]),
        ({"url": "https:///path"}, ["'url'", "host"]),
        ({"url": "http://exa mple.com"}, ["'url'", "spaces"]),
        ({"url": "http://[::1"}, ["'url'", "not a valid URL"]),
        ({"url": "http://host:99999/"}, ["'url'", "not a valid URL"]),
        ({"url": "http://h/" + "a" * 2040}, ["'url'", "at most 2048 characters"]),
        ({"url": "http://a", "method": "FETCH"}, ["'method'", "GET, POST"]),
        ({"url": "http://a", "method": 1}, ["'method'", "string"]),
    ],
)
def test_http_request_validation(payload, words):
    rejects("http_request", payload, *words)


# -- fail --------------------------------------------------------------------------------


def test_fail_raises_task_failed():
    assert check("fail", {}) == {"error_message": "task failed"}
    with pytest.raises(TaskFailed) as info:
        execute("fail", {"error_message": "disk on fire"})
    assert str(info.value) == "disk on fire"
    with pytest.raises(TaskFailed, match="^task failed$"):
        execute("fail", {})
    with pytest.raises(TaskFailed, match="^task failed$"):
        run_task("fail", {})


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ({"error_message": 3}, ["'error_message'", "string"]),
        ({"error_message": None}, ["'error_message'", "string", "null"]),
        ({"error_message": "x" * 10001}, ["'error_message'", "at most 10000"]),
        ({"message": "x"}, ["unknown field 'message' for fail"]),
    ],
)
def test_fail_validation(payload, words):
    rejects("fail", payload, *words)
    assert check("fail", {"error_message": "x" * 10000})
