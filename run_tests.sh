#!/usr/bin/env bash
# Run the whole test suite: lint, format check, then pytest (extra arguments go to pytest).
# Creates .venv and installs requirements-dev.txt on first use.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$root/scripts/ensure_venv.sh" requirements-dev.txt
cd "$root"
echo "== ruff check" >&2
.venv/bin/ruff check .
echo "== ruff format --check" >&2
.venv/bin/ruff format --check .
echo "== pytest" >&2
exec .venv/bin/python -m pytest "$@"
