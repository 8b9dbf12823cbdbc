"""What add_task.py and monitor.py share: configuration, the client, one-line errors.

Exit statuses: 0 success, 1 the dispatcher could not be reached or refused the request
(or, for `add_task.py --wait`, a task failed), 2 bad usage or configuration.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from common.client import ApiError, Client, DispatcherUnreachable
from common.config import Config, ConfigError

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """Stop the program with one line on stderr and an exit status."""

    def __init__(self, message: str, status: int = EXIT_FAILED, prefix: str = "error: "):
        super().__init__(message)
        self.status = status
        self.prefix = prefix


def load_config() -> Config:
    try:
        return Config.from_env()
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_USAGE, prefix="configuration error: ") from None


def connect(config: Config) -> Client:
    return Client(config.dispatcher_url, config.api_token)


def unreachable(config: Config, exc: DispatcherUnreachable) -> str:
    """`cannot reach the dispatcher at URL (why)`."""
    url = config.dispatcher_url.rstrip("/")
    return f"cannot reach the dispatcher at {url} ({unreachable_reason(config, exc)})"


def unreachable_reason(config: Config, exc: DispatcherUnreachable) -> str:
    """What went wrong, without repeating the dispatcher's URL."""
    url = config.dispatcher_url.rstrip("/")
    why = str(exc)
    if why.startswith(url):
        why = why[len(url) :].lstrip(": ") or why
    return why


def run(main: Callable[[], int]) -> int:
    """Call `main`, turning the known failures into one line on stderr and a status."""
    try:
        return main()
    except CliError as exc:
        print(f"{exc.prefix}{exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def api_call(config: Config, call: Callable[[], T]) -> T:
    """Run one client call; DispatcherUnreachable and ApiError become CliError."""
    try:
        return call()
    except DispatcherUnreachable as exc:
        raise CliError(unreachable(config, exc)) from None
    except ApiError as exc:
        raise CliError(exc.message) from None
