"""Start-up refusals: a bad setting stops a program with one line, before it serves."""

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
