"""`compute`: an exact integer function of an integer.

Payload: {"operation": "factorial" | "fibonacci" | "double", "value": int}.
Result: {"operation", "value", "result"}; results are exact Python ints, and the bounds
keep them under Python's 4300-digit int-to-str limit (factorial(1500) has 4115 digits,
fibonacci(20000) has 4180).
"""

from __future__ import annotations

import math
from typing import Any

from common.config import Config
from tasks import fields
from tasks.errors import InvalidPayload

NAME = "compute"
OPERATIONS = ("factorial", "fibonacci", "double")
FACTORIAL_MAX = 1500
FIBONACCI_MAX = 20000
DOUBLE_MAX_EXPONENT = 100  # double accepts abs(value) <= 10**100
DOUBLE_MAX = 10**DOUBLE_MAX_EXPONENT


def validate(payload: dict[str, Any], config: Config) -> dict[str, Any]:
    fields.check_fields(NAME, payload, ("operation", "value"), ())
    operation = fields.choice(NAME, payload, "operation", OPERATIONS)
    value = fields.integer(NAME, payload, "value")
    if operation == "factorial":
        fields.in_range(NAME, "value", value, 0, FACTORIAL_MAX, _note(operation))
    elif operation == "fibonacci":
        fields.in_range(NAME, "value", value, 0, FIBONACCI_MAX, _note(operation))
    elif abs(value) > DOUBLE_MAX:
        raise InvalidPayload(
            f"{NAME} field 'value' must be between -10**{DOUBLE_MAX_EXPONENT} and "
            f"10**{DOUBLE_MAX_EXPONENT} {_note(operation)}, not {fields.show(value)}"
        )
    return {"operation": operation, "value": value}


def _note(operation: str) -> str:
    return f"for operation {operation!r}"


def run(payload: dict[str, Any]) -> dict[str, Any]:
    operation: str = payload["operation"]
    value: int = payload["value"]
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
