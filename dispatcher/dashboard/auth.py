"""Who may use the dashboard, and that a state change comes from its own pages.

With API_TOKEN set, the login form takes the token and keeps a session cookie signed
with a key derived from the token (every server process and dispatcher derives the
same one; a new token ends every session): HttpOnly, SameSite=Strict, for the browser
session only. The token is never in a URL or a page. Every POST must carry
the session's CSRF token and come from this origin (the Origin or Referer header);
without API_TOKEN only the origin check applies (there is no session to steal, and the
API is open to anyone who can reach it anyway).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from flask import Flask, abort, current_app, request, session

SESSION_COOKIE = "taskqueue_session"


KEY_SALT = b"taskqueue dashboard session key"  # fixed: every process derives the same key
KEY_ROUNDS = 200_000  # ~0.1 s once per process; each guess at a leaked cookie pays it too


def configure(app: Flask, token: str) -> None:
    """The session cookie's key and attributes (the key exists only with a token)."""
    if token:
        app.secret_key = hashlib.pbkdf2_hmac("sha256", token.encode(), KEY_SALT, KEY_ROUNDS)
    app.config.update(
        SESSION_COOKIE_NAME=SESSION_COOKIE,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_PATH="/",
    )


def _fingerprint() -> str:
    """What the session keeps of the token: a MAC under the key derived from it (slow
    to derive), never the token."""
    return hmac.new(current_app.secret_key, b"logged in", hashlib.sha256).hexdigest()


def logged_in(token: str) -> bool:
    if not token:
        return True
    kept = session.get("login")
    return isinstance(kept, str) and hmac.compare_digest(kept, _fingerprint())


def log_in(token: str, given: str) -> bool:
    """Start a session when `given` is the token; a wrong one changes nothing."""
    if not hmac.compare_digest(given.encode(), token.encode()):
        return False
    session.clear()
    session["login"] = _fingerprint()
    session["csrf"] = secrets.token_hex(16)
    return True


def log_out() -> None:
    session.clear()


def csrf_token(token: str) -> str:
    """The hidden field of every form (empty without API_TOKEN: no session)."""
    return session.get("csrf", "") if token else ""


def check_post(token: str) -> None:
    """A POST from another site, or without this session's CSRF token: 403."""
    if not same_origin():
        abort(403, "cross-site request refused (its Origin is not this dashboard's)")
    if token:
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
