"""@task: the payload schema from the signature, the context, and plain calls."""

from __future__ import annotations

import math
from typing import Annotated

import pytest
from annotated_types import Gt, Interval, Len, Lt

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
