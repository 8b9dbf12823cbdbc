"""`http_request`: a SIMULATED HTTP request; nothing goes over the network.

Result: a deterministic fake response {"url", "method", "status_code": 200,
"body_sha256", "simulated": true}.
"""

from __future__ import annotations

import hashlib
from typing import Annotated
from urllib.parse import urlsplit

from msgspec import Meta

from common.config import Config
from common.rules import show
from tasks.errors import InvalidPayload
from tasks.typed import task

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")
MAX_URL_LENGTH = 2048


def valid_request(payload: dict, config: Config) -> dict:
    """An http(s) URL with a host; the method one of METHODS, stored upper-case."""
    _check_url(payload["url"])
    method = payload["method"].upper()
    if method not in METHODS:
        raise InvalidPayload(
            f"http_request field 'method' must be one of {', '.join(METHODS)}, "
            f"not {show(payload['method'])}"
        )
    return {**payload, "method": method}


def _check_url(url: str) -> None:
    if not url.lower().startswith(("http://", "https://")):
        raise InvalidPayload("http_request field 'url' must start with http:// or https://")
    if any(ord(c) <= 32 or ord(c) == 127 for c in url):
        raise InvalidPayload(
            "http_request field 'url' must not contain spaces or control characters"
        )
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise InvalidPayload(f"http_request field 'url' is not a valid URL ({exc})") from None
    if not host:
        raise InvalidPayload("http_request field 'url' must include a host name")


@task("http_request", check=valid_request)
def http_request(
    url: Annotated[str, Meta(max_length=MAX_URL_LENGTH)],
    method: Annotated[str, Meta(description=f"one of {', '.join(METHODS)}")] = "GET",
) -> dict:
    """A simulated HTTP request: a deterministic fake response, no network."""
    method = method.upper()
    digest = hashlib.sha256(f"{method} {url}".encode("utf-8", "surrogatepass")).hexdigest()
    return {
        "url": url,
        "method": method,
        "status_code": 200,
        "body_sha256": digest,
        "simulated": True,
    }
