"""Prints the ratio tables of ``test_perf_peers.test_ratios`` at the end of the run."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

_TABLES: list[tuple] = []


@pytest.fixture(scope="session")
def ratio_tables() -> list[tuple]:
    return _TABLES


def format_tables(tables: list[tuple]) -> list[str]:
    """Markdown: one row per model, medians in ms and the ratios of medians."""
    if not tables:
        return []
    keys = list(dict.fromkeys(k for *_, ratios in tables for k in ratios))
    names = list(dict.fromkeys(n for *_, med, _ in tables for n in med))
    lines = ["| model | threads | rounds | load | " + " | ".join(keys) + " |",
             "|---" * (4 + len(keys)) + "|"]
    for arch, threads, rounds, load, _, ratios in tables:
        cells = [f"{ratios[k]:.3f}" if k in ratios else "" for k in keys]
        lines.append(f"| {arch} | {threads} | {rounds} | {load:.1f} | " + " | ".join(cells) + " |")
    lines += ["", "medians, ms:", "| model | " + " | ".join(names) + " |",
              "|---" * (1 + len(names)) + "|"]
    for arch, *_, med, _ in tables:
        lines.append(f"| {arch} | " + " | ".join(f"{1e3 * med[n]:.1f}" if n in med else ""
                                                 for n in names) + " |")
    return lines


def pytest_terminal_summary(terminalreporter) -> None:
    lines = format_tables(_TABLES)
    if lines:
        terminalreporter.section("ratios of medians (interleaved rounds, same run)")
        for line in lines:
            terminalreporter.write_line(line)
