"""``run_grid``: plan a grid once, pick an executor, record every cell as it finishes.

Every cell is appended to its suite's records as soon as it finishes, so an interrupted run
loses no finished cell, and a re-run skips every cell whose key (model weights, attack
configuration, ε, test inputs, seed) is already recorded unless ``force`` is set. The rooms
it joins: :mod:`bench.grid` (what the cells are), :mod:`bench.engine` (how a cell is
computed), :mod:`bench.executors` (where), :mod:`bench.recorder` (the one writer).
"""

from __future__ import annotations

from pathlib import Path

from bench.executors import Executor, Local, RunOptions
from bench.grid import Grid, plan_grid
from bench.recorder import Recorder, RunSummary
from results.store import check_records_folder
from zoo import load_dataset


def run_grid(grid: Grid, executor: Executor | None = None, *,
             results_root: Path | None = None, force: bool = False, **options: object
             ) -> RunSummary:
    """Run a grid with ``executor`` (default :class:`bench.executors.Local`), appending each
    finished cell to ``<results_root>/<suite>.cells.jsonl``.

    Cells recorded ``ok`` are skipped (with ``force``: those recorded after this run started).
    A model whose training, calibration or clean pass fails gets error records for its cells
    and the grid goes on; error cells are retried by the next run. ``options`` are the fields
    of :class:`bench.executors.RunOptions` (``device``, ``weights``, ``retrain``,
    ``data_root``, ``max_train_steps``, ``progress``), the same for every executor.
    """
    run = RunOptions(**options)  # type: ignore[arg-type]
    check_records_folder(grid.suite, results_root, write=True)
    plan = plan_grid(grid, load_dataset(grid.dataset, run.data_root))
    rec = Recorder(plan, results_root=results_root, force=force, progress=run.progress)
    try:
        (executor or Local()).execute(plan, rec, run)
    finally:
        rec.close()
    return rec.summary
