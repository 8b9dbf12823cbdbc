#!/usr/bin/env bash
# ensure_venv.sh [REQUIREMENTS_FILE]
# Makes sure .venv exists and has REQUIREMENTS_FILE (default requirements.txt) installed.
# A stamp holds the hash of what was installed, so later runs install nothing unless the
# file changed. Safe to run from several processes at once (flock).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
req="${1:-requirements.txt}"
venv="$root/.venv"
stamp="$venv/.installed-${req##*/}"

# The project's own modules, compiled once per edit. Python reads __pycache__ even under
# PYTHONDONTWRITEBYTECODE, which otherwise makes every start compile them again: ~20 ms
# of CPU per worker start, and peerbench's W1 starts four at once (docs/PERFORMANCE.md).
compiled="$venv/.compiled"
sources=("$root/common" "$root/dispatcher" "$root/worker" "$root/tasks" "$root/taskqueue")
compile_sources() {
  [ -x "$venv/bin/python" ] || return 0
  if [ -f "$compiled" ] && [ -z "$(find "${sources[@]}" -name '*.py' -newer "$compiled" -print -quit 2>/dev/null)" ]; then
    return 0
  fi
  touch "$compiled.$$" 2>/dev/null || return 0  # an edit made from now on: compiled next time
  "$venv/bin/python" -m compileall -q "${sources[@]}" >/dev/null 2>&1 || true
  mv -f "$compiled.$$" "$compiled"
}
trap compile_sources EXIT

# The common case without starting a process (every worker launch passes here): the
# stamp is newer than the files it was made from.
fresh() { [ -x "$venv/bin/python" ] && [ "$stamp" -nt "$root/requirements.txt" ] && [ "$stamp" -nt "$root/$req" ]; }
fresh && exit 0

want="$(cat "$root/requirements.txt" "$root/$req" | sha256sum | cut -d' ' -f1)"
installed() { [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; }
if installed; then  # touched (a checkout, an edit undone) but the same: skip the hash next time
  touch "$stamp"
  exit 0
fi

mkdir -p "$root/data"
exec 9>"$root/data/.venv.lock"
command -v flock >/dev/null && flock 9
installed && touch "$stamp" && exit 0
if [ ! -x "$venv/bin/python" ]; then
  echo "creating $venv ..." >&2
  "${PYTHON:-python3}" -m venv "$venv"
fi
echo "installing $req into .venv (first run only) ..." >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$root/$req" >&2
echo "$want" > "$stamp"
if [ "$req" != requirements.txt ]; then  # the dev file includes the runtime one
  cat "$root/requirements.txt" "$root/requirements.txt" | sha256sum | cut -d' ' -f1 \
    > "$venv/.installed-requirements.txt"
fi
