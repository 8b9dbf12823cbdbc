"""Run the benchmark inside the project's .venv with requirements-bench.txt installed.

Mirrors common/bootstrap.py (standard library only, so it runs before any third-party
import), with two differences: it installs requirements-bench.txt (the dev requirements
plus matplotlib), and it runs scripts/ensure_venv.sh even inside the venv, because a venv
made by `./run_tests.sh` or `./start_dispatcher.sh` lacks matplotlib. A stamp makes the
script instant once the file is installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
VENV = PROJECT_ROOT / ".venv"
VENV_PYTHON = VENV / "bin" / "python"
ENSURE_SCRIPT = PROJECT_ROOT / "scripts" / "ensure_venv.sh"
REQUIREMENTS = "requirements-bench.txt"
REEXEC_MARK = "TASKQUEUE_BENCH_VENV_REEXEC"  # set across the exec, so a broken venv cannot loop


def in_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def ensure_bench_venv() -> None:
    """Install requirements-bench.txt into .venv if needed; outside the venv, exec this
    script again with .venv/bin/python. Also puts the project root on sys.path."""
    if str(PROJECT_ROOT) not in sys.path:
        sys.path.insert(0, str(PROJECT_ROOT))
    if not in_venv() and os.environ.get(REEXEC_MARK):
        _die(f"{VENV_PYTHON} does not run inside {VENV}; delete {VENV} and try again")
    try:
        done = subprocess.run(
            ["bash", str(ENSURE_SCRIPT), REQUIREMENTS],
            cwd=PROJECT_ROOT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except OSError as exc:
        _die(f"cannot run {ENSURE_SCRIPT}: {exc}")
    if done.returncode != 0:
        _die(
            f"could not set up {VENV} with {REQUIREMENTS} (scripts/ensure_venv.sh exited "
            f"with status {done.returncode}; see the messages above)"
        )
    if in_venv():
        os.environ.pop(REEXEC_MARK, None)  # not inherited by processes this one starts
        return
    if not os.access(VENV_PYTHON, os.X_OK):
        _die(f"{VENV_PYTHON} is missing after scripts/ensure_venv.sh")
    script = os.path.abspath(sys.argv[0])
    os.environ[REEXEC_MARK] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(VENV_PYTHON, [str(VENV_PYTHON), script, *sys.argv[1:]])


def _die(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)
