"""Start-up: a bad setting stops a program with one line, before it serves; a dispatcher
open beyond loopback without a token says so once."""

from __future__ import annotations

import subprocess

import pytest

from common.config import PROJECT_ROOT


@pytest.mark.parametrize(
    ("script", "env", "key"),
    [
        ("./start_dispatcher.sh", {"DISPATCHER_PORT": "five"}, "DISPATCHER_PORT"),
        ("./start_dispatcher.sh", {"TASK_MODULES": "no_such_module_here"}, "TASK_MODULES"),
        ("./start_worker.sh", {"LEASE_SECONDS": "-2"}, "LEASE_SECONDS"),
        ("./start_worker.sh", {"TASK_MODULES": "no_such_module_here"}, "TASK_MODULES"),
        ("./start_cluster.sh", {"REAP_INTERVAL": "often"}, "REAP_INTERVAL"),
    ],
)
def test_a_bad_setting_stops_the_program_with_one_line_naming_the_key(cluster, script, env, key):
    args = [script, "worker-1"] if script == "./start_worker.sh" else [script]
    done = subprocess.run(
        args,
        cwd=PROJECT_ROOT,
        env=cluster.env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("configuration error: ") and key in lines[0]


@pytest.mark.parametrize("token", ["", "s3cret"], ids=["no-token", "token"])
def test_listening_beyond_loopback_without_a_token_warns_once(make_cluster, token):
    cluster = make_cluster(DISPATCHER_HOST="0.0.0.0", API_TOKEN=token)
    proc = cluster.start_dispatcher()
    warnings = [line for line in proc.log(tail=200).splitlines() if "without API_TOKEN" in line]
    if token:
        assert warnings == [], warnings
    else:
        assert len(warnings) == 1 and "dashboard" in warnings[0], proc.log()
