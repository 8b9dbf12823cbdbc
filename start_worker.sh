#!/usr/bin/env bash
# Start one worker: ./start_worker.sh WORKER_ID [--concurrency N] [--queues a,b] [--prefetch N|auto]
# Creates .venv and installs requirements.txt on first use.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
  echo "usage: ./start_worker.sh WORKER_ID [--concurrency N] [--queues a,b] [--prefetch N|auto]" >&2
  exit 2
fi
"$root/scripts/ensure_venv.sh" requirements.txt
cd "$root"
exec "$root/.venv/bin/python" -m worker "$@"
