"""`wordcount`: a user task type (docs/TASKS.md); load it with TASK_MODULES=examples.wordcount."""

import re
from collections import Counter
from typing import Annotated

from msgspec import Meta

from taskqueue import task

Text = Annotated[str, Meta(max_length=100_000)]
Top = Annotated[int, Meta(ge=1, le=100)]


@task("wordcount", queue="text", timeout=60, max_retries=2)
def wordcount(text: Text, top: Top = 10) -> dict:
    """The `top` most frequent words (lower-cased), most frequent first, ties alphabetical."""
    counts = Counter(w.lower() for w in re.findall(r"[^\W_]+(?:'[^\W_]+)*", text))
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return {"words": sum(counts.values()), "lines": len(text.splitlines()), "top": ranked[:top]}
