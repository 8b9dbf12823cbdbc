"""One log line per event, to stderr, at LOG_LEVEL."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s"


def setup_logging(level: str) -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_taskqueue", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        handler._taskqueue = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level.upper())
