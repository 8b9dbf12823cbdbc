"""`wordcount`: a complete user task type, living outside `tasks/` (see docs/TASKS.md).

Load it in the dispatcher (which validates) and in the workers (which run):

    TASK_MODULES=examples.wordcount ./start_dispatcher.sh
    TASK_MODULES=examples.wordcount ./start_worker.sh worker-1
    python3 add_task.py --wait --payload '{"type": "wordcount", "text": "to be or not to be"}'

Payload: {"text": string of at most 100,000 characters, "top"?: 1..100 = 10}.
Result: {"words": N, "lines": N, "top": [[word, count], ...]}, the `top` most frequent
words (lower-cased), most frequent first, ties in alphabetical order.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from common.config import Config
from tasks import InvalidPayload, registry

NAME = "wordcount"
MAX_TEXT_CHARS = 100_000
DEFAULT_TOP = 10
MAX_TOP = 100
WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")  # letters and digits, with inner apostrophes


def validate(payload: dict[str, Any], config: Config) -> dict[str, Any]:
    """Check the submitted payload; the returned dict is what is stored and run.

    Runs in the dispatcher at submission: it must be quick and deterministic (it reads
    nothing but the payload and the configuration) and raise InvalidPayload, whose
    message the client gets in a 400.
    """
    unknown = sorted(set(payload) - {"text", "top"})
    if unknown:
        raise InvalidPayload(f"unknown field {unknown[0]!r} for {NAME} (allowed: text, top)")
    if "text" not in payload:
        raise InvalidPayload(f"missing required field 'text' for {NAME}")
    text = payload["text"]
    if not isinstance(text, str):
        raise InvalidPayload(f"{NAME} field 'text' must be a string")
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidPayload(
            f"{NAME} field 'text' must be at most {MAX_TEXT_CHARS} characters, not {len(text)}"
        )
    top = payload.get("top", DEFAULT_TOP)
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= MAX_TOP:
        raise InvalidPayload(f"{NAME} field 'top' must be an integer from 1 to {MAX_TOP}")
    return {"text": text, "top": top}  # defaults filled in: the worker sees both fields


def run(payload: dict[str, Any]) -> dict[str, Any]:
    """Count the words. Runs in a worker's pool process; the result must be JSON."""
    text = payload["text"]
    counts = Counter(word.lower() for word in WORD.findall(text))
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return {
        "words": sum(counts.values()),
        "lines": len(text.splitlines()),
        "top": [[word, n] for word, n in ranked[: payload["top"]]],
    }


registry.register(NAME, validate, run)
