"""What TLS costs a client: single submissions and the round trip of one task, with
TLS off and on, alternately, on the same minutes (issue 19, docs/SECURITY.md).

    .venv/bin/python bench/tls_cost.py [--pairs 6]

Each run starts this tree's dispatcher (a fresh SQLite file; with TLS, a certificate
made by trustme for 127.0.0.1, TLS_CERT_FILE and TLS_KEY_FILE) and one worker, then
measures on one kept-alive session (requests, verifying against the test CA): `single`,
1,500 POST /submit-task after 200 to warm up (tasks/s); `round trip`, 50 sequential
no-ops, each POST /submit-task then GET /task/<id>?wait=10 until it answers completed
(p50 ms: peerbench's W2 measures the same). Needs requirements-dev.txt (trustme).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import trustme

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import ab_trees  # noqa: E402  (bench/, this script's directory)
from ab_trees import wait_up  # noqa: E402

from common.procs import clean_environ  # noqa: E402

NOOP = {"type": "compute", "payload": {"operation": "double", "value": 1}}


def start(args: list[str], env: dict) -> subprocess.Popen:
    """`python -m ARGS` of this tree, in a process group of its own."""
    return ab_trees.start(str(ROOT), [str(ROOT / ".venv/bin/python"), "-m", *args], env)


def measure(port: int, tls: dict | None) -> tuple[float, float]:
    """(single submissions per second, p50 round trip in ms) of one fresh cluster."""
    scheme = "https" if tls else "http"
    url = f"{scheme}://127.0.0.1:{port}"
    env = clean_environ()
    db = f"{tempfile.mkdtemp(prefix='tls-')}/tasks.db"
    env.update(DISPATCHER_PORT=str(port), DATABASE_URL=f"sqlite:///{db}", DISPATCHER_URL=url)
    env["LOG_LEVEL"] = "WARNING"
    if tls:
        env.update(tls)
    procs = [start(["dispatcher"], env)]
    http = requests.Session()
    http.verify = tls["DISPATCHER_CA_FILE"] if tls else True
    http.trust_env = False  # else REQUESTS_CA_BUNDLE in the environment wins over verify
    try:
        wait_up(http, url, 60)
        for _ in range(200):
            http.post(url + "/submit-task", json=NOOP).raise_for_status()
        t0 = time.perf_counter()
        for _ in range(1500):
            http.post(url + "/submit-task", json=NOOP).raise_for_status()
        single = 1500 / (time.perf_counter() - t0)
        http.post(url + "/submit-tasks", json={"tasks": [NOOP]}).raise_for_status()
        procs.append(start(["worker", "w-tls"], env))
        while http.get(url + "/stats").json()["tasks"]["pending"]:
            time.sleep(0.05)  # the worker drains the 1,701 submitted above
        trips = []
        for _ in range(55):
            t0 = time.perf_counter()
            task_id = http.post(url + "/submit-task", json=NOOP).json()["task_id"]
            while http.get(f"{url}/task/{task_id}?wait=10").json()["status"] != "completed":
                pass
            trips.append((time.perf_counter() - t0) * 1000)
        return single, statistics.median(trips[5:])
    finally:
        http.close()
        ab_trees.stop(procs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--port", type=int, default=5800)
    args = parser.parse_args()
    certs = Path(tempfile.mkdtemp(prefix="tls-certs-"))
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(certs / "ca.pem"))
    cert.private_key_pem.write_to_path(str(certs / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(certs / "cert.pem"))
    tls = {
        "TLS_CERT_FILE": str(certs / "cert.pem"),
        "TLS_KEY_FILE": str(certs / "key.pem"),
        "DISPATCHER_CA_FILE": str(certs / "ca.pem"),
    }
    off: list[tuple[float, float]] = []
    on: list[tuple[float, float]] = []
    for i in range(args.pairs):
        order = [(None, off), (tls, on)]
        for setting, out in order if i % 2 == 0 else reversed(order):
            out.append(measure(args.port + 2 * i + bool(setting), setting))  # own ports
        print(
            f"pair {i}: single {off[-1][0]:,.0f} -> {on[-1][0]:,.0f}/s, "
            f"round trip p50 {off[-1][1]:.2f} -> {on[-1][1]:.2f} ms",
            flush=True,
        )
    single = statistics.median(b[0] / a[0] for a, b in zip(off, on, strict=True))
    trip = statistics.median(b[1] / a[1] for a, b in zip(off, on, strict=True))
    print(
        f"TLS off: single {statistics.median(r[0] for r in off):,.0f}/s, round trip p50 "
        f"{statistics.median(r[1] for r in off):.2f} ms; TLS on: single "
        f"{statistics.median(r[0] for r in on):,.0f}/s, round trip p50 "
        f"{statistics.median(r[1] for r in on):.2f} ms; on/off: single {single:.3f}, "
        f"round trip {trip:.3f} (medians of the pairs' ratios)"
    )


if __name__ == "__main__":
    main()
