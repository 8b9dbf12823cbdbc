"""Results the worker could not deliver, kept on disk until the dispatcher takes them.

One JSON file per result, written atomically (temp file, fsync, rename, fsync of the
directory), so a crash leaves either the whole entry or none of it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger("worker")


class ResultCache:
    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temp_files()

    def _remove_stale_temp_files(self) -> int:
        """A crash between a temp file's write and its rename leaves the temp file, never
        read again (its task runs again: at-least-once). Opened at start-up by the only
        process of this worker id, the cache removes them rather than keep them forever."""
        removed = 0
        for path in self.directory.glob(".tmp-*.json"):
            path.unlink(missing_ok=True)
            removed += 1
        if removed:
            log.warning(
                "removed %d unfinished cache write(s) in %s left by a crash; their tasks run again",
                removed,
                self.directory,
            )
        return removed

    def put(self, result: dict, now: float) -> Path:
        entry = dict(result, cached_at=now)
        path = self.directory / f"{result['task_id']}.{result['lease_token']}.json"
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(entry, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._sync_directory()
        return path

    def entries(self) -> list[tuple[Path, dict]]:
        """Every complete entry, oldest first; unreadable files are skipped (and kept)."""
        out = []
        for path in sorted(self.directory.glob("*.json")):
            if path.name.startswith(".tmp-"):
                continue
            try:
                out.append((path, json.loads(path.read_text())))
            except (OSError, ValueError):
                continue
        out.sort(key=lambda item: item[1].get("cached_at", 0))
        return out

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def __len__(self) -> int:
        return sum(1 for p in self.directory.glob("*.json") if not p.name.startswith(".tmp-"))

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
