#!/usr/bin/env bash
# Start one worker: ./start_worker.sh WORKER_ID [--concurrency N] [--queues a,b] [--prefetch N|auto] [--burst]
# --burst: run what its queues have ready now, then exit (status 0: every task it took
# completed or failed by itself; 1: see docs/GUARANTEES.md, "Burst mode").
# Creates .venv and installs requirements.txt on first use.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
  echo "usage: ./start_worker.sh WORKER_ID [--concurrency N] [--queues a,b] [--prefetch N|auto] [--burst]" >&2
  exit 2
fi
"$root/scripts/ensure_venv.sh" requirements.txt
cd "$root"
exec "$root/.venv/bin/python" -m worker "$@"
