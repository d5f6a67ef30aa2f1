"""bench/run_all.py writes docs/benchmarks.md: a partial rerun refreshes only its own, dated sections."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

RUN_ALL = Path(__file__).resolve().parents[2] / "bench" / "run_all.py"


@pytest.fixture
def run_all(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_run_all", RUN_ALL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "DOC", tmp_path / "benchmarks.md")
    monkeypatch.setattr(module, "BENCHMARKS", {"alpha": ("alpha's figures", "fast", []),
                                               "beta": ("beta's figures", "faster", [])})
    monkeypatch.setattr(module, "ON_DEMAND", {})
    printed = {"alpha": "alpha 1.0x", "beta": "beta 2.0x"}
    monkeypatch.setattr(module, "run", lambda name, args: (printed[name], 3.0, 0))
    module.printed = printed
    return module


def write_page(module, monkeypatch, *names: str) -> str:
    monkeypatch.setattr(sys, "argv", ["run_all.py", *names])
    assert module.main() == 0
    return module.DOC.read_text()


def header_line(page: str) -> str:
    return next(line for line in page.splitlines() if line.startswith("Last full run: "))


def test_a_partial_rerun_keeps_the_other_sections_and_the_full_run_date(run_all, monkeypatch):
    monkeypatch.setattr(run_all, "now_utc", lambda: "2026-01-01 10:00 UTC")
    first = write_page(run_all, monkeypatch)
    assert "Last full run: 2026-01-01 10:00 UTC on " in first
    assert "`python bench/alpha.py` (3 s, 2026-01-01 10:00 UTC)" in first

    run_all.printed["alpha"], run_all.printed["beta"] = "alpha 1.5x", "beta 9.9x"
    monkeypatch.setattr(run_all, "now_utc", lambda: "2026-02-02 12:00 UTC")
    second = write_page(run_all, monkeypatch, "alpha")
    assert header_line(second) == header_line(first)  # beta did not run again: the full run's line, unchanged
    assert "`python bench/alpha.py` (3 s, 2026-02-02 12:00 UTC)" in second and "alpha 1.5x" in second
    assert "`python bench/beta.py` (3 s, 2026-01-01 10:00 UTC)" in second and "beta 2.0x" in second
    assert "beta 9.9x" not in second

    third = write_page(run_all, monkeypatch)
    assert "Last full run: 2026-02-02 12:00 UTC on " in third and "beta 9.9x" in third


def test_a_page_written_before_the_dated_sections_keeps_its_date(run_all, monkeypatch):
    run_all.DOC.write_text("# Benchmarks\n\nLast run: 2025-05-05 05:05 UTC on old box.\n\n## beta\n\nold beta\n")
    page = write_page(run_all, monkeypatch, "alpha")
    assert header_line(page).startswith("Last full run: 2025-05-05 05:05 UTC on old box. Timings on ")
    assert header_line(page).count("Timings") == 1
    assert "old beta" in page and "alpha 1.0x" in page
