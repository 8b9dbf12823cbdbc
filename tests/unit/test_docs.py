"""The README and docs/ name only what exists: every repository path (in a link or in
backticks) and every test they cite, file and function.

Tests are cited in these forms, all checked:
- `tests/storage/test_contract.py::test_x`, and the same relative to tests/
  (`storage/test_contract.py::test_x`) or by its file name alone (`test_crash.py::test_x`);
- `::test_y` after such a citation, or after a file named alone (`test_floods.py`): a
  test of the file cited last;
- a test function alone, `test_x`, or "`test_x` in `tests/unit/test_config.py`".
"""

from __future__ import annotations

import re
from dataclasses import fields
from functools import cache
from pathlib import Path

import pytest

from common.config import PROJECT_ROOT, Config

DOCS = [
    PROJECT_ROOT / "README.md",
    *sorted((PROJECT_ROOT / "docs").glob("*.md")),
    PROJECT_ROOT / "bench" / "HISTORY.md",
]
TOP = r"(?:dispatcher|worker|tasks|common|tests|docs|bench|examples|scripts|\.ci)"
PATH = re.compile(rf"`(\.?/?{TOP}/[\w./-]*?)(?:::\w+)?`|`([\w-]+\.(?:py|sh|md|txt|toml))`")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
RUNTIME = ("bench/out/", "data/")  # made by a run, not committed
# a test: file::function, or ::function after a cited file (the one cited last)
TEST_REF = re.compile(r"([\w./-]*\.py)?::(test_\w+)|`([\w./-]+\.py)`")
# a test function named alone, maybe followed by the file it is in
BARE_TEST = re.compile(r"`(test_\w+)`(?:,? in `?([\w./-]+\.py)`?)?")


def named_paths(doc: Path) -> list[tuple[str, Path]]:
    text = doc.read_text()
    found = []
    for m in PATH.finditer(text):
        if m.group(1):
            name = m.group(1)
            found.append((name, PROJECT_ROOT / name.removeprefix("./")))
        else:  # a bare file name: somewhere in the repository
            name = m.group(2)
            hits = [p for p in PROJECT_ROOT.rglob(name) if ".venv" not in p.parts]
            found.append((name, hits[0] if hits else PROJECT_ROOT / name))
    for m in LINK.finditer(text):
        target = m.group(1)
        if "://" in target or target.startswith("mailto:"):
            continue
        found.append((target, (doc.parent / target).resolve()))
    return found


@cache
def _test_files() -> tuple[Path, ...]:
    return tuple(sorted((PROJECT_ROOT / "tests").rglob("*.py")))


def _candidates(name: str) -> list[Path]:
    """The files a citation's file part may mean: from the project root, from tests/, or
    any file under tests/ whose path ends with it (`test_crash.py`)."""
    name = name.removeprefix("./")
    exact = [p for p in (PROJECT_ROOT / name, PROJECT_ROOT / "tests" / name) if p.is_file()]
    return exact or [p for p in _test_files() if p.as_posix().endswith("/" + name)]


def defines(path: Path, function: str) -> bool:
    return re.search(rf"^\s*(?:async\s+)?def {function}\b", path.read_text(), re.M) is not None


def missing_tests(doc: Path) -> list[str]:
    """Every test the doc cites that does not exist, as the doc cites it."""
    text = doc.read_text()
    missing = []
    last: list[Path] = []  # the files of the citation before, for `::test_y`
    for m in TEST_REF.finditer(text):
        if m.group(3):  # a file alone: what a `::test_y` after it means
            last = _candidates(m.group(3))
            continue
        file, function = m.group(1), m.group(2)
        if file:
            last = _candidates(file)
            if not last:
                missing.append(m.group(0))
                continue
        elif not last:
            missing.append(f"{m.group(0)} (no file cited before it)")
            continue
        if not any(defines(p, function) for p in last):
            missing.append(m.group(0))
    for m in BARE_TEST.finditer(text):
        function, file = m.group(1), m.group(2)
        files = _candidates(file) if file else list(_test_files())
        if not any(defines(p, function) for p in files):
            missing.append(f"{function} in {file}" if file else function)
    return missing


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_every_path_a_doc_names_exists(doc):
    missing = []
    for name, path in named_paths(doc):
        if "<" in name or "*" in name or name.startswith(RUNTIME):
            continue  # a pattern, or what a run makes (git-ignored)
        if not path.exists():
            missing.append(name)
    assert not missing, f"{doc.name} names what does not exist: {sorted(set(missing))}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_every_test_a_doc_cites_exists(doc):
    missing = missing_tests(doc)
    assert not missing, f"{doc.name} cites tests that do not exist: {sorted(set(missing))}"


def test_citations_of_every_form_are_checked(tmp_path):
    doc = tmp_path / "doc.md"
    real = "test_every_test_a_doc_cites_exists"
    doc.write_text(
        f"`tests/unit/test_docs.py::{real}`, `unit/test_docs.py::{real}`, "
        f"`test_docs.py::{real}` and `::{real}`; `{real}` in `tests/unit/test_docs.py`.\n"
    )
    assert missing_tests(doc) == []
    doc.write_text(
        "`::test_with_no_file_before_it`; `tests/unit/test_docs.py::test_made_up`, "
        "`unit/test_gone.py::test_x`, `test_docs.py::test_made_up_too` and "
        "`::test_made_up_three`; `test_made_up_four`; `test_made_up_five` in "
        "`tests/unit/test_docs.py`.\n"
    )
    assert len(missing_tests(doc)) == 7


def test_the_readme_stays_short():
    assert len((PROJECT_ROOT / "README.md").read_text().splitlines()) <= 250


SETTING_ROW = re.compile(r"^\| ([A-Z][A-Z0-9_]+) \| ([^|]*?) \|", re.M)


def _default(value: object) -> str:
    """A default as the tables write it: 120.0 is `120`, 7776000.0 `7776000` (not
    7.776e+06), the empty string `(empty)`."""
    if value == "":
        return "(empty)"
    return f"{value:.15g}" if isinstance(value, float) else str(value)


@pytest.mark.parametrize("doc", ["README.md", "docs/CONFIGURATION.md"])
def test_the_settings_tables_list_every_key_with_its_default(doc):
    rows = SETTING_ROW.findall((PROJECT_ROOT / doc).read_text())
    expected = [(f.name.upper(), _default(f.default)) for f in fields(Config)]
    assert rows == expected
