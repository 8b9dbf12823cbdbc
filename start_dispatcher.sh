#!/usr/bin/env bash
# Start the dispatcher (gunicorn, gevent workers) on DISPATCHER_HOST:DISPATCHER_PORT.
# Creates .venv and installs requirements.txt on first use.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$root/scripts/ensure_venv.sh" requirements.txt
cd "$root"
exec "$root/.venv/bin/python" -m dispatcher "$@"
