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
        "admin   ops-alice     alice-secret-1-0123456789\n"
        "  submit  webapp  " + sha("webapp-secret-0123456789") + "  \n"
        "worker  fleet         fleet-secret-0123456789\n"
        "read    grafana       "
        + sha("grafana-secret-0123456789").upper().replace("SHA256", "sha256")
        + "\n"
        "worker  fleet         fleet-secret-next-0123456789\n"
    )
    tokens = Tokens("env-secret", str(path))
    assert tokens.identify("alice-secret-1-0123456789") == Identity("ops-alice", "admin")
    assert tokens.identify("webapp-secret-0123456789") == Identity("webapp", "submit")
    assert tokens.identify(sha("webapp-secret-0123456789")) is None  # the digest is not the token
    assert tokens.identify("fleet-secret-0123456789") == Identity("fleet", "worker")
    assert tokens.identify("fleet-secret-next-0123456789") == Identity("fleet", "worker")
    assert tokens.identify("grafana-secret-0123456789") == Identity("grafana", "read")
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
        ("read alice short-token", "a token must be at least 16 characters (11 given)"),
        ("read env a-long-enough-token", "name 'env' is reserved (env, anonymous, system)"),
        ("read system a-long-enough-token", "name 'system' is reserved"),
        ("read alice sha256:" + "g" * 64, "a sha256: token takes the 64 hex digits"),
        ("read bob one-token-0123456789", "the same token as line 2"),
        ("read bob " + sha("one-token-0123456789"), "the same token as line 2"),
    ],
)
def test_a_bad_line_is_named_with_its_file_and_number(line, why):
    text = "# tokens\nadmin alice one-token-0123456789\n" + line + "\n"
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
    path.write_text("admin alice alice-1-0123456789\nworker fleet fleet-1-0123456789\n")
    clock = Clock()
    reloads = []
    tokens = Tokens(
        "", str(path), clock, on_reload=lambda p, entries, digest: reloads.append(len(entries))
    )
    key = tokens.session_key

    path.write_text(
        "admin alice alice-1-0123456789\nworker fleet fleet-2-longer-0123456789\n"
    )  # fleet rotated
    clock.now += RECHECK_S / 2
    assert tokens.identify("fleet-1-0123456789") == Identity("fleet", "worker")  # not looked at yet
    clock.now += RECHECK_S / 2
    assert tokens.identify("fleet-1-0123456789") is None
    assert tokens.identify("fleet-2-longer-0123456789") == Identity("fleet", "worker")
    assert reloads == [2]
    assert tokens.session_key != key  # every dashboard session ends

    caplog.set_level(logging.ERROR, logger="dispatcher")
    path.write_text("admin alice alice-1-0123456789\nworker fleet\n")  # saved half-way
    for _ in range(3):
        clock.now += RECHECK_S
        assert tokens.identify("fleet-2-longer-0123456789") == Identity("fleet", "worker")
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        f"API_TOKENS_FILE not reloaded, the tokens in force stay: {path} line 2: "
        "expected ROLE NAME TOKEN (3 fields), got 2"
    ]
    path.unlink()  # gone: still the tokens in force, one more line (a deleted file too)
    clock.now += RECHECK_S
    assert tokens.identify("alice-1-0123456789") == Identity("alice", "admin")
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 2

    path.write_text("read alice alice-1-0123456789\n")  # fixed: taken
    clock.now += RECHECK_S
    assert tokens.identify("alice-1-0123456789") == Identity("alice", "read")
    assert tokens.identify("fleet-2-longer-0123456789") is None
    assert reloads == [2, 1]


def test_a_clock_stepped_back_still_looks_at_the_file(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("admin alice alice-1-0123456789\n")
    clock = Clock()
    tokens = Tokens("", str(path), clock)
    path.write_text("admin alice alice-2-longer-0123456789\n")
    clock.now -= 3600
    assert tokens.identify("alice-2-longer-0123456789") == Identity("alice", "admin")


def test_holds_says_whether_a_sessions_identity_is_still_in_force(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("read grafana g-1-0123456789abc\n")
    clock = Clock()
    tokens = Tokens("", str(path), clock)
    assert tokens.holds(Identity("grafana", "read"))
    assert not tokens.holds(Identity("grafana", "admin"))
    path.write_text("admin grafana g-1-0123456789abc\n")
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


def test_a_bom_and_crlf_line_ends_are_read_as_an_editor_wrote_them(tmp_path):
    path = tmp_path / "tokens"
    path.write_bytes(
        b"\xef\xbb\xbfadmin ops ops-token-0123456789\r\nread r rd-token-0123456789\r\n"
    )
    tokens = Tokens("", str(path))
    assert tokens.identify("ops-token-0123456789") == Identity("ops", "admin")
    assert tokens.identify("rd-token-0123456789") == Identity("r", "read")


def test_a_server_process_started_while_the_file_is_bad_fails_closed_until_it_is_fixed(
    tmp_path, caplog
):
    path = tmp_path / "tokens"
    path.write_text("admin ops\n")
    clock = Clock()
    with caplog.at_level(logging.ERROR, logger="dispatcher"):
        tokens = Tokens("env-token-0123456789", str(path), clock, strict=False)
    assert "API_TOKENS_FILE unusable, only API_TOKEN's tokens work" in caplog.text
    assert tokens.identify("env-token-0123456789") == Identity("env", "admin")
    assert tokens.identify("ops") is None
    clock.now += RECHECK_S
    assert tokens.identify("env-token-0123456789") is not None
    assert caplog.text.count("API_TOKENS_FILE") == 1  # the same bad file: said once
    path.write_text("admin ops ops-token-0123456789\n")
    clock.now += RECHECK_S
    assert tokens.identify("ops-token-0123456789") == Identity("ops", "admin")


def test_a_deleted_file_keeps_the_tokens_and_says_so(tmp_path, caplog):
    path = tmp_path / "tokens"
    path.write_text("admin ops ops-token-0123456789\n")
    clock = Clock()
    tokens = Tokens("", str(path), clock)
    path.unlink()
    clock.now += RECHECK_S
    with caplog.at_level(logging.ERROR, logger="dispatcher"):
        assert tokens.identify("ops-token-0123456789") == Identity("ops", "admin")
    assert "API_TOKENS_FILE not reloaded, the tokens in force stay" in caplog.text


@pytest.mark.parametrize("value", [",", " , ,", "  "])
def test_an_api_token_of_commas_and_blanks_is_refused_not_open(value):
    from common.config import Config, ConfigError

    if not value.strip():
        assert not Tokens(value).configured  # blank: no token, as unset
        return
    with pytest.raises(ConfigError, match="API_TOKEN holds no token"):
        Config.from_env({"API_TOKEN": value})
