"""Configuration: environment over .env over defaults, one clear line per bad value."""

from __future__ import annotations

import pytest

from common.config import Config, ConfigError


def test_defaults_match_the_spec_table():
    c = Config.from_env({})
    assert (c.dispatcher_host, c.dispatcher_port) == ("127.0.0.1", 5000)
    assert c.database_url == "sqlite:///data/tasks.db"
    assert (c.lease_seconds, c.worker_dead_after, c.worker_poll_interval) == (120, 60, 5)
    assert (c.max_batch, c.max_wait_seconds, c.worker_prefetch) == (1000, 30, "auto")
    assert c.queues == ("default",)
    assert c.audit_retention_seconds == 90 * 86_400


def test_values_are_parsed_and_fractional_seconds_are_accepted():
    c = Config.from_env(
        {"LEASE_SECONDS": "0.5", "WORKER_QUEUES": "high, default", "MAX_BATCH": "7"}
    )
    assert c.lease_seconds == 0.5
    assert c.queues == ("high", "default")
    assert c.max_batch == 7


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("DISPATCHER_PORT", "abc"),
        ("DISPATCHER_PORT", "70000"),
        ("LEASE_SECONDS", "-1"),
        ("LEASE_SECONDS", "nan"),
        ("MAX_BATCH", "1.5"),
        ("MAX_BATCH", "0"),
        ("LOG_LEVEL", "LOUD"),
        ("LOG_FORMAT", "xml"),
        ("WORKER_PREFETCH", "-3"),
        ("WORKER_PREFETCH", "lots"),
        ("WORKER_QUEUES", " , "),
        ("WORKER_QUEUES", ",".join(f"q{i}" for i in range(101))),
        ("DISPATCHER_URL", "localhost:5000"),
        ("DATABASE_URL", "mysql://x"),
        ("WORKER_POLL_INTERVAL", "0"),
        ("WORKER_POLL_INTERVAL", "60"),
        ("CACHE_TTL_SECONDS", "0"),
        ("DEFAULT_MAX_RETRIES", "101"),
        ("DEFAULT_TASK_TIMEOUT", "9999999"),
        ("AUDIT_RETENTION_SECONDS", "0"),
        ("AUDIT_RETENTION_SECONDS", "-5"),
    ],
)
def test_a_bad_value_is_refused_with_a_message_naming_its_key(key, value):
    with pytest.raises(ConfigError) as caught:
        Config.from_env({key: value})
    assert key in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_environment_wins_over_the_dotenv_file(monkeypatch, tmp_path):
    import os

    import common.config as config_module

    monkeypatch.setattr(os, "environ", dict(os.environ))  # load_dotenv writes here
    (tmp_path / ".env").write_text("LEASE_SECONDS=7\nREAP_INTERVAL=3\n")
    monkeypatch.setattr(config_module, "PROJECT_ROOT", tmp_path)
    monkeypatch.setenv("LEASE_SECONDS", "9")
    c = Config.from_env()
    assert c.lease_seconds == 9  # from the environment
    assert c.reap_interval == 3  # from .env


def test_to_env_reproduces_the_configuration():
    c = Config.from_env({"LEASE_SECONDS": "2.5", "WORKER_QUEUES": "a,b"})
    assert Config.from_env(c.to_env()) == c


@pytest.fixture
def dotenv(tmp_path, monkeypatch):
    """A .env of the test's own, and an environment without our keys (restored after)."""
    import os
    from dataclasses import fields

    keys = {f.name.upper() for f in fields(Config)}
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k not in keys})
    monkeypatch.setattr("common.config.PROJECT_ROOT", tmp_path)
    return tmp_path / ".env"


def test_a_bad_value_from_dotenv_says_it_came_from_dotenv(dotenv):
    dotenv.write_text("LEASE_SECONDS=soon\n")
    with pytest.raises(ConfigError) as raised:
        Config.from_env()
    assert str(raised.value) == f"LEASE_SECONDS must be a number, not 'soon' (set in {dotenv})"


def test_a_bad_value_from_the_environment_says_so(dotenv):
    import os

    dotenv.write_text("LEASE_SECONDS=30\n")
    os.environ["LEASE_SECONDS"] = "-4"  # the environment wins over .env
    with pytest.raises(ConfigError) as raised:
        Config.from_env()
    assert str(raised.value).endswith("(set in the environment)"), raised.value
    os.environ["LEASE_SECONDS"] = "5"
    os.environ["WORKER_POLL_INTERVAL"] = "60"
    with pytest.raises(ConfigError, match=r"WORKER_POLL_INTERVAL .* \(set in the environment\)"):
        Config.from_env()


# -- TLS (issue 19, docs/SECURITY.md) ----------------------------------------------------


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"TLS_CERT_FILE": "/x/cert.pem"}, "TLS_KEY_FILE"),
        ({"TLS_KEY_FILE": "/x/key.pem"}, "TLS_CERT_FILE"),
    ],
)
def test_tls_cert_and_key_are_both_set_or_neither(env, key):
    with pytest.raises(ConfigError, match=f"^{key} must be set when"):
        Config.from_env(env)


def test_a_ca_file_that_is_missing_or_holds_no_certificate_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="^DISPATCHER_CA_FILE: cannot read"):
        Config.from_env({"DISPATCHER_CA_FILE": str(tmp_path / "nope.pem")})
    empty = tmp_path / "empty.pem"
    empty.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="^DISPATCHER_CA_FILE: .* holds no PEM certificate"):
        Config.from_env({"DISPATCHER_CA_FILE": str(empty)})


def test_check_tls_names_the_key_of_a_mismatched_pair(tmp_path):
    import trustme

    ca = trustme.CA()
    cert, other = ca.issue_cert("localhost"), ca.issue_cert("localhost")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    other.private_key_pem.write_to_path(str(tmp_path / "other.pem"))
    env = {"TLS_CERT_FILE": str(tmp_path / "cert.pem"), "TLS_KEY_FILE": str(tmp_path / "key.pem")}
    Config.from_env(env).check_tls()  # a matching pair
    env["TLS_KEY_FILE"] = str(tmp_path / "other.pem")
    with pytest.raises(ConfigError, match="^TLS_KEY_FILE: .* is not the key of the certificate"):
        Config.from_env(env).check_tls()
