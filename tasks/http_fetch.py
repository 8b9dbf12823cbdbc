"""The real mode of `http_request`: the guard against server-side request forgery, the
request itself, and the shape of its result.

HTTP_REQUEST_ALLOWED_HOSTS (`common.config.HostAllowList`) is applied twice:

- **At submission**, in the dispatcher: `check_host_allowed(url, allowed)`. No DNS (a
  validation reads only the payload and the configuration): the URL's host must be a
  listed name (or match a `*.` wildcard), or an IP address inside an IP or CIDR entry.
- **At every connection**, in the worker: the host is checked the same way, resolved
  once, and every address it resolves to must be allowed: an address a CIDR or IP entry
  covers is; any other must be public (not private, loopback, link-local, multicast,
  reserved, shared, or an IPv6 form that embeds an IPv4 address). The socket then
  connects to one of those checked addresses (no second lookup, so a DNS answer that
  changes between the check and the connection cannot move it), while the Host header,
  TLS SNI and certificate check keep the URL's name. Redirects (at most MAX_REDIRECTS)
  open their connections the same way, so each hop is checked again.

`fetch()` is what a worker's pool process runs. The worker hands its pool processes its
own allow-list through `use_allow_list()` (the pool's initializer, worker/pool.py): a
pool process has no Config of its own, and `run(payload)` gets only the payload.

This module imports `requests` only inside `fetch()` (tasks/http_pinned.py): the
dispatcher imports it to validate and never sends anything.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import ipaddress
import socket
import string
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from common.config import HostAllowList, IPAddress
from tasks.errors import InvalidPayload, TaskFailed

NAME = "http_request"
SETTING = "HTTP_REQUEST_ALLOWED_HOSTS"

DEFAULT_TIMEOUT = 10.0  # seconds: connecting, each read, and the whole body
MAX_TIMEOUT = 300.0
MAX_BODY_CHARS = 262_144  # the request body (it is stored with the task)
MAX_HEADERS = 50
MAX_HEADER_NAME = 100
MAX_HEADER_VALUE = 8192
MAX_REDIRECTS = 5
KEPT_BODY_BYTES = 65_536  # the result's `body`: the response body's first 64 KiB
MAX_DOWNLOAD_BYTES = 16 * 1_048_576  # a longer response body fails the attempt
# response headers copied into the result (lower case), when the response has them
RESULT_HEADERS = (
    "content-type",
    "content-length",
    "content-encoding",
    "etag",
    "last-modified",
    "location",
    "cache-control",
    "retry-after",
)
MAX_RESULT_HEADER_VALUE = 2048
# request headers the payload may not set: requests writes them from the URL and body
RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "te", "upgrade", "trailer"}
)
_TOKEN = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")
# IPv6 ranges that carry an IPv4 address (6to4, Teredo, NAT64): never public by name
_TUNNELS = tuple(
    ipaddress.IPv6Network(n) for n in ("2002::/16", "2001::/32", "64:ff9b::/96", "64:ff9b:1::/48")
)
_getaddrinfo = socket.getaddrinfo  # the one lookup per connection (tests replace it)


class HostRefused(TaskFailed):
    """The worker refused to connect: the host or an address it resolves to is not allowed."""


# -- the worker process's allow-list ------------------------------------------------------

_worker_allowed = HostAllowList()  # empty until the pool's initializer sets it


def use_allow_list(allowed: HostAllowList) -> None:
    """Set this process's allow-list, the one `run` passes to `fetch` (worker/pool.py
    calls it once in each pool process, with the worker's HTTP_REQUEST_ALLOWED_HOSTS)."""
    global _worker_allowed
    _worker_allowed = allowed


def worker_allow_list() -> HostAllowList:
    return _worker_allowed


# -- checks ----------------------------------------------------------------------------------


class _Refused(ValueError):
    pass


def check_host_allowed(url: str, allowed: HostAllowList) -> None:
    """At submission: InvalidPayload naming the host unless `allowed` lets a real request
    go to `url`'s host. The URL must already be a valid http(s) URL with a host."""
    try:
        _check_url(url, allowed, SETTING)
    except _Refused as exc:
        raise InvalidPayload(str(exc)) from None


def _check_url(url: str, allowed: HostAllowList, setting: str) -> None:
    parts = urlsplit(url)
    _check_host(parts.hostname or "", allowed, setting)
    if parts.username is not None or parts.password is not None:
        raise _Refused(
            f"{NAME} field 'url' must not hold a user name or password "
            "(send an Authorization header instead)"
        )
    if "\\" in parts.netloc:
        raise _Refused(f"{NAME} field 'url' must not hold a backslash in its host part")


def _check_host(host: str, allowed: HostAllowList, setting: str) -> IPAddress | None:
    """The host's IP address when it is one (a CIDR or IP entry covers it), None for a
    listed name; _Refused otherwise. `host` as a URL or a connection has it."""
    host = host.strip("[]").lower().removesuffix(".")
    if "%" in host:
        raise _Refused(f"{NAME} host {host!r}: an address with a zone (%) is not accepted")
    try:
        address = _unmapped(ipaddress.ip_address(host))
    except ValueError:
        address = None
    if address is not None:
        if allowed.covers(address):
            return address
        raise _Refused(
            _not_listed(host, allowed, setting, "an IP address needs an IP or CIDR entry")
        )
    if not host.isascii():
        raise _Refused(f"{NAME} host {host!r} must be written in its ASCII (xn--) form")
    if _numeric(host):
        raise _Refused(
            f"{NAME} host {host!r} is a number, not an IP address in its usual form (write a.b.c.d)"
        )
    if allowed.allows_name(host):
        return None
    raise _Refused(_not_listed(host, allowed, setting))


def _not_listed(host: str, allowed: HostAllowList, setting: str, hint: str = "") -> str:
    if not allowed:
        hint = "it is empty: real requests are off"
    return f"{NAME} host {host!r} is not in {setting}" + (f" ({hint})" if hint else "")


def _numeric(host: str) -> bool:
    """A host that the C library reads as an IPv4 address though it is not written a.b.c.d
    (127.1, 2130706433, 0x7f.1, 0177.0.0.1), or whose last label is a number."""
    try:
        socket.inet_aton(host)
        return True
    except OSError:
        last = host.rsplit(".", 1)[-1]
        return last.isdigit() or last.startswith("0x")


def _unmapped(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (::ffff:a.b.c.d) as the IPv4 address it reaches."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def non_public(address: IPAddress) -> str | None:
    """What keeps `address` from being public ("loopback", "private", ...), or None."""
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_unspecified:
        return "unspecified"
    if address.is_private:
        return "private"
    if address.is_reserved:
        return "reserved"
    if isinstance(address, ipaddress.IPv6Address) and (
        address.is_site_local or any(address in net for net in _TUNNELS)
    ):
        return "IPv4-embedding or site-local"
    if not address.is_global:
        return "non-global"
    return None


def resolve_allowed(
    host: str, port: int, allowed: HostAllowList, setting: str = SETTING
) -> list[tuple[Any, ...]]:
    """In the worker, for each connection: `host` checked, resolved once, and its
    getaddrinfo() entries if every address is allowed; HostRefused naming the host (and
    the address) otherwise. The connection goes to one of the entries returned."""
    try:
        literal = _check_host(host, allowed, setting)
    except _Refused as exc:
        raise HostRefused(str(exc)) from None
    name = str(literal) if literal is not None else host.strip("[]")
    flags = socket.AI_NUMERICHOST if literal is not None else 0
    try:
        infos = _getaddrinfo(name, port, 0, socket.SOCK_STREAM, 0, flags)
    except (OSError, UnicodeError) as exc:
        raise TaskFailed(f"{NAME} cannot resolve host {host!r}: {exc}") from None
    if not infos:
        raise TaskFailed(f"{NAME} cannot resolve host {host!r}: no address")
    if literal is not None:
        return infos
    for info in infos:
        address = _unmapped(ipaddress.ip_address(info[4][0].split("%", 1)[0]))
        if allowed.covers(address):
            continue
        kind = non_public(address)
        if kind is not None:
            raise HostRefused(
                f"{NAME} host {host!r} resolves to {address}, a non-public address "
                f"({kind}); only an IP or CIDR entry of {setting} allows it"
            )
    return infos


def check_headers(headers: object) -> dict[str, str]:
    """The payload's `headers`: an object of at most MAX_HEADERS string fields, each a
    valid header name (not one of RESERVED_HEADERS) and a one-line printable value."""
    field = f"{NAME} field 'headers'"
    if not isinstance(headers, Mapping):
        raise InvalidPayload(f"{field} must be an object of header names and values")
    if len(headers) > MAX_HEADERS:
        raise InvalidPayload(f"{field} may hold at most {MAX_HEADERS} headers, not {len(headers)}")
    seen: set[str] = set()
    for name, value in headers.items():
        if not isinstance(name, str) or not 0 < len(name) <= MAX_HEADER_NAME:
            raise InvalidPayload(f"{field}: header names are 1 to {MAX_HEADER_NAME} characters")
        if not set(name) <= _TOKEN:
            raise InvalidPayload(f"{field}: {name!r} is not a header name")
        if name.lower() in RESERVED_HEADERS:
            raise InvalidPayload(f"{field}: {name!r} is set by the request itself")
        if name.lower() in seen:
            raise InvalidPayload(f"{field}: {name!r} is given twice")
        seen.add(name.lower())
        if not isinstance(value, str):
            raise InvalidPayload(f"{field}: the value of {name!r} must be a string")
        if len(value) > MAX_HEADER_VALUE:
            raise InvalidPayload(
                f"{field}: the value of {name!r} must be at most {MAX_HEADER_VALUE} characters"
            )
        if any(not (c == "\t" or " " <= c <= "~") for c in value):
            raise InvalidPayload(
                f"{field}: the value of {name!r} must be printable ASCII on one line"
            )
    return dict(headers)


# -- the request -------------------------------------------------------------------------


def fetch(
    url: str,
    method: str,
    headers: Mapping[str, str],
    body: str | None,
    timeout: float,
    allowed: HostAllowList,
) -> dict[str, Any]:
    """Send the request and return the result of a real `http_request`; TaskFailed (or
    HostRefused) when a host is refused, the request fails or times out, the response is
    not 2xx, or its body is longer than MAX_DOWNLOAD_BYTES.

    `timeout` bounds connecting, each read, and reading the whole body (checked between
    chunks). A resolution is not bounded by it; the task's own timeout is.
    """
    try:
        _check_url(url, allowed, f"the worker's {SETTING}")
    except _Refused as exc:
        raise HostRefused(str(exc)) from None
    from tasks import http_pinned  # imports requests

    start = time.monotonic()
    with http_pinned.session(allowed, f"the worker's {SETTING}", MAX_REDIRECTS) as session:
        reached: list[str] = []  # the URL of each response, redirects included
        session.hooks["response"].append(lambda response, **_: reached.append(response.url))
        try:
            with session.request(
                method,
                url,
                headers=dict(headers),
                data=None if body is None else body.encode("utf-8"),
                timeout=(timeout, timeout),
                stream=True,
                allow_redirects=True,
            ) as response:
                if not 200 <= response.status_code < 300:
                    raise TaskFailed(
                        f"{NAME} {method} {response.url} answered {response.status_code} "
                        f"{response.reason or ''}".rstrip()
                    )
                data, size, digest = _read(response, start + timeout, timeout)
        except HostRefused as exc:
            if reached:
                raise HostRefused(f"{exc} (redirected to it by {reached[-1]})") from None
            raise
        except http_pinned.TIMEOUTS:
            raise TaskFailed(f"{NAME} {method} {url} timed out after {timeout:g} s") from None
        except http_pinned.TOO_MANY_REDIRECTS:
            raise TaskFailed(
                f"{NAME} {method} {url}: more than {MAX_REDIRECTS} redirects"
            ) from None
        except http_pinned.REQUEST_ERRORS as exc:
            raise TaskFailed(f"{NAME} {method} {url} failed: {http_pinned.why(exc)}") from None
    text, encoding = _body_text(data, size > len(data), response.headers.get("content-type"))
    return {
        "url": url,
        "method": method,
        "simulated": False,
        "status_code": response.status_code,
        "final_url": response.url,
        "redirects": len(response.history),
        "headers": {
            name: response.headers[name][:MAX_RESULT_HEADER_VALUE]
            for name in RESULT_HEADERS
            if name in response.headers
        },
        "body": text,
        "body_encoding": encoding,
        "body_bytes": size,
        "body_truncated": size > len(data),
        "body_sha256": digest,
        "elapsed_ms": round((time.monotonic() - start) * 1000, 1),
    }


def _read(response: Any, deadline: float, timeout: float) -> tuple[bytes, int, str]:
    """The body's first KEPT_BODY_BYTES, its whole length and its SHA-256 (both of the
    body as decoded from its Content-Encoding, as `requests` gives it)."""
    digest = hashlib.sha256()
    kept = bytearray()
    size = 0
    for chunk in response.iter_content(chunk_size=65_536):
        size += len(chunk)
        if size > MAX_DOWNLOAD_BYTES:
            raise TaskFailed(
                f"{NAME} {response.url}: the response body is longer than "
                f"{MAX_DOWNLOAD_BYTES // 1_048_576} MiB"
            )
        digest.update(chunk)
        if len(kept) < KEPT_BODY_BYTES:
            kept += chunk[: KEPT_BODY_BYTES - len(kept)]
        if time.monotonic() > deadline:
            raise TaskFailed(f"{NAME} {response.url}: reading the body took over {timeout:g} s")
    return bytes(kept), size, digest.hexdigest()


def _body_text(data: bytes, cut: bool, content_type: str | None) -> tuple[str, str]:
    """The kept body as (text, "text"), decoded by the Content-Type's charset (UTF-8 when
    it names none or one Python does not know); or as (base64, "base64") when it does
    not decode. A multi-byte character cut at 64 KiB is dropped, not an error."""
    charset = "utf-8"
    for param in (content_type or "").split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "charset" and value.strip('"'):
            charset = value.strip('"')
    try:
        if not getattr(codecs.lookup(charset), "_is_text_encoding", True):
            charset = "utf-8"  # bytes-to-bytes codecs (base64, zlib) are no charset
    except LookupError:
        charset = "utf-8"
    try:
        text = codecs.getincrementaldecoder(charset)("strict").decode(data, final=not cut)
        text.encode("utf-8")  # no lone surrogates
    except (UnicodeError, ValueError, TypeError):
        return base64.b64encode(data).decode("ascii"), "base64"
    return text, "text"
