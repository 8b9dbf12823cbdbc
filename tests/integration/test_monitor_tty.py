"""monitor.py's live view as a person sees it: run in a pseudo-terminal, its output drawn
by a terminal emulator (pyte), the screen read back as text."""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import termios
import threading

import pyte
from harness import wait_for

from common.config import PROJECT_ROOT

COLUMNS, LINES = 120, 40
STATUSES = ("waiting", "pending", "in_progress", "completed", "failed", "cancelled", "total")


class Terminal:
    """A program in a pseudo-terminal of COLUMNS x LINES, and the screen it draws."""

    def __init__(self, args: list[str], env: dict[str, str]):
        self.screen = pyte.Screen(COLUMNS, LINES)
        self.stream = pyte.ByteStream(self.screen)
        self.lock = threading.Lock()
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", LINES, COLUMNS, 0, 0))
        term_env = {**env, "TERM": "xterm-256color", "COLUMNS": str(COLUMNS), "LINES": str(LINES)}
        # Ctrl-C works as in a terminal a person opens, even when this test runs where
        # SIGINT is ignored (a background job of a script): an ignored signal is
        # inherited across exec, a handled one is reset to the default.
        previous = signal.signal(signal.SIGINT, signal.SIG_DFL)
        try:
            self.proc = subprocess.Popen(
                args,
                cwd=PROJECT_ROOT,
                env=term_env,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                start_new_session=True,
            )
        finally:
            signal.signal(signal.SIGINT, previous)
        os.close(slave)  # the child holds it: reading the master ends when the child exits
        self.master = master
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if not ready:
                continue
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the other end is closed
                return
            if not data:
                return
            with self.lock:
                self.stream.feed(data)

    def text(self) -> str:
        with self.lock:
            return "\n".join(line.rstrip() for line in self.screen.display)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.reader.join(timeout=10)
        os.close(self.master)


def task_counts(screen: str) -> dict[str, int] | None:
    """The numbers under the tasks table's header, by column, or None if not drawn."""
    lines = screen.splitlines()
    for i, line in enumerate(lines):
        if all(s in line.split() for s in STATUSES):
            for row in lines[i + 1 :]:
                numbers = re.findall(r"\d+", row)
                if len(numbers) == len(STATUSES):
                    return dict(zip(STATUSES, map(int, numbers), strict=True))
            return None
    return None


def test_the_live_view_shows_counts_and_workers_and_follows_a_task(cluster):
    cluster.start_dispatcher()
    cluster.start_worker("worker-1")
    wait_for(
        lambda: [w for w in cluster.client.workers() if w["status"] == "alive"],
        30,
        lambda: cluster.logs(),
    )
    terminal = Terminal(["python3", "monitor.py", "--interval", "0.5"], cluster.env())
    try:
        first = wait_for(
            lambda: "worker-1" in terminal.text() and task_counts(terminal.text()),
            60,
            lambda: f"screen:\n{terminal.text()}",
        )
        assert first == dict.fromkeys(STATUSES, 0), terminal.text()
        screen = terminal.text()
        assert "taskqueue monitor" in screen
        assert re.search(r"worker-1\s+alive", screen), screen

        task_id = cluster.submit("compute", {"operation": "double", "value": 3})
        cluster.wait_status(task_id, "completed")
        after = wait_for(
            lambda: (
                (task_counts(terminal.text()) or {}).get("completed") == 1
                and task_counts(terminal.text())
            ),
            30,
            lambda: f"screen:\n{terminal.text()}",
        )
        assert after["total"] == 1, terminal.text()
        screen = terminal.text()
        assert re.search(r"default\s+0\s+0\s+0\s+1\s+0\s+0$", screen, re.M), screen  # queues
        assert re.search(r"worker-1\s+alive\s.*\s1\s+0$", screen, re.M), screen  # its count

        terminal.proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert terminal.proc.wait(timeout=30) == 0, terminal.text()
    finally:
        terminal.close()
