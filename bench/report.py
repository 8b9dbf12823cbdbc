"""Turn the benchmark's results into markdown tables (RESULTS.md) and a PNG plot."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from common.config import PROJECT_ROOT

MIB = 1024 * 1024


def machine() -> dict:
    """What the numbers were measured on: CPUs, CPU model, Python, git commit."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "commit": _git("rev-parse", "--short", "HEAD") or "unknown",
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "load_average": os.getloadavg()[0],
    }


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def _n(value: float) -> str:
    return f"{value:,.0f}"


def _mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def _tasks_of(per_worker: dict, name: str) -> str:
    return str(per_worker.get(name, {}).get("tasks", 0))


def _workers(k: int) -> str:
    return f"{k} worker" if k == 1 else f"{k} workers"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def claim_cap(prefetch: str) -> str:
    """The max_tasks a worker with concurrency 1 asks for: 1 + prefetch, or auto."""
    return "auto" if prefetch == "auto" else str(int(prefetch) + 1)


def storage_section(sizes: list[dict], quick: bool) -> list[str]:
    """Section 1: load, claim and complete throughput by queue size, and the plan."""
    first = sizes[0]
    rows = []
    for s in sizes:
        rows.append(
            [
                _n(s["size"]),
                _n(s["load"]["rows_per_s"]),
                _n(s["claim"]["tasks_per_s"]),
                f"{s['claim']['tasks_per_s'] / first['claim']['tasks_per_s']:.2f}",
                _n(s["complete"]["tasks_per_s"]),
                f"{s['complete']['tasks_per_s'] / first['complete']['tasks_per_s']:.2f}",
                f"{_n(s['claim']['tasks'])} / {_n(s['complete']['tasks'])}",
                _n(s["drain"]["tasks_per_s"]) if s["drain"]["tasks"] else "-",
            ]
        )
    last = sizes[-1]
    claim_ratio = last["claim"]["tasks_per_s"] / first["claim"]["tasks_per_s"]
    done_ratio = last["complete"]["tasks_per_s"] / first["complete"]["tasks_per_s"]
    verdict = "met" if min(claim_ratio, done_ratio) >= 0.5 else "NOT met"
    scope = (
        f"(quick mode: the largest size is {_n(last['size'])}, so this only approximates "
        "the target's 1,000,000 row)"
        if quick
        else ""
    )
    lines = [
        "## 1. Claim and complete throughput against queue size",
        "",
        "Storage API only (no HTTP), one SQLite file with the dispatcher's settings (WAL, "
        "`synchronous=FULL`). N pending `compute/double` tasks are bulk-loaded with "
        "`storage.submit` in batches of 10,000; then `claim(max_tasks=100)` is called until "
        "20,000 tasks are claimed, 2 s pass or the queue is empty, and those tasks are "
        "completed with `finish()` in batches of 100 (again for at most 2 s). The rest of the "
        "table is then finished in batches of 1,000 (last column) for the next section.",
        "",
        *_table(
            [
                "pending tasks",
                "load rows/s",
                "claim tasks/s",
                "claim vs first row",
                "complete tasks/s",
                "complete vs first row",
                "tasks claimed / completed while measured",
                "finish-the-rest tasks/s",
            ],
            rows,
        ),
        "",
        f"Target (issue 5): the largest row at least half the smallest. Largest / smallest: "
        f"claim {claim_ratio:.2f}, complete {done_ratio:.2f}: **{verdict}** {scope}".rstrip(),
        "",
        f"`EXPLAIN QUERY PLAN` of the claim statement (`CLAIM` in "
        f"`dispatcher/storage/sqlite.py`) with {_n(last['size'])} pending tasks:",
        "",
        "```",
        *last["plan"],
        "```",
        "",
    ]
    return lines


def memory_section(sizes: list[dict]) -> list[str]:
    """Section 2: bytes per finished task, dispatcher RSS, and retention."""
    disk_rows, rss_rows, keep_rows = [], [], []
    for s in sizes:
        d, m, r = s["disk"], s["memory"], s["retention"]
        total = d["db_bytes"] + d["wal_bytes"]
        logical = d["page_count"] * d["page_size"]
        disk_rows.append(
            [
                _n(s["size"]),
                _n(d["db_bytes"]),
                _n(d["wal_bytes"]),
                _n(total / s["size"]),
                _n(logical),
                _n(logical / s["size"]),
            ]
        )
        rss_rows.append(
            [
                _n(s["size"]),
                _mib(m["master_kib"]),
                _mib(m["idle_kib"]),
                _mib(m["after_stats_kib"]),
                _mib(m["after_requests_kib"]),
                f"{m['first_stats_ms']:.0f}",
                f"{_n(m['requests'])} at {_n(m['requests_per_s'])}/s",
            ]
        )
        after = r["after"]
        keep_rows.append(
            [
                _n(s["size"]),
                _n(r["deleted"]),
                f"{r['reap_calls']} (at most {_n(r['most_per_call'])} rows each)",
                f"{r['seconds']:.2f} ({_n(r['rows_per_s'])} rows/s)",
                _n(after["db_bytes"]),
                _n(after["wal_bytes"]),
                f"{_n(after['freelist_pages'])} ({after['freelist_bytes'] / MIB:.1f} MiB)",
            ]
        )
    per_call = max(s["retention"]["most_per_call"] for s in sizes)
    return [
        "## 2. Memory and disk per finished task",
        "",
        "After every task of section 1 is completed (one attempt each, a row in `tasks` and "
        "one in `attempts`). Files measured while the storage is still open, so the `-wal` "
        "counts too; the database's own size is `page_count x page_size` (its pages in the "
        "file and in the WAL, i.e. the file's size after a checkpoint).",
        "",
        *_table(
            [
                "finished tasks",
                "db file bytes",
                "-wal bytes",
                "(db + wal) bytes/task",
                "database bytes",
                "database bytes/task",
            ],
            disk_rows,
        ),
        "",
        "Dispatcher memory: `./start_dispatcher.sh` with `DISPATCHER_PROCESSES=1` on that "
        "database; VmRSS (MiB) of the gunicorn worker process, idle after `/health`, after "
        "one `GET /stats`, and after a few thousand requests (`GET /task/<id>`, with "
        "`GET /tasks?limit=100` every 20th and `GET /stats` every 100th).",
        "",
        *_table(
            [
                "finished tasks",
                "master RSS",
                "worker RSS idle",
                "after /stats",
                "after the requests",
                "first /stats ms",
                "requests",
            ],
            rss_rows,
        ),
        "",
        "TASK_RETENTION_SECONDS: `storage.reap()` with a clock 30 days past every finish and "
        "a 60 s retention, called until it deletes nothing. SQLite does not shrink the file "
        "without `VACUUM`; the freed pages are reused by later inserts (`PRAGMA "
        "freelist_count`).",
        "",
        *_table(
            [
                "finished tasks",
                "rows deleted",
                "reap calls",
                "seconds",
                "db bytes after",
                "-wal bytes after",
                "free pages (reusable)",
            ],
            keep_rows,
        ),
        "",
        f"One `reap()` call deleted at most {_n(per_call)} finished tasks here (its "
        "`_delete_finished` takes 5,000 a call), and the dispatcher's reaper calls it once "
        "per REAP_INTERVAL (5 s by default) in each server process: about 1,000 rows/s per "
        "process at most, so a backlog of finished tasks past their retention drains at that "
        "pace, not at the rate measured above.",
        "",
    ]


def throughput_section(runs: list[dict], tasks: int) -> list[str]:
    """Section 3: tasks/s against workers and claim size."""
    counts = sorted({r["workers"] for r in runs})
    prefetches = list(dict.fromkeys(r["prefetch"] for r in runs))
    by = {(r["prefetch"], r["workers"]): r for r in runs}
    pivot = [
        [claim_cap(p), p] + [_n(by[(p, k)]["tasks_per_s"]) if (p, k) in by else "" for k in counts]
        for p in prefetches
    ]
    detail = [
        [
            str(r["workers"]),
            claim_cap(r["prefetch"]),
            f"{r['wall_s']:.2f}",
            f"{r['first_s']:.2f}" if r["first_s"] is not None else "",
            _n(r["tasks_per_s"]),
            f"{r['tasks_per_claim']:.1f}",
            " ".join(_tasks_of(r["per_worker"], f"w{i + 1}") for i in range(r["workers"])),
            str(r["failed"]),
        ]
        for r in runs
    ]
    return [
        "## 3. Throughput against workers and max_tasks",
        "",
        f"A fresh `./start_dispatcher.sh` (defaults: 2 processes x 16 threads) and database per "
        f"run; {_n(tasks)} `compute/double` tasks submitted with `POST /submit-tasks`, then K "
        "`./start_worker.sh` launched (WORKER_CONCURRENCY=1, so a get-task asks for at most "
        "1 + WORKER_PREFETCH tasks: the max_tasks column). Timed from the workers' launch "
        "until `GET /stats` (polled every 20 ms) counts every task finished, so worker "
        "start-up is included. tasks/s:",
        "",
        *_table(["max_tasks", "WORKER_PREFETCH", *[_workers(k) for k in counts]], pivot),
        "",
        "Every run: wall and first-result time from the launch, and how many tasks a "
        "non-empty claim carried on average (distinct (worker, claim time) pairs in "
        "`attempts`): a worker tops its buffer up as tasks finish, so its later claims ask "
        "for fewer than max_tasks.",
        "",
        *_table(
            [
                "workers",
                "max_tasks",
                "wall s",
                "first result s",
                "tasks/s",
                "tasks per claim",
                "tasks per worker (w1 w2 ...)",
                "failed",
            ],
            detail,
        ),
        "",
    ]


def hoarding_section(runs: list[dict], quick: int, slow: int, sleep_s: float) -> list[str]:
    """Section 4: does one worker hoard the long tasks?"""
    rows = []
    for r in runs:
        ran = r["ran"]
        rows.append(
            [
                r["prefetch"],
                f"{r['wall_s']:.2f}",
                *[f"{ran[w]['sleep']} sleeps, {ran[w]['quick']} quick" for w in sorted(ran)],
            ]
        )
    names = sorted(runs[0]["ran"]) if runs else []
    ideal = slow * sleep_s / 2
    return [
        "## 4. Hoarding check",
        "",
        f"Two idle workers (concurrency 1), then one `POST /submit-tasks` of {quick} "
        f"`compute/double` tasks followed by {slow} `sleep` tasks of {sleep_s:g} s. Wall "
        f"time from the submission until all are finished; who ran what (`worker_id` of "
        f"`GET /task/<id>`). Shared fairly the wall is about {ideal:g} s; one worker "
        f"hoarding every sleep makes it about {2 * ideal:g} s.",
        "",
        *_table(["WORKER_PREFETCH", "wall s", *names], rows),
        "",
    ]


def wakeup_section(result: dict) -> list[str]:
    """Section 5: long-poll wake-up latency."""
    rows = []
    for key, label in (("across", "dispatcher B (other process)"), ("same", "dispatcher A")):
        r = result[key]
        resp, req = r["from_response"], r["from_request"]
        rows.append(
            [
                label,
                str(r["reps"]),
                f"{resp['p50']:.2f}",
                f"{resp['p95']:.2f}",
                f"{resp['max']:.2f}",
                f"{req['p50']:.2f}",
            ]
        )
    return [
        "## 5. Long-poll wake-up latency",
        "",
        "Two dispatchers (`DISPATCHER_PROCESSES=1` each) on two ports sharing one database "
        "file. A thread holds `POST /get-task` (`wait=10`, worker `bench`) on dispatcher A; "
        "0.1 s later the main thread submits one task with `POST /submit-task`. Time (ms) "
        "from the submission's response to the held poll returning that task (negative: "
        "the poll answered before the submitter read its own response), and from the "
        "submission's request.",
        "",
        *_table(
            ["task submitted to", "reps", "p50 ms", "p95 ms", "max ms", "p50 from request ms"],
            rows,
        ),
        "",
    ]


def _timings(section_s: dict) -> list[str]:
    if not section_s:
        return []
    parts = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in section_s.items())
    return [f"- time per section: {parts}"]


def markdown(results: dict) -> str:
    """The whole RESULTS.md."""
    m = results["machine"]
    commit = m["commit"] + (" (with uncommitted changes)" if m["dirty"] else "")
    lines = [
        "# Benchmark results (`bench/`)",
        "",
        f"- date: {results['date']}",
        f"- machine: {m['nproc']} CPUs, {m['cpu']}; Python {m['python']}; 1-minute load "
        f"average {m['load_average']:.2f} at the start (other work on the machine skews "
        "the numbers)",
        f"- commit: `{commit}`",
        f"- command: `{results['command']}` ({results['mode']} mode, "
        f"{results['elapsed_s'] / 60:.1f} min)",
        *_timings(results.get("section_s", {})),
        "- processes run with `LOG_LEVEL=WARNING` (as peerbench runs us); every other "
        "setting is `.env`'s default unless a section says otherwise",
        "",
        "![throughput](throughput.png)",
        "",
    ]
    quick = results["mode"] == "quick"
    lines += storage_section(results["storage"], quick)
    lines += memory_section(results["storage"])
    lines += throughput_section(results["throughput"], results["throughput_tasks"])
    h = results["hoarding_mix"]
    lines += hoarding_section(results["hoarding"], h["quick"], h["slow"], h["sleep_s"])
    lines += wakeup_section(results["wakeup"])
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """Two subplots: storage throughput against queue size (log x), and end-to-end
    throughput against the number of workers, one line per max_tasks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    sizes = results["storage"]
    xs = [s["size"] for s in sizes]
    for key, label in (("claim", "claim (max_tasks=100)"), ("complete", "complete (x100)")):
        left.plot(xs, [s[key]["tasks_per_s"] for s in sizes], marker="o", label=label)
    loads = [s["load"]["rows_per_s"] for s in sizes]
    left.plot(xs, loads, marker="s", ls="--", label="bulk load (rows/s)")
    left.set_xscale("log")
    left.set_ylim(bottom=0)
    left.set_xlabel("pending tasks")
    left.set_ylabel("tasks/s")
    left.set_title("Storage throughput against queue size")
    left.legend()
    left.grid(True, alpha=0.3)

    runs = results["throughput"]
    for prefetch in dict.fromkeys(r["prefetch"] for r in runs):
        mine = sorted((r for r in runs if r["prefetch"] == prefetch), key=lambda r: r["workers"])
        right.plot(
            [r["workers"] for r in mine],
            [r["tasks_per_s"] for r in mine],
            marker="o",
            label=f"max_tasks={claim_cap(prefetch)}",
        )
    counts = sorted({r["workers"] for r in runs})
    right.set_xscale("log", base=2)
    right.set_xticks(counts, labels=[str(k) for k in counts])
    right.set_ylim(bottom=0)
    right.set_xlabel("workers (concurrency 1 each)")
    right.set_ylabel("tasks/s")
    right.set_title(f"End to end: {results['throughput_tasks']:,} no-op tasks")
    right.legend()
    right.grid(True, alpha=0.3)

    m = results["machine"]
    fig.suptitle(
        f"{results['date']} · {m['commit']} · {m['nproc']} CPUs · {results['mode']} mode",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
