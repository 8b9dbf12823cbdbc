"""The tokens of API_TOKEN and API_TOKENS_FILE as data: the file's lines `ROLE NAME
TOKEN` (TOKEN in clear or as `sha256:<hex digest>`), blank lines and `#` comments, and
what is wrong with a line (the file and the line named). No Flask here: the dispatcher's
start-up checks use it before its server processes exist (dispatcher/tokens.py keeps the
tokens in force)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

ROLES = ("admin", "submit", "worker", "read")
ENV_NAME = "env"  # the name of API_TOKEN's tokens
# names the dispatcher gives: API_TOKEN's, no token configured, its own work (audit)
RESERVED_NAMES = (ENV_NAME, "anonymous", "system")
MIN_TOKEN_CHARS = 16  # a clear token shorter than this is refused (a guess, a cut line)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:-]{0,63}")
HASHED = re.compile(r"sha256:([0-9a-fA-F]{64})")


class TokensFileError(ValueError):
    """The file cannot be used as it is; str() names the file and the line."""


@dataclass(frozen=True)
class Entry:
    role: str
    name: str
    digest: bytes  # SHA-256 of the token


def digest_of(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def from_env(api_token: str) -> list[Entry]:
    """API_TOKEN's tokens: comma-separated, blanks around them ignored, each an admin."""
    tokens = [t.strip() for t in api_token.split(",")]
    return [Entry("admin", ENV_NAME, digest_of(t)) for t in tokens if t]


def parse(text: str, source: str) -> list[Entry]:
    """The entries of a tokens file's text; TokensFileError names `source` and the line."""
    entries: list[Entry] = []
    seen: dict[bytes, int] = {}
    for number, raw in enumerate(text.split("\n"), start=1):  # as an editor counts lines
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            entry = _entry(line, seen)
        except ValueError as exc:
            raise TokensFileError(f"{source} line {number}: {exc}") from None
        seen[entry.digest] = number
        entries.append(entry)
    return entries


def _entry(line: str, seen: dict[bytes, int]) -> Entry:
    """One line `ROLE NAME TOKEN`; ValueError says what is wrong with it."""
    fields = line.split()
    if len(fields) != 3:
        raise ValueError(f"expected ROLE NAME TOKEN (3 fields), got {len(fields)}")
    role, name, token = fields
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {', '.join(ROLES)}")
    if name in RESERVED_NAMES:
        raise ValueError(f"name {name!r} is reserved ({', '.join(RESERVED_NAMES)})")
    if not NAME.fullmatch(name):
        raise ValueError(
            f"name {name!r}: 1-64 of letters, digits and . _ @ : - (a letter or digit first)"
        )
    if token.startswith("sha256:"):
        hashed = HASHED.fullmatch(token)
        if hashed is None:
            raise ValueError("a sha256: token takes the 64 hex digits of the token's SHA-256")
        digest = bytes.fromhex(hashed[1])
    elif len(token) < MIN_TOKEN_CHARS:
        raise ValueError(
            f"a token must be at least {MIN_TOKEN_CHARS} characters ({len(token)} given)"
        )
    else:
        digest = digest_of(token)
    if digest in seen:
        raise ValueError(f"the same token as line {seen[digest]}")
    return Entry(role, name, digest)


def read_file(path: str) -> list[Entry]:
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # a BOM (Notepad) is not text
    except (OSError, UnicodeDecodeError) as exc:
        raise TokensFileError(f"{path}: cannot read it ({exc})") from None
    return parse(text, path)
