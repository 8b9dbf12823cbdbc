"""DISPATCHER_URL's base URLs: split, checked and parsed once, for the configuration
(which refuses a bad value at start-up) and the client (which connects to them)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


def split_urls(text: str) -> list[str]:
    """The base URLs of a DISPATCHER_URL value (a comma-separated list); ValueError names
    the first bad one."""
    urls = [u.strip().rstrip("/") for u in text.split(",")]
    if not any(urls):
        raise ValueError("names no URL")
    for url in urls:
        if not url:
            raise ValueError(f"{text!r} has an empty entry")
        Target.parse(url)
    return urls


@dataclass(frozen=True)
class Target:
    """One base URL, taken apart for http.client."""

    url: str
    https: bool
    host: str
    port: int
    prefix: str

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{url!r} has a bad port") from None
        if parts.query or parts.fragment:
            raise ValueError(f"{url!r} must not have a query or fragment")
        https = parts.scheme == "https"
        return cls(url, https, parts.hostname, port or (443 if https else 80), parts.path)
