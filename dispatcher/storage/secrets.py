"""Secrets every process and dispatcher on one database share: made at random by the
first that asks, read by the others. The dashboard's session cookies are signed with
one (dispatcher/tokens.py mixes it with the tokens in force), so a cookie made by one
server process or dispatcher is good at the others, and knowing the tokens file (its
`sha256:` digests) is not enough to make one.
"""

from __future__ import annotations

import secrets
from typing import Any

# -- schema 7, in PostgreSQL's words (a new database's SCHEMA too) ---------------------

TABLE = "CREATE TABLE secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
TO_VERSION_7 = [TABLE]

STATEMENTS = dict(
    # (nothing) -> the secret `name`; nothing when another process made it first
    INSERT_SECRET="""
INSERT INTO secrets (name, value) VALUES (%(name)s, %(value)s) ON CONFLICT (name) DO NOTHING""",
    SECRET="SELECT value FROM secrets WHERE name = %(name)s",
)

SECRET_BYTES = 32


class Secrets:
    """Mixed into SqlStorage (its `q` and `_transact`)."""

    q: Any

    def shared_secret(self, name: str) -> bytes:
        args = {"name": name, "value": secrets.token_hex(SECRET_BYTES)}

        def make_or_read(tx) -> bytes:
            tx.execute(self.q.INSERT_SECRET, args)
            return bytes.fromhex(tx.one(self.q.SECRET, args)["value"])

        return self._transact(make_or_read)
