"""The tokens in force (dispatcher/tokens.py): API_TOKEN's list, the tokens file's lines
and their errors (file and line named), hashed tokens, and the file re-read when it
changes, with a clock the test moves."""

from __future__ import annotations

import hashlib
import logging

import pytest

from common.tokens_file import TokensFileError, parse
from dispatcher.identity import Identity
from dispatcher.tokens import RECHECK_S, Tokens


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sha(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def test_api_token_is_a_comma_list_of_admins_named_env():
    tokens = Tokens(" first , second ,")
    assert tokens.configured
    assert tokens.identify("first") == Identity("env", "admin")
    assert tokens.identify("second") == Identity("env", "admin")
    assert tokens.identify("first,second") is None
    assert tokens.identify("") is None
    assert not Tokens("").configured


def test_a_file_gives_each_token_its_role_and_name_and_takes_digests(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(
        "# who may do what\n"
        "\n"
        "admin   ops-alice     alice-secret-1\n"
        "  submit  webapp  " + sha("webapp-secret") + "  \n"
        "worker  fleet         fleet-secret\n"
        "read    grafana       " + sha("grafana-secret").upper().replace("SHA256", "sha256") + "\n"
        "worker  fleet         fleet-secret-next\n"
    )
    tokens = Tokens("env-secret", str(path))
    assert tokens.identify("alice-secret-1") == Identity("ops-alice", "admin")
    assert tokens.identify("webapp-secret") == Identity("webapp", "submit")
    assert tokens.identify(sha("webapp-secret")) is None  # the digest is not the token
    assert tokens.identify("fleet-secret") == Identity("fleet", "worker")
    assert tokens.identify("fleet-secret-next") == Identity("fleet", "worker")
    assert tokens.identify("grafana-secret") == Identity("grafana", "read")
    assert tokens.identify("env-secret") == Identity("env", "admin")
    assert tokens.identify("alice-secret") is None


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("admin alice", "expected ROLE NAME TOKEN (3 fields), got 2"),
        ("admin alice tok extra", "expected ROLE NAME TOKEN (3 fields), got 4"),
        ("owner alice tok", "role 'owner' is not one of admin, submit, worker, read"),
        ("Admin alice tok", "role 'Admin' is not one of admin, submit, worker, read"),
        ("read -alice tok", "name '-alice': 1-64 of letters"),
        ("read " + "a" * 65 + " tok", "name '" + "a" * 65 + "': 1-64 of letters"),
        ("read alice sha256:abc", "a sha256: token takes the 64 hex digits"),
        ("read alice sha256:" + "g" * 64, "a sha256: token takes the 64 hex digits"),
        ("read bob one-token", "the same token as line 2"),
        ("read bob " + sha("one-token"), "the same token as line 2"),
    ],
)
def test_a_bad_line_is_named_with_its_file_and_number(line, why):
    text = "# tokens\nadmin alice one-token\n" + line + "\n"
    with pytest.raises(TokensFileError) as refused:
        parse(text, "/etc/tq/tokens")
    assert str(refused.value).startswith("/etc/tq/tokens line 3: " + why)


def test_a_file_that_cannot_be_read_at_start_is_refused(tmp_path):
    with pytest.raises(TokensFileError, match=r"missing: cannot read it"):
        Tokens("", str(tmp_path / "missing"))
    (tmp_path / "binary").write_bytes(b"\xff\xfe admin a b\n")
    with pytest.raises(TokensFileError, match=r"binary: cannot read it"):
        Tokens("", str(tmp_path / "binary"))


def test_an_empty_file_lets_no_one_in_but_api_token(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("# nobody yet\n")
    tokens = Tokens("", str(path))
    assert tokens.configured  # a file set is a lock, even empty
    assert tokens.identify("anything") is None


def test_a_changed_file_is_taken_after_a_second_and_a_bad_one_keeps_the_old(tmp_path, caplog):
    path = tmp_path / "tokens"
    path.write_text("admin alice alice-1\nworker fleet fleet-1\n")
    clock = Clock()
    reloads = []
    tokens = Tokens(
        "", str(path), clock, on_reload=lambda p, entries, digest: reloads.append(len(entries))
    )
    key = tokens.session_key

    path.write_text("admin alice alice-1\nworker fleet fleet-2-longer\n")  # fleet rotated
    clock.now += RECHECK_S / 2
    assert tokens.identify("fleet-1") == Identity("fleet", "worker")  # not looked at yet
    clock.now += RECHECK_S / 2
    assert tokens.identify("fleet-1") is None
    assert tokens.identify("fleet-2-longer") == Identity("fleet", "worker")
    assert reloads == [2]
    assert tokens.session_key != key  # every dashboard session ends

    caplog.set_level(logging.ERROR, logger="dispatcher")
    path.write_text("admin alice alice-1\nworker fleet\n")  # saved half-way
    for _ in range(3):
        clock.now += RECHECK_S
        assert tokens.identify("fleet-2-longer") == Identity("fleet", "worker")
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        f"API_TOKENS_FILE not reloaded, the tokens in force stay: {path} line 2: "
        "expected ROLE NAME TOKEN (3 fields), got 2"
    ]
    path.unlink()  # gone: still the tokens in force, one more line
    clock.now += RECHECK_S
    assert tokens.identify("alice-1") == Identity("alice", "admin")
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 2

    path.write_text("read alice alice-1\n")  # fixed: taken
    clock.now += RECHECK_S
    assert tokens.identify("alice-1") == Identity("alice", "read")
    assert tokens.identify("fleet-2-longer") is None
    assert reloads == [2, 1]


def test_a_clock_stepped_back_still_looks_at_the_file(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("admin alice alice-1\n")
    clock = Clock()
    tokens = Tokens("", str(path), clock)
    path.write_text("admin alice alice-2-longer\n")
    clock.now -= 3600
    assert tokens.identify("alice-2-longer") == Identity("alice", "admin")


def test_holds_says_whether_a_sessions_identity_is_still_in_force(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("read grafana g-1\n")
    clock = Clock()
    tokens = Tokens("", str(path), clock)
    assert tokens.holds(Identity("grafana", "read"))
    assert not tokens.holds(Identity("grafana", "admin"))
    path.write_text("admin grafana g-1\n")
    clock.now += RECHECK_S
    assert not tokens.holds(Identity("grafana", "read"))


def test_the_dispatcher_s_master_checks_the_file_without_importing_flask():
    """gunicorn's master must not import Flask (nor anything that imports threading's
    locks through it) before it forks the gevent server processes: the processes then
    log 'Exception ignored in _removeHandlerRef' at every stop. The tokens file is
    checked in the master, through common/tokens_file.py."""
    import subprocess
    import sys

    code = (
        "import sys, dispatcher.__main__, common.config;"
        "print(sorted(m for m in ('flask', 'werkzeug', 'dispatcher.app') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
