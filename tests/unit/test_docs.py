"""The README and docs/ name only what exists: every repository path (in a link or in
backticks) and every test (file::function) they cite."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from common.config import PROJECT_ROOT

DOCS = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
TOP = r"(?:dispatcher|worker|tasks|common|tests|docs|bench|examples|scripts|\.ci)"
PATH = re.compile(rf"`(\.?/?{TOP}/[\w./-]*?)(?:::(\w+))?`|`([\w-]+\.(?:py|sh|md|txt|toml))`")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
RUNTIME = ("bench/out/", "data/")  # made by a run, not committed
TEST_REF = re.compile(r"(tests/[\w/]+\.py)::(\w+)")


def named_paths(doc: Path) -> list[tuple[str, Path, str | None]]:
    text = doc.read_text()
    found = []
    for m in PATH.finditer(text):
        if m.group(1):
            name = m.group(1)
            found.append((name, PROJECT_ROOT / name.removeprefix("./"), m.group(2)))
        else:  # a bare file name: somewhere in the repository
            name = m.group(3)
            hits = [p for p in PROJECT_ROOT.rglob(name) if ".venv" not in p.parts]
            found.append((name, hits[0] if hits else PROJECT_ROOT / name, None))
    for m in LINK.finditer(text):
        target = m.group(1)
        if "://" in target or target.startswith("mailto:"):
            continue
        found.append((target, (doc.parent / target).resolve(), None))
    for m in TEST_REF.finditer(text):
        found.append((m.group(0), PROJECT_ROOT / m.group(1), m.group(2)))
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_every_path_and_test_a_doc_names_exists(doc):
    missing = []
    for name, path, function in named_paths(doc):
        if "<" in name or "*" in name or name.startswith(RUNTIME):
            continue  # a pattern, or what a run makes (git-ignored)
        if not path.exists():
            missing.append(name)
        elif function and not re.search(rf"def {function}\b", path.read_text()):
            missing.append(f"{name}::{function}")
    assert not missing, f"{doc.name} names what does not exist: {sorted(set(missing))}"


def test_the_readme_stays_short():
    assert len((PROJECT_ROOT / "README.md").read_text().splitlines()) <= 250
