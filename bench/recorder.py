"""The driver's side of a run: the only writer of its records, and what the run did.

Whatever executor computed a cell, its record reaches the records file through
:meth:`Recorder.record` in the process that started the run (or, for the processes executor,
in each process that shares the grid through the records' claims). The recorder also holds the
run's :class:`RunSummary` and its progress bar: executors tell it what happened, they do not
change its counts themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from bench import provenance
from bench.calibrate import DIAGNOSTICS_VERSION
from bench.engine import error_cells
from bench.grid import Plan, PlannedCell
from results import CellRecord, ModelRecord, cells_path, latest_cells, models_path
from results.store import (
    CellLog,
    RecordWriteError,
    append_model,
    is_current_model_record,
    latest_models,
    latest_models_in,
)


@dataclass
class RunSummary:
    """What a run did: the cells it recorded, the cells it found recorded, what failed.

    ``shared`` counts cells another process computed while this one ran (claimed first, see
    :meth:`results.store.CellLog.claim`); ``failures`` names each model stage that failed
    (training, calibration, clean pass, diagnostics) with its reason. ``by_process`` is set
    by a run in several processes (``jobs``): the cells each of them ran, this one first.
    """

    records: list[CellRecord] = field(default_factory=list)
    skipped: int = 0
    shared: int = 0
    errors: int = 0
    failures: list[str] = field(default_factory=list)
    by_process: list[int] = field(default_factory=list)

    @property
    def ran(self) -> int:
        return len(self.records)

    @property
    def ok(self) -> bool:
        return not self.errors and not self.failures

    def merge(self, other: RunSummary, total: int) -> None:
        """Add another process's summary of the same grid (``total`` cells) to this one."""
        self.by_process = (self.by_process or [self.ran]) + [other.ran]
        self.records.extend(other.records)
        self.errors += other.errors
        self.failures.extend(f for f in other.failures if f not in self.failures)
        self.shared = 0
        self.skipped = max(0, total - self.ran)


class Recorder:
    """Appends a run's records to its suite's :class:`results.store.CellLog`, counts them in
    its :class:`RunSummary` and moves its progress bar.

    ``since`` is empty, or with ``force`` the run's start (given: the start of the run this
    process helps, see :mod:`bench.executors.processes`): cells recorded ``ok`` after it count
    as done.
    """

    def __init__(self, plan: Plan, *, results_root: Path | None, force: bool, progress: bool,
                 since: str | None = None) -> None:
        self.grid, self.force = plan.grid, force
        self.results_root = results_root
        self.mpath = models_path(self.grid.suite, results_root)
        latest_cells(self.grid.suite, results_root)  # a corrupt records file stops here
        self.known_models = latest_models(self.grid.suite, results_root)
        self.log = CellLog(cells_path(self.grid.suite, results_root))
        self.log.refresh()
        self.since = "" if not force else since or provenance.now()
        self.summary = RunSummary()
        self.bar = tqdm(total=len(plan), desc=f"suite {self.grid.suite}", unit="cell",
                        disable=not progress)

    def close(self) -> None:
        self.bar.close()

    def describe(self, text: str) -> None:
        """Show which cell the run is on."""
        self.bar.set_postfix_str(text)

    def done(self, key: str) -> bool:
        return self.log.done(key, self.since)

    def record(self, r: CellRecord) -> None:
        """Append a finished cell (unless recorded meanwhile) and count it."""
        if self.log.append(r, self.since):
            self.summary.records.append(r)
            self.summary.errors += r.status == "error"
        elif r.status == "error":  # kept out: an error never replaces an ok record
            self.summary.errors += 1
            self.summary.failures.append(
                f"{r.model} {r.attack} {r.norm} ε={r.eps:g}: {r.error} (not recorded: the "
                "cell's earlier ok record stands)")
        else:
            self.summary.shared += 1
        self.bar.update()

    def skipped(self) -> None:
        """A cell found recorded before this run looked at it."""
        self.summary.skipped += 1
        self.bar.update()

    def shared_done(self) -> None:
        """A cell another process recorded while this run waited for it."""
        self.summary.shared += 1
        self.bar.update()

    def fail(self, name: str, sha: str, reason: str, cells: Sequence[PlannedCell], device: str
             ) -> None:
        """A model stage failed: error records for its cells that are not done."""
        self.summary.failures.append(f"{name}: {reason}")
        mine = {r.key for r in self.summary.records}
        todo = [c for c in cells if c.key(sha, self.grid.seed) not in mine
                and not self.done(c.key(sha, self.grid.seed))]
        for r in error_cells(todo, reason, suite=self.grid.suite, dataset=self.grid.dataset,
                             model=name, model_sha256=sha, device=device, seed=self.grid.seed):
            self.record(r)

    def wants_model_record(self, name: str, sha: str) -> bool:
        """Whether the model's record (card, clean accuracy, diagnostics) is to be written:
        none of these weights, n and diagnostics version is recorded yet (re-read: another
        process may have)."""
        if self.force:
            return True
        self.known_models.update(latest_models_in(self.mpath))
        return not is_current_model_record(self.known_models.get(name), sha, self.grid.n,
                                           DIAGNOSTICS_VERSION)

    def model_done(self, name: str, sha: str, describe: Callable[[], ModelRecord]) -> None:
        """Write the model's record; ``describe`` computes it, in one process of those that
        run the grid at once (the others leave it to the one holding its claim)."""
        claim = self.log.claim(f"model-{name}-{sha}", wait=False)
        if claim is None:
            return
        try:
            if self.wants_model_record(name, sha):
                append_model(self.mpath, describe())
        except RecordWriteError:
            raise  # the records cannot be written (a full disk): the run stops
        except Exception as exc:  # noqa: BLE001 - the cells are recorded; say what failed
            self.summary.failures.append(f"{name}: diagnostics failed: {type(exc).__name__}: "
                                         f"{exc}"[:500])
        finally:
            claim.release()
