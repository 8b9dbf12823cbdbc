"""Who is making the request being served: the name and role of the token it carries
(dispatcher/tokens.py), set by the token check before any route runs, or by the
dashboard's login for its pages. Without any token configured the API is open and
everyone is an admin named "anonymous"; background work (the reaper, the scheduler, a
tokens-file reload) acts as SYSTEM."""

from __future__ import annotations

from dataclasses import dataclass

from flask import g, has_request_context

from common.tokens_file import ROLES  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class Identity:
    name: str
    role: str  # one of ROLES


ANONYMOUS = Identity("anonymous", "admin")  # no token configured: the API is open
SYSTEM = Identity("system", "admin")  # the dispatcher's own background work


def current() -> Identity:
    """The identity of the request being served; SYSTEM outside a request."""
    if not has_request_context():
        return SYSTEM
    return g.get("identity", ANONYMOUS)


def set_current(identity: Identity) -> None:
    g.identity = identity
