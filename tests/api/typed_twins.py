"""Two task types whose names make the same Struct name (tests/api/test_task_types.py)."""

from taskqueue import task


@task("my-twin")
def dash(a: int = 0) -> int:
    return a


@task("my_twin")
def underscore(b: str = "") -> str:
    return b
