#!/usr/bin/env python3
"""The project's own benchmark: how cost grows with the queue, the workers and the claim
size, and how fast a held long poll wakes up.

    python bench/run.py [--quick] [--out DIR] [--update-results] [--waiting [N]]

Runs with any python3 (the first call installs requirements-bench.txt into .venv). Writes
DIR (default bench/out/, not committed): results.json, RESULTS.md, throughput.png and the
processes' logs. Only with --update-results (and not with --quick) does it rewrite
bench/RESULTS.md and bench/throughput.png, the committed copies.
Uses ports 5400-5499 and a temporary directory for the big databases.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project root

from common.bootstrap import ensure_venv  # noqa: E402

if __name__ == "__main__":
    ensure_venv("requirements-bench.txt")  # before third-party imports: re-runs in .venv

import cluster_bench  # noqa: E402
import report  # noqa: E402
import storage_bench  # noqa: E402
from procs import Ports  # noqa: E402

BENCH = Path(__file__).resolve().parent

# (sizes, tasks per throughput run, timeouts) by mode
FULL = {"sizes": (1_000, 100_000, 1_000_000), "tasks": 2_000}
QUICK = {"sizes": (1_000, 20_000, 100_000), "tasks": 1_000}
WORKER_COUNTS = (1, 2, 4, 8)
PREFETCHES = ("0", "9", "99", "auto")  # max_tasks 1, 10, 100 with concurrency 1; and auto
HOARD_PREFETCHES = ("auto", "50")
MEMORY_REQUESTS = 2_000
WAKE_REPS = 50
DRAIN_TIMEOUT_S = 1_800.0
RUN_TIMEOUT_S = 300.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes (about 4 min, not 10)")
    p.add_argument("--out", type=Path, default=BENCH / "out", help="output directory")
    p.add_argument(
        "--update-results",
        action="store_true",
        help="copy RESULTS.md and throughput.png over the committed ones in bench/ (full runs)",
    )
    p.add_argument(
        "--waiting",
        type=int,
        nargs="?",
        const=storage_bench.WAITING_DEFAULT,
        default=0,
        metavar="N",
        help="put N waiting tasks (default 100,000) beside the pending ones in the storage "
        "sizes: what they cost the claim (compare with a run without)",
    )
    return p.parse_args(argv)


def storage_steps(sizes: tuple[int, ...], ports: Ports, work: Path, waiting: int = 0) -> list[dict]:
    """Sections 1 and 2 for each size, one temporary database at a time (with `waiting`
    waiting tasks beside the pending ones)."""
    results = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="taskqueue-bench-") as tmp:
            path = Path(tmp) / "tasks.db"
            print(f"[storage] {n:,} tasks: load, claim, complete ...", flush=True)
            size = storage_bench.load_and_measure(path, n, DRAIN_TIMEOUT_S, waiting)
            print(
                f"  load {size['load']['rows_per_s']:,.0f} rows/s, "
                f"claim {size['claim']['tasks_per_s']:,.0f} tasks/s, "
                f"complete {size['complete']['tasks_per_s']:,.0f} tasks/s",
                flush=True,
            )
            print(f"[memory] dispatcher on {n:,} finished tasks ...", flush=True)
            size["memory"] = cluster_bench.dispatcher_memory(
                path, size.pop("sample_ids"), MEMORY_REQUESTS, ports, work / f"memory-{n}"
            )
            print(f"[retention] reap {n:,} finished tasks ...", flush=True)
            size["retention"] = storage_bench.measure_retention(path, DRAIN_TIMEOUT_S)
            results.append(size)
    return results


def run(quick: bool, out: Path, command: str, waiting: int = 0) -> dict:
    """Every section in turn; the results as one JSON-able dict."""
    mode = QUICK if quick else FULL
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ports = Ports()
    started = time.monotonic()
    results: dict = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": report.machine(),
        "command": command,
        "mode": "quick" if quick else "full",
        "throughput_tasks": mode["tasks"],
        "hoarding_mix": {
            "quick": cluster_bench.HOARD_QUICK,
            "slow": cluster_bench.HOARD_SLOW,
            "sleep_s": cluster_bench.HOARD_SLEEP_S,
        },
    }
    timings: dict[str, float] = {}
    mark = time.monotonic()

    def lap(name: str) -> None:
        nonlocal mark
        timings[name] = time.monotonic() - mark
        mark = time.monotonic()

    results["waiting"] = waiting
    results["storage"] = storage_steps(mode["sizes"], ports, work, waiting)
    lap("storage, memory and retention")
    print("[throughput] workers x max_tasks ...", flush=True)
    results["throughput"] = cluster_bench.throughput_grid(
        WORKER_COUNTS, PREFETCHES, mode["tasks"], ports, work / "throughput", RUN_TIMEOUT_S
    )
    lap("throughput")
    print("[hoarding] ...", flush=True)
    results["hoarding"] = [
        cluster_bench.hoarding_run(p, ports, work / f"hoarding-{p}", RUN_TIMEOUT_S)
        for p in HOARD_PREFETCHES
    ]
    lap("hoarding")
    print("[wake-up] two dispatchers, one database ...", flush=True)
    results["wakeup"] = cluster_bench.wakeup_bench(WAKE_REPS, ports, work / "wakeup")
    lap("wake-up")
    results["section_s"] = timings
    results["elapsed_s"] = time.monotonic() - started
    return results


def write(results: dict, out: Path, update: bool) -> Path:
    """results.json, RESULTS.md and throughput.png in `out`; with `update`, the last two
    copied over the committed ones in bench/. Returns where RESULTS.md is."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "RESULTS.md").write_text(report.markdown(results) + "\n")
    report.plot(results, out / "throughput.png")
    if update and out.resolve() != BENCH:
        shutil.copyfile(out / "RESULTS.md", BENCH / "RESULTS.md")
        shutil.copyfile(out / "throughput.png", BENCH / "throughput.png")
        return BENCH / "RESULTS.md"
    return out / "RESULTS.md"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    command = " ".join(["python bench/run.py", *argv])
    if args.update_results and args.quick:
        print("--update-results takes a full run: the committed results are not --quick")
        return 2
    out = args.out.resolve()
    results = run(args.quick, out, command, args.waiting)
    where = write(results, out, args.update_results)
    print(f"done in {results['elapsed_s'] / 60:.1f} min: {where}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
