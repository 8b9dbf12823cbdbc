"""`http_request`: a SIMULATED HTTP request by default; a real one with "simulate": false.

Simulated (nothing goes over the network): payload {"url": "http(s)://host/...",
"method"?: "GET"}; result a deterministic fake response {"url", "method",
"status_code": 200, "body_sha256", "simulated": true}.

Real: payload {"url", "method"?, "simulate": false, "headers"?: {}, "body"?: null,
"timeout"?: 10}, the host allowed by HTTP_REQUEST_ALLOWED_HOSTS; tasks/http_fetch.py
checks it and sends the request (docs/TASKS.md, "The real mode of http_request").
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any
from urllib.parse import urlsplit

from msgspec import Meta

from common.config import Config
from common.rules import show
from tasks import http_fetch
from tasks.errors import InvalidPayload
from tasks.typed import task

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")
MAX_URL_LENGTH = 2048
REAL_ONLY = ("headers", "body", "timeout")  # fields of the real mode only


def valid_request(payload: dict, config: Config) -> dict:
    """An http(s) URL with a host, the method one of METHODS (stored upper-case); in the
    real mode a host HTTP_REQUEST_ALLOWED_HOSTS allows, and headers that may be sent."""
    url = payload["url"]
    _check_url(url)
    method = payload["method"].upper()
    if method not in METHODS:
        raise InvalidPayload(
            f"http_request field 'method' must be one of {', '.join(METHODS)}, "
            f"not {show(payload['method'])}"
        )
    if payload["simulate"]:
        for key in REAL_ONLY:
            if payload[key] is not None:
                raise InvalidPayload(
                    f"unknown field {key!r} for http_request (allowed fields: method, simulate, "
                    f'url; {", ".join(REAL_ONLY)} need "simulate": false)'
                )
        return {"url": url, "method": method}  # as stored before the real mode existed
    http_fetch.check_host_allowed(url, config.http_request_allow_list)
    timeout = payload["timeout"]
    return {
        "url": url,
        "method": method,
        "simulate": False,
        "headers": http_fetch.check_headers(payload["headers"] or {}),
        "body": payload["body"],
        "timeout": http_fetch.DEFAULT_TIMEOUT if timeout is None else timeout,
    }


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


Timeout = Annotated[float, Meta(gt=0, le=http_fetch.MAX_TIMEOUT, description="seconds")]


@task("http_request", check=valid_request)
def http_request(
    url: Annotated[str, Meta(max_length=MAX_URL_LENGTH)],
    method: Annotated[str, Meta(description=f"one of {', '.join(METHODS)}")] = "GET",
    simulate: bool = True,
    headers: dict[str, Any] | None = None,
    body: Annotated[str, Meta(max_length=http_fetch.MAX_BODY_CHARS)] | None = None,
    timeout: Timeout | None = None,
) -> dict:
    """An HTTP request: simulated (no network) unless "simulate" is false."""
    method = method.upper()
    if not simulate:
        return http_fetch.fetch(
            url,
            method,
            headers or {},
            body,
            http_fetch.DEFAULT_TIMEOUT if timeout is None else timeout,
            http_fetch.worker_allow_list(),  # the worker's, set in each pool process
        )
    digest = hashlib.sha256(f"{method} {url}".encode("utf-8", "surrogatepass")).hexdigest()
    return {
        "url": url,
        "method": method,
        "status_code": 200,
        "body_sha256": digest,
        "simulated": True,
    }
