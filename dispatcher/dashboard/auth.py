"""Who may use the dashboard, and that a state change comes from its own pages.

With tokens configured (API_TOKEN, API_TOKENS_FILE), the login form takes any token and
keeps a session cookie that says who logged in (the token's name and role, never the
token), signed with the database's shared secret keyed with every token in force
(dispatcher/tokens.py: every server process and dispatcher on the database has the same
key, the tokens file alone does not give it away, and a change to the tokens ends
every session): HttpOnly, SameSite=Strict, Secure when the dispatcher serves TLS, for
the browser session only. The token is never in a URL or a page. Every role sees every
page (but the audit trail's, admin only); only an admin's pages show the buttons that
change something, and only an admin's POSTs are taken (access.allowed). Every POST must
carry the session's CSRF token and come from this origin (the Origin or Referer
header); without tokens only the origin check applies (there is no session to steal,
and the API is open to anyone who can reach it anyway).
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from flask import Flask, abort, request, session
from flask.sessions import SecureCookieSessionInterface
from itsdangerous import URLSafeTimedSerializer

from ..identity import ANONYMOUS, ROLES, Identity
from ..tokens import Tokens

SESSION_COOKIE = "taskqueue_session"


class TokenSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, keyed by the tokens in force (read at each
    request, so a reloaded tokens file takes effect without a restart)."""

    def __init__(self, tokens: Tokens):
        self.tokens = tokens

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        key = self.tokens.session_key
        if key is None:
            return None
        return URLSafeTimedSerializer(
            key,
            salt=self.salt,
            serializer=self.serializer,
            signer_kwargs={
                "key_derivation": self.key_derivation,
                "digest_method": self.digest_method,
            },
        )


def configure(app: Flask, tokens: Tokens, tls: bool) -> None:
    """The session cookie's key and attributes (a key exists only with tokens)."""
    app.session_interface = TokenSessions(tokens)
    app.config.update(
        SESSION_COOKIE_NAME=SESSION_COOKIE,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=tls,
        SESSION_COOKIE_PATH="/",
    )


def logged_in(tokens: Tokens) -> Identity | None:
    """Who this browser session belongs to; ANONYMOUS without tokens, None when nobody
    logged in (or their token is no longer in force)."""
    if not tokens.configured:
        return ANONYMOUS
    kept = session.get("who")
    if not (isinstance(kept, list) and len(kept) == 2 and kept[1] in ROLES):
        return None
    who = Identity(str(kept[0]), kept[1])
    return who if tokens.holds(who) else None


def log_in(tokens: Tokens, given: str) -> Identity | None:
    """Start a session when `given` is a token in force; a wrong one changes nothing."""
    who = tokens.identify(given)
    if who is None:
        return None
    session.clear()
    session["who"] = [who.name, who.role]
    session["csrf"] = secrets.token_hex(16)
    return who


def log_out() -> None:
    session.clear()


def csrf_token(tokens: Tokens) -> str:
    """The hidden field of every form (empty without tokens: no session)."""
    return session.get("csrf", "") if tokens.configured else ""


def check_post(tokens: Tokens) -> None:
    """A POST from another site, or without this session's CSRF token: 403."""
    if not same_origin():
        abort(403, "cross-site request refused (its Origin is not this dashboard's)")
    if tokens.configured:
        given = request.form.get("csrf", "")
        expected = session.get("csrf", "")
        if not expected or not hmac.compare_digest(given, expected):
            abort(403, "missing or stale form token: reload the page and try again")


def same_origin() -> bool:
    """The request says it comes from a page of this host and port (Origin, else
    Referer); browsers send one of them with every form POST. The scheme is not
    compared: behind a proxy that ends TLS the page is https and the request http."""
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if not source or source == "null":
        return False
    return urlsplit(source).netloc == request.host
