"""`pip install .` into a fresh virtual environment, then `import taskqueue` from a
directory outside the project: the packages and the dashboard's files are installed,
and the example of docs/CLIENT.md runs against a real dispatcher with what was installed.

The project's files are copied first (pip builds in the source tree: build/ and
*.egg-info/ stay in the copy). The new environment reaches the requirements through a
.pth file naming the test interpreter's site-packages, so pip finds them installed and
downloads nothing but the build backend (setuptools, from the index or pip's cache)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
from harness import Cluster
from test_client import first_python_block

from common.config import PROJECT_ROOT

pytestmark = pytest.mark.integration

SKIP = shutil.ignore_patterns(
    ".venv", ".git", "data", "build", "*.egg-info", "__pycache__", ".*_cache", "out"
)
CHECK = """
import json, os, taskqueue, dispatcher.dashboard
from taskqueue import Client, TaskHandle, TaskFailed, TaskCancelled
here = os.path.dirname(dispatcher.dashboard.__file__)
print(json.dumps({
    "taskqueue": taskqueue.__file__,
    "templates": sorted(os.listdir(os.path.join(here, "templates"))),
    "static": sorted(os.listdir(os.path.join(here, "static"))),
}))
"""


def test_pip_install_then_import_from_outside_the_project(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(PROJECT_ROOT, source, ignore=SKIP)
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "requirements.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    pip = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert pip.returncode == 0, pip.stdout + pip.stderr

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(
        [python, "-c", CHECK], cwd=elsewhere, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert Path(found["taskqueue"]).is_relative_to(env_dir), found  # not the project's copy
    dashboard = PROJECT_ROOT / "dispatcher" / "dashboard"
    assert found["templates"] == sorted(p.name for p in (dashboard / "templates").iterdir())
    assert found["static"] == sorted(p.name for p in (dashboard / "static").iterdir())

    (tmp_path / "cluster").mkdir()
    cluster = Cluster(tmp_path / "cluster", LOG_LEVEL="WARNING")
    try:
        cluster.start_dispatcher()
        cluster.wait_worker_alive(cluster.start_worker("w1"))
        code = first_python_block(PROJECT_ROOT / "docs" / "CLIENT.md")
        run = subprocess.run(
            [python, "-c", code],
            cwd=elsewhere,
            env={**cluster.env(), "PYTHONPATH": ""},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout.splitlines()[-1] == "failed: boom"
    finally:
        cluster.close()
    assert sys.prefix != str(env_dir)  # the test's own interpreter was left alone
