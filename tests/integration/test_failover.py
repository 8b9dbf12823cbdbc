"""Several dispatchers on one database, DISPATCHER_URL listing them: a worker moves to the
next dispatcher when the one it uses dies (kill -9), without a restart; and
start_cluster.sh --dispatchers 2 runs, serves both ports and stops on Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

from harness import Proc, free_port, group_connections, wait_for, wait_started

from common.client import Client, DispatcherUnreachable


def free_port_pair() -> int:
    """A port P such that P and P + 1 are both free (start_cluster.sh uses P, P+1)."""
    for _ in range(100):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise RuntimeError("no two consecutive free ports")


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def compute(value: int) -> dict:
    return {"type": "compute", "payload": {"operation": "double", "value": value}}


def test_a_worker_moves_to_the_other_dispatcher_when_its_own_is_killed(make_cluster):
    cluster = make_cluster()
    port_a, port_b = cluster.port, free_port()
    url = {port_a: f"http://127.0.0.1:{port_a}", port_b: f"http://127.0.0.1:{port_b}"}
    cluster.settings["DISPATCHER_URL"] = f"{url[port_a]},{url[port_b]}"
    dispatcher = {
        port_a: cluster.start_dispatcher("dispatcher-a", port=port_a),
        port_b: cluster.start_dispatcher("dispatcher-b", port=port_b),
    }
    direct = {port: Client(u) for port, u in url.items()}
    try:
        worker = cluster.start_worker("w1")
        cluster.wait_worker_alive(worker)

        # both dispatchers hand out the same queue: a task submitted to either runs
        first = [direct[port].submit_task(compute(port)) for port in (port_a, port_b)]
        for task in cluster.wait_all_finished(first):
            assert task["status"] == "completed", task

        # the dispatcher this worker uses: its connections all go to one (they share it)
        seen: set[int] = set()

        def in_use():
            nonlocal seen
            seen = {port for port in url if group_connections(worker.pid, port)}
            return next(iter(seen)) if len(seen) == 1 else None

        used = wait_for(in_use, 30, lambda: f"worker connected to {seen}\n{cluster.logs()}")
        other = port_b if used == port_a else port_a

        # a task running when its dispatcher dies: the result goes to the other one
        running = direct[used].submit_task({"type": "sleep", "payload": {"duration": 1.5}})
        wait_started(worker, running)  # the claim was answered, not only committed
        dispatcher[used].kill9()
        later = direct[other].submit_tasks([compute(i) for i in range(20)])

        def finished(task_id: str) -> dict | None:
            try:
                task = direct[other].task(task_id)
            except DispatcherUnreachable:
                return None
            return task if task["status"] in ("completed", "failed", "cancelled") else None

        for task_id in [running, *later]:
            task = wait_for(
                lambda t=task_id: finished(t),
                60,
                lambda t=task_id: f"task {t}: {direct[other].task(t)}\n{cluster.logs()}",
            )
            assert task["status"] == "completed", task
            assert task["worker_id"] == "w1"
        assert direct[other].task(running)["attempts"] == 1  # delivered, not re-run
        assert worker.alive(), worker.log()

        moves = [line for line in worker.log(400).splitlines() if "did not answer" in line]
        assert len(moves) == 1, moves  # one line, whichever thread noticed first
        assert f"using {url[other]} now" in moves[0]
        assert url[used] in moves[0]
    finally:
        for client in direct.values():
            client.close()


def test_start_cluster_with_two_dispatchers_serves_both_ports_and_stops_on_ctrl_c(
    make_cluster,
):
    port = free_port_pair()
    cluster = make_cluster(DISPATCHER_PORT=str(port), DISPATCHER_URL=f"http://127.0.0.1:{port}")
    urls = [f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"]
    script = Proc(
        "start_cluster",
        ["./start_cluster.sh", "--dispatchers", "2", "--workers", "2"],
        cluster.env(),
        cluster.tmp / "cluster.log",
    )
    cluster.procs.append(script)
    clients = [Client(u) for u in urls]
    started: list[int] = []
    try:
        stats: dict = {}

        def up():
            nonlocal stats
            try:
                stats = clients[1].stats()
            except DispatcherUnreachable as exc:
                stats = {"unreachable": str(exc)}
                return False
            return stats["workers"]["alive"] == 2

        wait_for(up, 120, lambda: f"cluster not up ({stats}):\n{script.log()}")
        wait_for(
            lambda: "cluster up: 2 dispatchers" in script.log(200),
            30,
            lambda: f"no 'cluster up' line:\n{script.log()}",
        )
        started = children(script.pid)
        assert len(started) == 4, started  # two dispatchers and two workers

        ids = [c.submit_task(compute(n)) for n, c in enumerate(clients) for _ in range(5)]
        for task in cluster.wait_all_finished(ids):
            assert task["status"] == "completed", task
        assert clients[1].stats()["tasks"]["completed"] == 10  # one database behind both

        script.signal(signal.SIGINT)  # Ctrl-C
        assert script.wait(timeout=90) == 0, script.log(200)
        wait_for(
            lambda: all(gone(pid) for pid in started),
            30,
            lambda: f"still running: {[p for p in started if not gone(p)]}\n{script.log()}",
        )
        log = script.log(400)
        assert "stopping 2 worker(s), then 2 dispatcher(s)" in log
        assert "worker worker-1 stopped" in log and "worker worker-2 stopped" in log
    finally:
        for client in clients:
            client.close()
        for pid in started:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
