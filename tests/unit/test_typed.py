"""@task: the payload schema from the signature, the context, and plain calls."""

from __future__ import annotations

import json
import math
import re
from typing import Annotated

import msgspec
import pytest
from annotated_types import Ge, Gt, Interval, Le, Len, Lt
from msgspec import Meta

from common.config import Config
from tasks import InvalidPayload, Registry, TaskContext, task

CONFIG = Config()


@pytest.fixture
def reg() -> Registry:
    return Registry()


def test_calling_the_task_runs_the_function_here(reg):
    @task("add", registry=reg)
    def add(a: int, b: int = 1) -> int:
        return a + b

    assert add(2) == 3
    assert add(2, b=5) == 7
    assert add.__name__ == "add"  # still looks like the function
    assert reg.run("add", reg.validate("add", {"a": 4}, CONFIG)) == 5


def test_a_task_that_wants_a_context_gets_one_called_directly_and_in_a_worker(reg):
    seen = []

    @task("ctx", registry=reg)
    def ctx(n: int, context: TaskContext) -> str:
        context.progress(0.5, "half")
        seen.append(context.last_progress)
        return context.task_id

    assert ctx(1) == "local"  # a local context
    assert seen[-1]["fraction"] == 0.5 and seen[-1]["message"] == "half"
    mine = TaskContext(task_id="t-1", attempt=2, queue="q")
    assert ctx(1, context=mine) == "t-1"
    assert reg.run("ctx", {"n": 1}, mine) == "t-1"
    assert reg.describe()[0]["schema"]["required"] == ["n"]  # the context is no field


def test_progress_refuses_a_fraction_outside_0_to_1():
    context = TaskContext()
    for bad in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match="between 0 and 1"):
            context.progress(bad)
    with pytest.raises(TypeError):
        context.progress("half")  # type: ignore[arg-type]


def test_annotated_types_constraints_become_rules(reg):
    @task("bounded", registry=reg)
    def bounded(
        x: Annotated[int, Gt(0), Lt(10)],
        y: Annotated[float, Interval(ge=0, le=1)] = 0.0,
        z: Annotated[str, Len(1, 3)] = "a",
    ) -> None: ...

    assert reg.validate("bounded", {"x": 9, "y": 1, "z": "abc"}, CONFIG)
    for payload, words in [
        ({"x": 0}, "must be greater than 0 and less than 10, not 0"),
        ({"x": 10}, "must be greater than 0 and less than 10, not 10"),
        ({"x": 1, "y": 1.5}, "'y' must be between 0 and 1, not 1.5"),
        ({"x": 1, "z": ""}, "'z' must be at least 1 characters long, not 0"),
        ({"x": 1, "z": "abcd"}, "'z' must be at most 3 characters long, not 4"),
    ]:
        with pytest.raises(InvalidPayload, match=words):
            reg.validate("bounded", payload, CONFIG)


def test_a_float_field_refuses_nan_and_infinity(reg):
    @task("ratio", registry=reg)
    def ratio(r: float) -> float:
        return r

    for bad in (math.nan, math.inf):
        with pytest.raises(InvalidPayload, match="'r' must be a finite number"):
            reg.validate("ratio", {"r": bad}, CONFIG)
    assert reg.validate("ratio", {"r": 2}, CONFIG) == {"r": 2.0}


def test_check_may_replace_the_payload_and_sees_the_config(reg):
    def upper(payload: dict, config: Config) -> dict:
        if len(payload["s"]) > config.max_batch:
            raise InvalidPayload("longer than MAX_BATCH")
        return {**payload, "s": payload["s"].upper()}

    @task("shout", registry=reg, check=upper)
    def shout(s: str) -> str:
        return s

    assert reg.validate("shout", {"s": "hi"}, CONFIG) == {"s": "HI"}
    with pytest.raises(InvalidPayload, match="MAX_BATCH"):
        reg.validate("shout", {"s": "x" * 5}, Config(max_batch=4))


def test_signatures_that_cannot_be_a_payload_are_refused_when_decorated(reg):
    with pytest.raises(TypeError, match="'args'"):

        @task("star", registry=reg)
        def star(*args: int) -> None: ...

    with pytest.raises(TypeError, match="'a'"):

        @task("positional", registry=reg)
        def positional(a: int, /) -> None: ...

    with pytest.raises(ValueError, match="already registered"):
        task("star2", registry=reg)(lambda: None)
        task("star2", registry=reg)(lambda: None)
    assert "star" not in reg and "positional" not in reg


def test_a_payload_that_is_not_an_object_is_refused(reg):
    @task("one", registry=reg)
    def one(a: int = 0) -> int:
        return a

    with pytest.raises(InvalidPayload, match="payload for one must be a JSON object, not an array"):
        one.check([1])


class Point(msgspec.Struct, forbid_unknown_fields=True):
    x: int
    y: int = 0


def test_nested_structs_and_sets_are_stored_as_json_and_run_as_declared(reg):
    seen = {}

    @task("shapes", registry=reg)
    def shapes(p: Point | None = None, tags: set[str] = set(), pair: tuple[int, int] = (0, 0)):  # noqa: B006
        seen.update(p=p, tags=tags, pair=pair)

    stored = reg.validate("shapes", {"p": {"x": 1}, "tags": ["a", "a"], "pair": [1, 2]}, CONFIG)
    assert json.loads(json.dumps(stored)) == {"p": {"x": 1, "y": 0}, "tags": ["a"], "pair": [1, 2]}
    defaults = json.loads(json.dumps(reg.describe()[0]["defaults"]))
    assert defaults == {"p": None, "tags": [], "pair": [0, 0]}
    json.dumps(reg.describe())  # GET /task-types can say it
    reg.run("shapes", stored)
    assert seen == {"p": Point(1, 0), "tags": {"a"}, "pair": (1, 2)}


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ({"p": {}}, "missing required field 'x' in 'p' for nested"),
        ({"p": {"x": 1, "z": 2}}, "unknown field 'z' in 'p' for nested"),
        ({"items": [1, 9]}, "nested field 'items[1]' must be between 0 and 5, not 9"),
        ({"scores": {"a": -1}}, "nested field 'scores[...]' is not valid"),
        ({"scores": {"a": "x"}}, "nested field 'scores[...]' is not valid"),
        ({"keys": {"a": 1}}, "nested field 'keys' is not valid"),
        ({"either": ["a"]}, "nested field 'either[0]' is not valid"),
        ({"pair": [1, "a"]}, "nested field 'pair[1]' is not valid"),
        ({"items": [1.5e308 * 10]}, "must be an integer"),
        ({"weights": [1.0, math.inf]}, "nested field 'weights[1]' must be a finite number"),
        ({"maybe": -1}, "nested field 'maybe' must be at least 0, not -1"),
    ],
)
def test_nested_fields_are_named_and_their_rules_kept(reg, payload, words):
    @task("nested", registry=reg)
    def nested(
        p: Point | None = None,
        items: list[Annotated[int, Ge(0), Le(5)]] = [],  # noqa: B006
        scores: dict[str, Annotated[int, Ge(0)]] = {},  # noqa: B006
        keys: dict[int, int] = {},  # noqa: B006
        either: list[int] | int = 0,
        pair: tuple[int, int] = (0, 0),
        weights: list[float] = [],  # noqa: B006
        maybe: Annotated[int, Ge(0)] | None = None,
    ) -> None: ...

    with pytest.raises(InvalidPayload, match=re.escape(words)):
        reg.validate("nested", payload, CONFIG)


def test_a_bad_signature_or_option_fails_when_decorated_not_at_submission(reg):
    with pytest.raises(TypeError, match="'bad'.*not a payload schema"):

        @task("bad", registry=reg)
        def bad(b: Annotated[str, Meta(ge=3)] = "") -> None: ...

    for options, words in [
        ({"queue": ""}, "queue"),
        ({"queue": "  "}, "queue"),
        ({"priority": 10**9}, "priority"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": "60"}, "timeout"),
        ({"max_retries": 101}, "max_retries"),
    ]:
        with pytest.raises(ValueError, match=f"'opt'.*{words}"):
            task("opt", registry=reg, **options)(lambda: None)
    assert "bad" not in reg and "opt" not in reg
    ok = task("opt", registry=reg, queue="q", timeout=60)(lambda: None)
    assert ok.options == {"queue": "q", "timeout": 60.0}


def test_a_check_that_breaks_is_a_refusal_naming_it(reg):
    def broken(payload: dict, config: Config) -> None:
        raise KeyError("nope")

    @task("fragile", registry=reg, check=broken)
    def fragile(a: int = 0) -> None: ...

    with pytest.raises(InvalidPayload, match="could not be checked.*broken raised KeyError"):
        reg.validate("fragile", {}, CONFIG)
