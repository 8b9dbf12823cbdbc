#!/usr/bin/env bash
# Run the whole test suite: lint, format check, then pytest (extra arguments go to pytest).
# Creates .venv and installs requirements-dev.txt on first use, and Chromium for the
# browser tests (scripts/install_browser.sh: apt-get, as root or through sudo).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$root/scripts/ensure_venv.sh" requirements-dev.txt
# Without a browser the other tests still run; the browser tests fail, naming the script.
"$root/scripts/install_browser.sh" || echo "run_tests.sh: no browser: tests/browser will fail" >&2
cd "$root"
echo "== ruff check" >&2
.venv/bin/ruff check .
echo "== ruff format --check" >&2
.venv/bin/ruff format --check .
echo "== pytest" >&2
exec .venv/bin/python -m pytest "$@"
