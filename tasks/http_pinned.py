"""A `requests` session whose every connection is checked and pinned (tasks/http_fetch.py
uses it; imported only when a worker runs a real `http_request`).

`requests` hands each request to an HTTPAdapter, whose urllib3 PoolManager keeps one
connection pool per (scheme, host, port), whose connections open their sockets in
`_new_conn()`. Ours is the one change: `_new_conn()` calls
`http_fetch.resolve_allowed()` (check the host, resolve it once, check every address)
and connects to one of the addresses it returned, instead of resolving again. The
connection keeps the URL's host name, so the Host header, TLS SNI and the certificate's
name check are those of the name; only the address is fixed. A redirect's connection
goes through the same code, so each hop is checked again. The same approach as the
`advocate` library (which pins urllib3 < 2, so it is not a dependency here).

The session ignores the environment (`trust_env = False`): no HTTP(S)_PROXY, which would
make the check apply to the proxy instead of the target, and no .netrc credentials. It
does honour REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE for the certificates it trusts.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool, PoolManager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from common.config import HostAllowList
from tasks import http_fetch

TIMEOUTS = requests.exceptions.Timeout
TOO_MANY_REDIRECTS = requests.exceptions.TooManyRedirects
REQUEST_ERRORS = requests.exceptions.RequestException
_CONNECTION_PREFIX = re.compile(r"^(?:<[\w.]+ object at 0x[0-9a-f]+>|\w+\(host=[^)]*\)): ")


@contextmanager
def session(allowed: HostAllowList, setting: str, max_redirects: int) -> Iterator[Any]:
    """A fresh session for one task's request (and its redirects), closed after."""
    s = requests.Session()
    s.trust_env = False
    s.max_redirects = max_redirects
    s.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    adapter = _PinnedAdapter(allowed, setting)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    try:
        yield s
    finally:
        s.close()


def why(exc: BaseException) -> str:
    """The innermost useful reason of a requests error, in one line."""
    reason: BaseException = exc
    for _ in range(5):  # requests wraps urllib3's MaxRetryError, which holds the reason
        inner = getattr(reason, "reason", None) or (reason.args[0] if reason.args else None)
        if not isinstance(inner, BaseException):
            break
        reason = inner
    text = str(reason).replace("\n", " ")
    text = _CONNECTION_PREFIX.sub("", text)  # urllib3 names the connection object first
    return f"{type(reason).__name__}: {text}" if text else type(reason).__name__


class _Pinned:
    """Mixed into urllib3's connection classes: connect only to checked addresses."""

    def __init__(self, *args: Any, allowed: HostAllowList, setting: str, **kwargs: Any):
        self._allowed = allowed
        self._setting = setting
        super().__init__(*args, **kwargs)

    def _new_conn(self) -> socket.socket:
        conn: Any = self
        infos = http_fetch.resolve_allowed(conn.host, conn.port, self._allowed, self._setting)
        try:
            return _connect(infos, conn.timeout, conn.source_address, conn.socket_options)
        except TimeoutError as exc:  # socket.timeout
            raise ConnectTimeoutError(
                conn, f"Connection to {conn.host} timed out. (connect timeout={conn.timeout})"
            ) from exc
        except OSError as exc:
            raise NewConnectionError(conn, f"Failed to establish a new connection: {exc}") from exc


class _PinnedHTTPConnection(_Pinned, HTTPConnection):
    pass


class _PinnedHTTPSConnection(_Pinned, HTTPSConnection):
    pass


class _PinnedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _PinnedHTTPConnection


class _PinnedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _PinnedHTTPSConnection


class _PinnedPoolManager(PoolManager):
    def __init__(self, allowed: HostAllowList, setting: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.pool_classes_by_scheme = {"http": _PinnedHTTPPool, "https": _PinnedHTTPSPool}
        self._pinning = {"allowed": allowed, "setting": setting}

    def _new_pool(
        self, scheme: str, host: str, port: int, request_context: dict[str, Any] | None = None
    ) -> HTTPConnectionPool:
        # after the pool key was made (it knows only urllib3's own keys): the pool hands
        # these keywords on to each connection it makes
        context = dict(self.connection_pool_kw if request_context is None else request_context)
        return super()._new_pool(scheme, host, port, {**context, **self._pinning})


class _PinnedAdapter(HTTPAdapter):
    def __init__(self, allowed: HostAllowList, setting: str):
        self._allowed = allowed
        self._setting = setting
        super().__init__(max_retries=0)  # retries are the task's, not the adapter's

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        self._pool_connections = connections
        self._pool_maxsize = maxsize
        self._pool_block = block
        self.poolmanager = _PinnedPoolManager(
            self._allowed,
            self._setting,
            num_pools=connections,
            maxsize=maxsize,
            block=block,
            **pool_kwargs,
        )

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        raise requests.exceptions.InvalidURL("a real http_request never goes through a proxy")


def _connect(
    infos: list[tuple[Any, ...]],
    timeout: Any,
    source_address: tuple[str, int] | None,
    socket_options: Any,
) -> socket.socket:
    """A socket connected to the first of the checked addresses that answers (what
    urllib3's create_connection does after its own lookup)."""
    error: OSError | None = None
    for family, type_, proto, _, sockaddr in infos:
        sock = socket.socket(family, type_, proto)
        try:
            for option in socket_options or ():
                sock.setsockopt(*option)
            if isinstance(timeout, (int, float)) or timeout is None:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            error = exc
            sock.close()
    raise error or OSError("no address to connect to")
