"""What add_task.py and monitor.py share: configuration, the client, one-line errors,
argument types.

Exit statuses: 0 success, 1 the dispatcher could not be reached or refused the request
(or, for `add_task.py --wait`, a task failed), 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import TypeVar

from common import logs
from common.client import ApiError, Client, DispatcherUnreachable
from common.config import Config, ConfigError

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

log = logging.getLogger("cli")


class CliError(Exception):
    """Stop the program with one line on stderr and an exit status."""

    def __init__(self, message: str, status: int = EXIT_FAILED, prefix: str = "error: "):
        super().__init__(message)
        self.status = status
        self.prefix = prefix


def load_config() -> Config:
    """The configuration; with LOG_FORMAT=json, what the CLI says on stderr from now on
    (its errors, warnings and notes, the client's) is JSON log lines."""
    try:
        config = Config.from_env()
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_USAGE, prefix="configuration error: ") from None
    if config.log_format == "json":
        logs.setup_logging(config.log_level, "json")
    return config


def say(message: str, level: int = logging.INFO, prefix: str = "") -> None:
    """One line for the user on stderr: `prefix` + `message`, or with LOG_FORMAT=json a
    JSON log line at `level`."""
    if logs.json_mode():
        log.log(level, message)
    else:
        print(f"{prefix}{message}", file=sys.stderr)


def connect(config: Config, **options) -> Client:
    """A Client for DISPATCHER_URL; `options` go to Client (retry_429_for, on_429)."""
    return Client(
        config.dispatcher_url, config.api_token, ca_file=config.dispatcher_ca_file, **options
    )


def unreachable(config: Config, exc: DispatcherUnreachable) -> str:
    """`cannot reach the dispatcher at URL (why)`; when several dispatchers of
    DISPATCHER_URL were tried, `cannot reach the dispatchers (URL: why; URL: why)`."""
    if len(exc.failures) > 1:
        return f"cannot reach the dispatchers ({exc})"
    url = _named_url(config, exc) or config.dispatcher_url.rstrip("/")
    return f"cannot reach the dispatcher at {url} ({unreachable_reason(config, exc)})"


def unreachable_reason(config: Config, exc: DispatcherUnreachable) -> str:
    """What went wrong, without repeating the dispatcher's URL when one was tried."""
    why = str(exc)
    url = _named_url(config, exc)
    if url is not None and len(exc.failures) <= 1:
        why = why[len(url) :].lstrip(": ") or why
    return why


def _named_url(config: Config, exc: DispatcherUnreachable) -> str | None:
    """The URL of DISPATCHER_URL that the error message starts with, if any."""
    why = str(exc)
    for url in sorted(config.dispatcher_urls, key=len, reverse=True):
        if why.startswith(url) and why[len(url) : len(url) + 1] in ("", ":", "/"):
            return url
    return None


def run(main: Callable[[], int]) -> int:
    """Call `main`, turning the known failures into one line on stderr and a status."""
    try:
        return main()
    except CliError as exc:
        say(str(exc), logging.ERROR, exc.prefix)
        return exc.status
    except KeyboardInterrupt:
        say("interrupted", logging.WARNING)
        return EXIT_INTERRUPTED


def api_call(config: Config, call: Callable[[], T]) -> T:
    """Run one client call; DispatcherUnreachable and ApiError become CliError."""
    try:
        return call()
    except DispatcherUnreachable as exc:
        raise CliError(unreachable(config, exc)) from None
    except ApiError as exc:
        raise CliError(exc.message) from None


# -- argument types (argparse's `type=`; a bad value exits with status 2) ----------------


def positive_int(text: str) -> int:
    value = non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {text}")
    return value


def positive_float(text: str) -> float:
    value = _number(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, not {text}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, not {text}")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, not {text!r}") from None
