"""The benchmark: runs models × attacks × ε, verifies and measures every cell."""

from bench.api import evaluate
from bench.executors import Local, Processes, RayCluster, RunOptions
from bench.grid import Grid, build_grid
from bench.recorder import RunSummary
from bench.runner import run_grid
from bench.suites import SUITES, Suite, get_suite

__all__ = ["SUITES", "Grid", "Local", "Processes", "RayCluster", "RunOptions", "RunSummary",
           "Suite", "build_grid", "evaluate", "get_suite", "run_grid"]
