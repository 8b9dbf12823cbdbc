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
from typing import Any
from urllib.parse import urlsplit

from common.config import Config
from tasks import fields, http_fetch
from tasks.errors import InvalidPayload

NAME = "http_request"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")
MAX_URL_LENGTH = 2048
REAL_ONLY = ("headers", "body", "timeout")  # fields of the real mode only


def validate(payload: dict[str, Any], config: Config) -> dict[str, Any]:
    simulate = payload.get("simulate", True)
    if not isinstance(simulate, bool):
        raise InvalidPayload(
            f"{NAME} field 'simulate' must be true or false, not {fields.describe(simulate)}"
        )
    for key in REAL_ONLY:
        if simulate and key in payload:
            raise InvalidPayload(
                f"unknown field {key!r} for {NAME} (allowed fields: method, simulate, url; "
                f'{", ".join(REAL_ONLY)} need "simulate": false)'
            )
    fields.check_fields(NAME, payload, ("url",), ("method", "simulate", *REAL_ONLY))
    url = fields.string(NAME, payload, "url", max_len=MAX_URL_LENGTH)
    _check_url(url)
    method = fields.string(NAME, payload, "method", "GET").upper()
    if method not in METHODS:
        raise InvalidPayload(
            f"{NAME} field 'method' must be one of {', '.join(METHODS)}, "
            f"not {fields.show(payload['method'])}"
        )
    if simulate:
        return {"url": url, "method": method}
    http_fetch.check_host_allowed(url, config.http_request_allow_list)
    body = payload.get("body")
    if body is not None:
        body = fields.string(NAME, payload, "body", max_len=http_fetch.MAX_BODY_CHARS)
    timeout = fields.number(NAME, payload, "timeout", http_fetch.DEFAULT_TIMEOUT)
    if not 0 < timeout <= http_fetch.MAX_TIMEOUT:
        raise InvalidPayload(
            f"{NAME} field 'timeout' must be greater than 0 and at most "
            f"{http_fetch.MAX_TIMEOUT:g} (seconds), not {fields.show(timeout)}"
        )
    return {
        "url": url,
        "method": method,
        "simulate": False,
        "headers": http_fetch.check_headers(payload.get("headers", {})),
        "body": body,
        "timeout": timeout,
    }


def _check_url(url: str) -> None:
    if not url.lower().startswith(("http://", "https://")):
        raise InvalidPayload(f"{NAME} field 'url' must start with http:// or https://")
    if any(ord(c) <= 32 or ord(c) == 127 for c in url):
        raise InvalidPayload(f"{NAME} field 'url' must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise InvalidPayload(f"{NAME} field 'url' is not a valid URL ({exc})") from None
    if not host:
        raise InvalidPayload(f"{NAME} field 'url' must include a host name")


def run(payload: dict[str, Any]) -> dict[str, Any]:
    url: str = payload["url"]
    method = str(payload.get("method", "GET")).upper()
    if payload.get("simulate", True) is False:
        return http_fetch.fetch(
            url,
            method,
            payload.get("headers") or {},
            payload.get("body"),
            payload.get("timeout", http_fetch.DEFAULT_TIMEOUT),
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
