"""Periodic tasks with real dispatchers (docs/SCHEDULING.md, "Periodic tasks"): two
dispatchers (two processes each) on one database fire every tick of an `every: 1`
schedule exactly once; after every dispatcher was down, catch_up one / none / all fire
the missed ticks as documented; SCHEDULES_FILE is applied at start (a bad one stops the
start with one line); a template whose task type is gone after a restart is marked
and skipped; the client library and schedules.py against a real dispatcher."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from contextlib import nullcontext
from datetime import datetime

import pytest
from harness import all_tasks, free_port, wait_for

from common.client import Client
from common.config import PROJECT_ROOT
from tests.pg import fresh_schema_url

pytestmark = pytest.mark.integration

GRACE = 1.0  # SCHEDULE_GRACE_SECONDS here: ticks older than this at firing are missed
SLEEP_TASK = {"type": "sleep", "payload": {"duration": 0}, "queue": "ticks"}


@pytest.fixture(params=["sqlite", "postgres"])
def database(request):
    """DATABASE_URL for a cluster: its own SQLite file (None), or a fresh PG schema."""
    if request.param == "sqlite":
        yield None
    else:
        with fresh_schema_url() as url:
            yield url


def settings(database, **more) -> dict:
    return {**({"DATABASE_URL": database} if database else {}), **more}


def seconds(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def fired(client: Client, name: str) -> list[dict]:
    """The tasks `name` created, each as (tick, created_at) seconds, oldest tick first."""
    tasks = [t for t in all_tasks(client) if (t.get("schedule") or {}).get("name") == name]
    return sorted(
        (
            {"tick": seconds(t["schedule"]["tick"]), "created": seconds(t["created_at"]), **t}
            for t in tasks
        ),
        key=lambda t: t["tick"],
    )


def fires_metric(url: str, name: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    line = f'taskqueue_schedule_fires_total{{schedule="{name}"}} '
    return sum(float(row[len(line) :]) for row in text.splitlines() if row.startswith(line))


def test_two_dispatchers_fire_each_tick_exactly_once(make_cluster, database):
    cluster = make_cluster(**settings(database, DISPATCHER_PROCESSES="2"))
    cluster.start_dispatcher("dispatcher-a")
    port_b = free_port()
    cluster.start_dispatcher("dispatcher-b", port=port_b)
    url_b = f"http://127.0.0.1:{port_b}"
    made = cluster.client.create_schedule({"name": "second", "every": 1, "task": SLEEP_TASK})
    assert made["every"] == 1
    seen: list[dict] = []

    def five_ticks():
        nonlocal seen
        seen = fired(cluster.client, "second")
        return len({t["tick"] for t in seen}) >= 6

    wait_for(five_ticks, 60, lambda: f"ticks fired: {seen}\n{cluster.logs()[-3000:]}", every=0.2)
    with Client(url_b) as client_b:
        client_b.delete_schedule("second")  # no more ticks: what is stored is final
    tasks = fired(cluster.client, "second")
    ticks = [t["tick"] for t in tasks]
    assert len(ticks) == len(set(ticks)), f"a tick fired twice: {ticks}"
    first, last = ticks[0], ticks[-1]
    assert ticks == [first + i for i in range(int(last - first) + 1)], f"a tick is missing: {ticks}"
    late = [t["created"] - t["tick"] for t in tasks]
    print(f"{len(ticks)} ticks; seconds from tick to task: max {max(late):.3f}")
    assert max(late) < 60  # none waited for a later firing than the grace allows
    # each task was counted once, by the process that created it, on one dispatcher
    assert fires_metric(cluster.url, "second") + fires_metric(url_b, "second") == len(ticks)
    for proc in cluster.procs:
        assert "unexpected error" not in proc.log(400) and "firing failed" not in proc.log(400)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_ticks_missed_while_every_dispatcher_was_down_follow_catch_up(make_cluster, backend):
    """One outage of every dispatcher, three schedules beside each other: catch_up one,
    none and all each do what SCHEDULING.md says with the ticks that fell meanwhile."""
    policies = ("one", "none", "all")
    with fresh_schema_url() if backend == "postgres" else nullcontext() as url:
        cluster = make_cluster(**settings(url, SCHEDULE_GRACE_SECONDS=str(GRACE)))
        first = cluster.start_dispatcher("before")
        for catch_up in policies:
            body = {"name": f"beat-{catch_up}", "every": 1, "task": SLEEP_TASK}
            cluster.client.create_schedule({**body, "catch_up": catch_up})
        seen: dict[str, list[dict]] = {}

        def ticks_fired(n: int, after: float = 0.0):
            def enough():
                for catch_up in policies:
                    seen[catch_up] = fired(cluster.client, f"beat-{catch_up}")
                return all(
                    len([t for t in tasks if t["tick"] > after]) >= n for tasks in seen.values()
                )

            return enough

        wait_for(ticks_fired(2), 30, lambda: f"fired: {seen}\n{cluster.logs()}", every=0.2)
        first.close()  # every dispatcher is down
        last_before = {c: max(t["tick"] for t in tasks) for c, tasks in seen.items()}
        latest = max(last_before.values())
        # ticks fall while nothing runs: more than the grace, so some are missed
        wait_for(lambda: time.time() > latest + 4 * GRACE + 2, 30, lambda: "time stood still")
        cluster.start_dispatcher("after")
        wait_for(ticks_fired(2, after=time.time()), 60, lambda: f"fired: {seen}\n{cluster.logs()}")
        for catch_up in policies:
            cluster.client.delete_schedule(f"beat-{catch_up}")
        for catch_up in policies:
            check_catch_up(
                catch_up, fired(cluster.client, f"beat-{catch_up}"), last_before[catch_up]
            )


def check_catch_up(catch_up: str, tasks: list[dict], last_before: float) -> None:
    ticks = [t["tick"] for t in tasks]
    assert len(ticks) == len(set(ticks)), ticks
    # ticks that fell while every dispatcher was down, fired late (a tick before the
    # outage fired late by a stalled machine is not what this test is about)
    missed = [t for t in tasks if t["tick"] > last_before and t["created"] - t["tick"] > GRACE]
    gap = [tick for tick in range(int(ticks[0]), int(ticks[-1]) + 1) if float(tick) not in ticks]
    described = f"{catch_up}: ticks {ticks}, missed {[t['tick'] for t in missed]}, gap {gap}"
    if catch_up == "none":
        assert missed == [] and gap, described
    elif catch_up == "one":
        [one] = missed
        # the latest missed tick: the one just before the first late tick
        assert one["tick"] + 1 not in gap and gap and one["tick"] > last_before, described
    else:
        assert gap == [] and len(missed) >= 3, described
        assert [t["tick"] for t in missed] == sorted(t["tick"] for t in missed)


def test_schedules_file_is_applied_at_start_and_a_lost_task_type_is_marked(make_cluster, database):
    """SCHEDULES_FILE creates its schedules (and updates them on the next start, leaving
    others alone), each change in the audit trail as the system's; restarted without the
    TASK_MODULES its template needs, the schedule shows the error and creates nothing,
    and a valid PUT clears it."""
    cluster = make_cluster(**settings(database))
    path = cluster.tmp / "schedules.json"
    words = {"type": "wordcount", "payload": {"text": "a b a"}}
    entry = {"name": "words", "every": 1, "task": words, "catch_up": "none"}
    path.write_text(json.dumps({"schedules": [entry]}))
    env = {"SCHEDULES_FILE": str(path), "TASK_MODULES": "examples.wordcount"}
    first = cluster.start_dispatcher("with-module", **env)
    [made] = cluster.client.schedules()
    assert (made["name"], made["every"], made["task"], made["catch_up"]) == (
        "words",
        1,
        words,
        "none",
    )
    cluster.client.create_schedule({"name": "mine", "every": 3600, "task": SLEEP_TASK})
    cluster.client.update_schedule("words", {"enabled": False})  # an operator paused it
    first.close()
    path.write_text(json.dumps({"schedules": [{"name": "words", "every": 2, "task": words}]}))
    second = cluster.start_dispatcher("file-changed", **env)
    shown = {s["name"]: s for s in cluster.client.schedules()}
    assert sorted(shown) == ["mine", "words"]  # not in the file: left alone
    assert (shown["words"]["every"], shown["words"]["enabled"]) == (2, False)  # still paused
    assert "SCHEDULES_FILE" in second.log(200) and "1 updated" in second.log(200)
    # the audit trail: the file's changes by the system, the operator's by the API
    trail = [
        (r["name"], r["action"], r["target"], r["request_id"] is None)
        for r in cluster.client.call("GET", "/audit")["records"]
    ]
    assert trail == [
        ("system", "schedule.update", "schedule words", True),
        ("anonymous", "schedule.update", "schedule words", False),
        ("anonymous", "schedule.create", "schedule mine", False),
        ("system", "schedule.create", "schedule words", True),
    ]
    cluster.client.update_schedule("words", {"enabled": True})
    second.close()
    # restarted without TASK_MODULES: the template's type is gone
    restarted_at = time.time()
    cluster.start_dispatcher("without-module")
    seen: dict = {}

    def marked():
        nonlocal seen
        seen = cluster.client.schedule("words")
        return seen["error"]

    wait_for(marked, 30, lambda: f"{seen}\n{cluster.logs()[-3000:]}", every=0.2)
    assert seen["error"].startswith("task: unknown task type 'wordcount'")
    assert [t["type"] for t in fired(cluster.client, "words") if t["created"] >= restarted_at] == []
    assert cluster.procs[-1].alive()
    fixed = cluster.client.update_schedule("words", {"task": SLEEP_TASK})
    assert fixed["error"] is None
    wait_for(lambda: fired(cluster.client, "words"), 30, cluster.logs)


@pytest.mark.parametrize(
    "content, problem",
    [
        ("{not json", "not valid JSON"),
        ('[{"name": "x"}]', 'must be a JSON object {"schedules": [...]}'),
        ('{"schedules": [{"name": "x", "every": 0, "task": {"type": "sleep"}}]}', "schedule 1:"),
        ('{"schedules": [{"name": "x", "cron": "* *", "task": {"type": "sleep"}}]}', "cron"),
    ],
)
def test_a_bad_schedules_file_stops_the_start_with_one_line(cluster, content, problem):
    path = cluster.tmp / "schedules.json"
    path.write_text(content)
    done = subprocess.run(
        ["./start_dispatcher.sh"],
        cwd=PROJECT_ROOT,
        env=cluster.env(SCHEDULES_FILE=str(path)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"configuration error: SCHEDULES_FILE {path}: "), lines
    assert problem in lines[0], lines


def test_the_client_library_and_schedules_py_against_a_real_dispatcher(cluster, tmp_path):
    from taskqueue import Client as Library
    from taskqueue import Conflict, InvalidRequest, NotFound

    cluster.start_dispatcher()
    with Library(cluster.url) as client:
        made = client.schedules.create(
            "lib", "sleep", {"duration": 0}, every=1, queue="ticks", catch_up="all"
        )
        assert (made["every"], made["task"]["queue"], made["catch_up"]) == (1, "ticks", "all")
        assert [s["name"] for s in client.schedules.list()] == ["lib"]
        wait_for(lambda: client.schedules.get("lib")["last_task_id"], 30, cluster.logs)
        task = client.handle(client.schedules.get("lib")["last_task_id"]).refresh()
        assert task["schedule"]["name"] == "lib"
        assert client.schedules.pause("lib")["enabled"] is False
        assert client.schedules.resume("lib")["next_run_at"] is not None
        changed = client.schedules.update("lib", cron="0 3 * * *", timezone="Europe/Berlin")
        assert (changed["cron"], changed["every"]) == ("0 3 * * *", None)
        with pytest.raises(Conflict):
            client.schedules.create("lib", "sleep", {"duration": 0}, every=5)
        with pytest.raises(InvalidRequest, match="Bad minute"):
            client.schedules.create("bad", "sleep", {"duration": 0}, cron="77 * * * *")
        client.schedules.delete("lib")
        with pytest.raises(NotFound):
            client.schedules.get("lib")

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["python3", str(PROJECT_ROOT / "schedules.py"), *args],
            cwd=tmp_path,
            env=cluster.user_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )

    added = cli("add", "cli", "--every", "60", "--type", "sleep", "--payload", '{"duration": 0}')
    assert added.returncode == 0 and "cli: every 60 s, enabled, next run" in added.stdout, added
    listed = cli()
    assert listed.returncode == 0 and "cli" in listed.stdout and "every 60 s" in listed.stdout
    paused = cli("pause", "cli", "--json")
    assert json.loads(paused.stdout)["enabled"] is False, paused
    assert "paused" in cli("list").stdout
    assert json.loads(cli("resume", "cli", "--json").stdout)["enabled"] is True
    bad = cli("add", "x", "--cron", "nope", "--type", "sleep")
    assert bad.returncode == 1 and bad.stderr.startswith("error: 'cron' 'nope' is not valid"), bad
    usage = cli("add", "x", "--type", "sleep")  # neither --cron nor --every
    assert usage.returncode == 2
    assert cli("rm", "cli").returncode == 0
    missing = cli("rm", "cli")
    assert (missing.returncode, missing.stderr.strip()) == (1, "error: schedule cli not found")
    assert json.loads(cli("list", "--json").stdout) == {"schedules": []}
