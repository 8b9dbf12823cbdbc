#!/usr/bin/env bash
# The quick start: a dispatcher and N workers in one terminal. Ctrl-C stops them all:
# workers first (they finish or give back their tasks), then the dispatcher.
#   ./start_cluster.sh [--workers N] [--concurrency N]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
workers=2
worker_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) workers="${2:?--workers needs a number}"; shift 2 ;;
    --workers=*) workers="${1#*=}"; shift ;;
    --concurrency|--queues|--prefetch) worker_args+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
    -h|--help) sed -n '2,4p' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (usage: ./start_cluster.sh [--workers N] [--concurrency N])" >&2; exit 2 ;;
  esac
done
case "$workers" in ''|*[!0-9]*) echo "--workers must be a whole number, not '$workers'" >&2; exit 2 ;; esac

"$root/scripts/ensure_venv.sh" requirements.txt
cd "$root"
py="$root/.venv/bin/python"
"$py" -m common.config || exit 2  # a bad setting: one line naming the key

set -m  # each child in its own process group: Ctrl-C reaches this script only
worker_pids=()
dispatcher_pid=""
stop_all() {
  trap - INT TERM
  echo "stopping ${#worker_pids[@]} worker(s), then the dispatcher ..." >&2
  [ ${#worker_pids[@]} -gt 0 ] && kill -TERM "${worker_pids[@]}" 2>/dev/null || true
  for pid in "${worker_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -n "$dispatcher_pid" ] && kill -TERM "$dispatcher_pid" 2>/dev/null || true
  [ -n "$dispatcher_pid" ] && wait "$dispatcher_pid" 2>/dev/null || true
  exit 0
}
trap stop_all INT TERM

"$py" -m dispatcher &
dispatcher_pid=$!
"$py" - "$dispatcher_pid" <<'PY' || { echo "the dispatcher did not start; see its log above" >&2; stop_all; }
import os, sys, time, urllib.request
from common.config import Config
url = Config.from_env().dispatcher_url.split(",")[0].rstrip("/") + "/health"
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        os.kill(int(sys.argv[1]), 0)
    except OSError:
        sys.exit(1)
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            if r.status == 200:
                sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit(1)
PY
for i in $(seq 1 "$workers"); do
  "$py" -m worker "worker-$i" "${worker_args[@]}" &
  worker_pids+=($!)
done
echo "cluster up: dispatcher and $workers worker(s); Ctrl-C stops all" >&2
wait "$dispatcher_pid" || true
stop_all
