"""Run a command-line script inside the project's .venv, creating it on first use.

The CLIs are started with whatever `python3` the user has, which may have none of our
requirements. `ensure_venv()` (standard library only, so it can run before anything else
is imported) makes sure `.venv` exists with requirements.txt installed, via
scripts/ensure_venv.sh (a stamp makes later calls instant), then replaces the current
process with the same script run by `.venv/bin/python`. Inside the venv it does nothing.
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
REEXEC_MARK = "TASKQUEUE_VENV_REEXEC"  # set across the exec, so a broken venv cannot loop


def in_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def ensure_venv(requirements: str = "requirements.txt") -> None:
    """Return once this script runs inside .venv with `requirements` installed; otherwise
    set that up and exec this script inside it. Inside the venv, requirements.txt is
    taken as installed (the start scripts install it); another file (the benchmark's) is
    checked through scripts/ensure_venv.sh, whose stamp makes that instant."""
    inside = in_venv()
    if inside and requirements == "requirements.txt":
        os.environ.pop(REEXEC_MARK, None)  # not inherited by processes this one starts
        return
    if not inside and os.environ.get(REEXEC_MARK):
        _die(f"{VENV_PYTHON} does not run inside {VENV}; delete {VENV} and try again")
    try:
        done = subprocess.run(
            ["bash", str(ENSURE_SCRIPT), requirements],
            cwd=PROJECT_ROOT,
            stdin=subprocess.DEVNULL,  # keep our stdin for the script (`--payload-file -`)
            check=False,
        )
    except OSError as exc:
        _die(f"cannot run {ENSURE_SCRIPT}: {exc}")
    if done.returncode != 0:
        _die(
            f"could not set up {VENV} with {requirements} (scripts/ensure_venv.sh exited "
            f"with status {done.returncode}; see the messages above)"
        )
    if inside:
        os.environ.pop(REEXEC_MARK, None)
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
