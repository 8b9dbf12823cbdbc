"""Bounds of a submission's fields, shared by the request bodies (dispatcher/bodies.py)
and @task's options (tasks/typed.py)."""

MAX_ID_LENGTH = 200
MAX_PRIORITY = 1_000_000
MAX_RETRIES = 100
MIN_TIMEOUT = 0.001
MAX_TIMEOUT = 7 * 86_400.0  # a week

# At least one character that Python's str.isspace() does not call white space.
NOT_BLANK = (
    "[^\\u0009-\\u000d\\u001c-\\u0020\\u0085\\u00a0\\u1680\\u2000-\\u200a"
    "\\u2028\\u2029\\u202f\\u205f\\u3000]"
)
