"""The API's tokens and what each may do: API_TOKEN (one token, or several separated by
commas, each an `admin` named "env") and API_TOKENS_FILE (lines `ROLE NAME TOKEN`, TOKEN
in clear or as `sha256:<hex digest>`), the file re-read when it changes.

A token is known by its SHA-256 digest only: the table maps digests to (name, role), so
a lookup hashes what the client sent and compares digests, never the secret itself, and
the time it takes says nothing about any stored token (finding the digest's slot reveals
at most a digest prefix an attacker cannot steer without a preimage). The file is looked
at lazily, by the request that comes at least RECHECK_S after the last look: a token
removed from it stops working on the next request after that, with no thread to run.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.tokens_file import (  # noqa: F401  (TokensFileError: re-exported)
    ROLES,
    Entry,
    TokensFileError,
    digest_of,
    from_env,
    parse,
    read_file,
)

from .identity import Identity

log = logging.getLogger("dispatcher")

RECHECK_S = 1.0  # the file is looked at no more often than this


@dataclass(frozen=True)
class Table:
    """One version of the tokens: a lookup by digest, and the dashboard's session key."""

    by_digest: dict[bytes, Entry]
    session_key: bytes | None  # None: no tokens, no sessions

    @classmethod
    def of(cls, entries: list[Entry], configured: bool, secret: bytes) -> Table:
        by_digest: dict[bytes, Entry] = {}
        for entry in entries:  # an env token also in the file: API_TOKEN's admin wins
            by_digest.setdefault(entry.digest, entry)
        return cls(by_digest, _session_key(entries, secret) if configured else None)


def _session_key(entries: list[Entry], secret: bytes) -> bytes:
    """The shared secret (storage.shared_secret: random, the same for every process and
    dispatcher on the database) keyed with every token's role, name and digest: the
    tokens file alone does not give it away, and any change to the tokens ends every
    dashboard session (cookies signed under the old key no longer verify)."""
    material = "\n".join(sorted(f"{e.role} {e.name} {e.digest.hex()}" for e in entries))
    return hmac.new(secret, material.encode(), hashlib.sha256).digest()


# path, entries, the file's version: its mtime in ns and its text's SHA-256 (the same in
# every process of a machine that reads it)
Reloaded = Callable[[str, list[Entry], str], None]


class Tokens:
    """The tokens in force, one table per server process. With `strict`, a file that is
    unusable now raises TokensFileError (the dispatcher checks it before it serves, with
    Config.check_tokens_file); without, a server process (re)started while the file is
    bad logs the error and starts with API_TOKEN's tokens only, until the file is
    fixed: it fails closed, and never stops the dispatcher. Later, a file that cannot be
    read or parsed leaves the tokens in force and logs one error per version of it.

    `secret`: the key the dashboard's session cookies are signed with is made from it
    (the app gives storage.shared_secret's; by default a random one, this object's)."""

    _NOT_REFUSED = object()  # no version of the file refused since the last good one

    def __init__(
        self,
        api_token: str,
        path: str = "",
        clock: Callable[[], float] = time.monotonic,
        on_reload: Reloaded | None = None,
        *,
        strict: bool = True,
        secret: bytes | None = None,
    ):
        self.path = path
        self.configured = bool(from_env(api_token)) or bool(path)
        self._env = from_env(api_token)
        self._clock = clock
        self._on_reload = on_reload
        self._secret = os.urandom(32) if secret is None else secret
        self._lock = threading.Lock()
        self._stamp = self._stat() if path else None
        self._refused_stamp: object = self._NOT_REFUSED
        file_entries: list[Entry] = []
        if path:
            try:
                file_entries = read_file(path)
            except TokensFileError as exc:
                if strict:
                    raise
                self._stamp = None  # taken as soon as it is good again
                self._refused_stamp = self._stat()
                log.error("API_TOKENS_FILE unusable, only API_TOKEN's tokens work: %s", exc)
        self._table = Table.of(self._env + file_entries, self.configured, self._secret)
        self._checked_at = clock()

    def identify(self, token: str) -> Identity | None:
        """Who holds `token`, or None for an unknown one."""
        if self.path:
            self._recheck()
        digest = digest_of(token)
        entry = self._table.by_digest.get(digest)
        if entry is None or not hmac.compare_digest(entry.digest, digest):
            return None
        return Identity(entry.name, entry.role)

    def holds(self, identity: Identity) -> bool:
        """A token of that name and role is still in force (a dashboard session's)."""
        if self.path:
            self._recheck()
        return any(
            e.name == identity.name and e.role == identity.role
            for e in self._table.by_digest.values()
        )

    @property
    def session_key(self) -> bytes | None:
        if self.path:
            self._recheck()
        return self._table.session_key

    def _stat(self) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)

    def _due(self) -> bool:
        """A look at the file is due (the clock is the app's: a step back counts too)."""
        elapsed = self._clock() - self._checked_at
        return elapsed >= RECHECK_S or elapsed < 0

    def _recheck(self) -> None:
        if not self._due():
            return
        with self._lock:
            if not self._due():
                return  # another thread just looked
            self._checked_at = self._clock()
            stamp = self._stat()
            if stamp == self._stamp:
                return
            self._reload(stamp)

    def _reload(self, stamp: tuple[int, int, int, int] | None) -> None:
        """The file changed: put its tokens in force, or keep the old ones and say why
        once for this version of the file (called with the lock held)."""
        try:
            text = Path(self.path).read_text(encoding="utf-8-sig")
            entries = parse(text, self.path)
        except (OSError, UnicodeDecodeError, TokensFileError) as exc:
            if stamp != self._refused_stamp:
                self._refused_stamp = stamp
                log.error(
                    "API_TOKENS_FILE not reloaded, the tokens in force stay: %s",
                    exc if isinstance(exc, TokensFileError) else f"{self.path}: {exc}",
                )
            return
        self._stamp = stamp
        self._refused_stamp = self._NOT_REFUSED
        self._table = Table.of(self._env + entries, self.configured, self._secret)
        roles = {role: sum(e.role == role for e in entries) for role in ROLES}
        log.info(
            "API_TOKENS_FILE %s reloaded: %d tokens (%s)",
            self.path,
            len(entries),
            ", ".join(f"{n} {role}" for role, n in roles.items() if n) or "none",
        )
        if self._on_reload is not None:
            version = f"{stamp[0] if stamp else 0}:{hashlib.sha256(text.encode()).hexdigest()}"
            self._on_reload(self.path, entries, version)
