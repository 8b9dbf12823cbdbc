#!/usr/bin/env bash
# The quick start: one dispatcher (or several) and N workers in one terminal. Ctrl-C stops
# them all: workers first (they finish or give back their tasks), then the dispatchers.
#   ./start_cluster.sh [--workers N] [--dispatchers N] [--concurrency N] [--queues a,b] [--prefetch N|auto]
#   --workers N       worker processes, named worker-1 ... worker-N (default 2)
#   --dispatchers N   dispatchers on ports DISPATCHER_PORT, DISPATCHER_PORT+1, ... sharing
#                     DATABASE_URL (SQLite or PostgreSQL; default 1). With more than one,
#                     the workers get DISPATCHER_URL listing them all: each starts on one
#                     of them and moves to the next when it stops answering. Clients may
#                     use any of the ports (see docs/LOAD_BALANCING.md). A dispatcher
#                     that dies is not restarted; the cluster stops when none is left.
#   --concurrency, --queues, --prefetch   passed to every worker (see start_worker.sh)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
usage="usage: ./start_cluster.sh [--workers N] [--dispatchers N] [--concurrency N] [--queues a,b] [--prefetch N|auto]"
workers=2
dispatchers=1
worker_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) workers="${2:?--workers needs a number}"; shift 2 ;;
    --workers=*) workers="${1#*=}"; shift ;;
    --dispatchers) dispatchers="${2:?--dispatchers needs a number}"; shift 2 ;;
    --dispatchers=*) dispatchers="${1#*=}"; shift ;;
    --concurrency|--queues|--prefetch) worker_args+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $1 ($usage)" >&2; exit 2 ;;
  esac
done
case "$workers" in ''|*[!0-9]*) echo "--workers must be a whole number, not '$workers'" >&2; exit 2 ;; esac
case "$dispatchers" in
  ''|*[!0-9]*|0) echo "--dispatchers must be a whole number >= 1, not '$dispatchers'" >&2; exit 2 ;;
esac

"$root/scripts/ensure_venv.sh" requirements.txt
cd "$root"
py="$root/.venv/bin/python"
"$py" -m common.config || exit 2  # a bad setting: one line naming the key
# With API_TOKENS_FILE, API_TOKEN is the workers' token (one of the file's, a worker's):
# the dispatchers start without it, so that it is not also an admin (docs/SECURITY.md)
tokens_file="$("$py" -c 'from common.config import Config; print(Config.from_env().api_tokens_file)')"
dispatcher_env=()
if [ -n "$tokens_file" ]; then
  if ! "$py" -c 'from common.config import Config; raise SystemExit(0 if Config.from_env().api_token else 1)'; then
    echo "API_TOKENS_FILE is set but API_TOKEN is not: the workers this script starts send API_TOKEN (set it to a worker token of the file: docs/SECURITY.md)" >&2
    exit 2
  fi
  dispatcher_env=(API_TOKEN=)
fi

# host:port of the first dispatcher, and the URL the others are reached at
# (https with TLS_CERT_FILE: docs/SECURITY.md)
read -r scheme host first_port < <("$py" -c '
from common.config import Config
c = Config.from_env()
host = "127.0.0.1" if c.dispatcher_host in ("0.0.0.0", "::", "") else c.dispatcher_host
print("https" if c.tls_cert_file else "http", f"[{host}]" if ":" in host else host, c.dispatcher_port)')
last_port=$((first_port + dispatchers - 1))
if [ "$last_port" -gt 65535 ]; then
  echo "--dispatchers $dispatchers: ports $first_port-$last_port go past 65535 (DISPATCHER_PORT)" >&2
  exit 2
fi
urls=()
for port in $(seq "$first_port" "$last_port"); do urls+=("$scheme://$host:$port"); done

# Each port must be free: otherwise another server (another cluster's dispatcher, say)
# would answer the health check and the workers, and this cluster's own dispatcher
# would fail to bind behind it.
for port in $(seq "$first_port" "$last_port"); do
  if ! "$py" - "$host" "$port" <<'PY'
import socket, sys
host = sys.argv[1].strip("[]")
family = socket.AF_INET6 if ":" in host else socket.AF_INET
with socket.socket(family) as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
    try:
        s.bind((host, int(sys.argv[2])))
    except OSError:
        sys.exit(1)
PY
  then
    echo "port $port on $host is already in use (another dispatcher?): stop it, or set DISPATCHER_PORT" >&2
    exit 1
  fi
done

set -m  # each child in its own process group: Ctrl-C reaches this script only
worker_pids=()
dispatcher_pids=()
stop_all() {
  trap - INT TERM
  echo "stopping ${#worker_pids[@]} worker(s), then ${#dispatcher_pids[@]} dispatcher(s) ..." >&2
  [ ${#worker_pids[@]} -gt 0 ] && kill -TERM "${worker_pids[@]}" 2>/dev/null || true
  for pid in "${worker_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ ${#dispatcher_pids[@]} -gt 0 ] && kill -TERM "${dispatcher_pids[@]}" 2>/dev/null || true
  for pid in "${dispatcher_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  exit 0
}
trap stop_all INT TERM

wait_healthy() {  # PID URL: until URL/health answers 200, or PID exits (status 1)
  "$py" - "$1" "$2" <<'PY'
import os, sys, time
from common.client import ApiError, Client, DispatcherUnreachable
from common.config import Config
pid, url = int(sys.argv[1]), sys.argv[2]
ca_file = Config.from_env().dispatcher_ca_file  # an https dispatcher is verified with it
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(1)
    try:
        with Client(url, read_timeout=1, ca_file=ca_file) as client:
            client.call("GET", "/health")  # any answer below 400, as a 200 before
            sys.exit(0)
    except (DispatcherUnreachable, ApiError):
        time.sleep(0.1)
sys.exit(1)
PY
}

if [ "$dispatchers" -eq 1 ]; then
  env "${dispatcher_env[@]}" "$py" -m dispatcher &
  dispatcher_pids+=($!)
  # the health check goes where the workers will look (DISPATCHER_URL, first entry)
  check_url="$("$py" -c 'from common.config import Config; print(Config.from_env().dispatcher_urls[0])')"
  wait_healthy "${dispatcher_pids[0]}" "$check_url" ||
    { echo "the dispatcher did not start; see its log above" >&2; stop_all; }
else
  # one after the other: each is healthy (schema ready) before the next starts
  for i in "${!urls[@]}"; do
    env "${dispatcher_env[@]}" DISPATCHER_PORT=$((first_port + i)) "$py" -m dispatcher &
    dispatcher_pids+=($!)
    wait_healthy "$!" "${urls[$i]}" ||
      { echo "the dispatcher on port $((first_port + i)) did not start; see its log above" >&2; stop_all; }
  done
  DISPATCHER_URL="$(IFS=,; echo "${urls[*]}")"
  export DISPATCHER_URL
fi
for i in $(seq 1 "$workers"); do
  "$py" -m worker "worker-$i" "${worker_args[@]}" &
  worker_pids+=($!)
done
if [ "$dispatchers" -eq 1 ]; then
  echo "cluster up: dispatcher and $workers worker(s); Ctrl-C stops all" >&2
else
  echo "cluster up: $dispatchers dispatchers (DISPATCHER_URL=$DISPATCHER_URL) and $workers worker(s); Ctrl-C stops all" >&2
fi
for pid in "${dispatcher_pids[@]}"; do wait "$pid" || true; done  # until none is left
stop_all
