"""bench/run.py writes its own folder; the committed results change only when asked."""

from __future__ import annotations

import sys

import pytest

from common.config import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "bench"))
import run as bench_run  # noqa: E402  (bench/run.py)


@pytest.fixture
def fake_report(monkeypatch, tmp_path):
    """report.markdown and report.plot without a real run; bench/ as a copy in tmp_path."""
    monkeypatch.setattr(bench_run.report, "markdown", lambda results: "# new results")
    monkeypatch.setattr(bench_run.report, "plot", lambda results, path: path.write_text("png"))
    committed = tmp_path / "bench"
    committed.mkdir()
    (committed / "RESULTS.md").write_text("# committed")
    (committed / "throughput.png").write_text("committed png")
    monkeypatch.setattr(bench_run, "BENCH", committed)
    return committed


def test_a_run_writes_its_own_folder_and_leaves_the_committed_results(fake_report, tmp_path):
    where = bench_run.write({}, tmp_path / "out", update=False)
    assert where == tmp_path / "out" / "RESULTS.md"
    assert where.read_text() == "# new results\n"
    assert (fake_report / "RESULTS.md").read_text() == "# committed"
    assert (fake_report / "throughput.png").read_text() == "committed png"


def test_update_results_rewrites_the_committed_copies(fake_report, tmp_path):
    where = bench_run.write({}, tmp_path / "out", update=True)
    assert where == fake_report / "RESULTS.md"
    assert (fake_report / "RESULTS.md").read_text() == "# new results\n"


def test_a_quick_run_may_not_update_the_committed_results(capsys):
    assert bench_run.main(["--quick", "--update-results"]) == 2
    assert "full run" in capsys.readouterr().out


def test_bench_out_is_ignored_by_git():
    assert "bench/out/" in (PROJECT_ROOT / ".gitignore").read_text().split()
