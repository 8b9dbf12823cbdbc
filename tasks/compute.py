"""`compute`: an exact integer function of an integer.

Results are exact Python ints, and the bounds keep them under Python's 4300-digit
int-to-str limit (factorial(1500) has 4115 digits, fibonacci(20000) has 4180).
"""

from __future__ import annotations

import math
from typing import Literal

from common.config import Config
from common.rules import show
from tasks.errors import InvalidPayload
from tasks.typed import task

OPERATIONS = ("factorial", "fibonacci", "double")
FACTORIAL_MAX = 1500
FIBONACCI_MAX = 20000
DOUBLE_MAX_EXPONENT = 100  # double accepts abs(value) <= 10**100
DOUBLE_MAX = 10**DOUBLE_MAX_EXPONENT
MAX = {"factorial": FACTORIAL_MAX, "fibonacci": FIBONACCI_MAX}


def value_in_range(payload: dict, config: Config) -> None:
    """The bounds of `value` depend on the operation."""
    operation, value = payload["operation"], payload["value"]
    if operation in MAX and not 0 <= value <= MAX[operation]:
        raise InvalidPayload(
            f"compute field 'value' must be between 0 and {MAX[operation]} "
            f"for operation {operation!r}, not {show(value)}"
        )
    if operation == "double" and abs(value) > DOUBLE_MAX:
        raise InvalidPayload(
            f"compute field 'value' must be between -10**{DOUBLE_MAX_EXPONENT} and "
            f"10**{DOUBLE_MAX_EXPONENT} for operation 'double', not {show(value)}"
        )


@task("compute", check=value_in_range)
def compute(operation: Literal["factorial", "fibonacci", "double"], value: int) -> dict:
    """factorial, fibonacci or double of an integer, exactly."""
    if operation == "factorial":
        result = math.factorial(value)
    elif operation == "fibonacci":
        result = fibonacci(value)
    elif operation == "double":
        result = 2 * value
    else:
        raise ValueError(f"unknown compute operation {operation!r}")
    return {"operation": operation, "value": value, "result": result}


def fibonacci(n: int) -> int:
    """F(n) by fast doubling: F(2k) = F(k)(2F(k+1) - F(k)), F(2k+1) = F(k)^2 + F(k+1)^2."""
    if n < 0:
        raise ValueError("fibonacci is defined here for n >= 0 only")
    a, b = 0, 1  # F(k), F(k+1) for k = the bits of n read so far
    for bit in bin(n)[2:]:
        a, b = a * (2 * b - a), a * a + b * b
        if bit == "1":
            a, b = b, a + b
    return a
