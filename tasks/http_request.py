"""`http_request`: a SIMULATED HTTP request; nothing goes over the network.

Payload: {"url": "http(s)://host/...", "method"?: "GET"}. Result: a deterministic fake
response {"url", "method", "status_code": 200, "body_sha256", "simulated": true}.
"""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import urlsplit

from common.config import Config
from tasks import fields
from tasks.errors import InvalidPayload

NAME = "http_request"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")
MAX_URL_LENGTH = 2048


def validate(payload: dict[str, Any], config: Config) -> dict[str, Any]:
    fields.check_fields(NAME, payload, ("url",), ("method",))
    url = fields.string(NAME, payload, "url", max_len=MAX_URL_LENGTH)
    _check_url(url)
    method = fields.string(NAME, payload, "method", "GET").upper()
    if method not in METHODS:
        raise InvalidPayload(
            f"{NAME} field 'method' must be one of {', '.join(METHODS)}, "
            f"not {fields.show(payload['method'])}"
        )
    return {"url": url, "method": method}


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
    digest = hashlib.sha256(f"{method} {url}".encode("utf-8", "surrogatepass")).hexdigest()
    return {
        "url": url,
        "method": method,
        "status_code": 200,
        "body_sha256": digest,
        "simulated": True,
    }
