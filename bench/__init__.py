"""The benchmark: runs models × attacks × ε, verifies and measures every cell."""

from bench.api import evaluate
from bench.runner import Grid, RunSummary, build_grid, run_grid
from bench.suites import SUITES, Suite, get_suite

__all__ = ["SUITES", "Grid", "RunSummary", "Suite", "build_grid", "evaluate", "get_suite",
           "run_grid"]
