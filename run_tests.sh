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
if [ $# -gt 0 ] || [ "${PYTEST_SPLIT:-1}" = 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi
# The whole suite as two pytest processes at once (the machine's two cores): the tests
# that start real processes (dispatchers, workers, Chromium) one after another in this
# one, the in-process tests beside them, their output shown after (PYTEST_SPLIT=0: all
# in one process, one after another).
for dir in tests/*/; do  # every directory of tests is in one of the two runs
  case "$dir" in
    tests/unit/|tests/api/|tests/storage/|tests/integration/|tests/browser/|tests/fixtures/) ;;
    *) if compgen -G "$dir/test_*.py" >/dev/null; then
         echo "run_tests.sh: $dir is in neither pytest run: add it" >&2; exit 2
       fi ;;
  esac
done
inproc_log="$(mktemp)"
trap 'rm -f "$inproc_log"' EXIT
.venv/bin/python -m pytest tests/unit tests/api tests/storage >"$inproc_log" 2>&1 &
inproc=$!
echo "== pytest tests/integration tests/browser (tests/unit, api, storage: beside it)" >&2
processes=0
.venv/bin/python -m pytest tests/integration tests/browser || processes=$?
in_process=0
wait "$inproc" || in_process=$?
echo "== pytest tests/unit tests/api tests/storage" >&2
cat "$inproc_log"
if [ "$processes" -ne 0 ] || [ "$in_process" -ne 0 ]; then
  echo "run_tests.sh: failed (tests/integration, tests/browser: exit $processes; tests/unit, api, storage: exit $in_process)" >&2
  exit 1
fi
