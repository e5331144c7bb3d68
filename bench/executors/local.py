"""The local executor: every cell in this process, one model after another.

Several such processes may run one grid into one folder at once (the processes executor
starts them; so may a user, by hand): each (model, attack) unit is claimed by the process
computing it (:class:`ClaimGate`), others skip it on their first pass and, at the end, wait for
it (and compute it themselves if its claimant died without recording it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from bench.engine import GateState, StageError, evaluate_cells, model_record, resolve_device
from bench.executors.base import RunOptions
from bench.grid import Plan
from bench.recorder import Recorder
from results.errors import CorruptWeightsError
from results.store import RecordWriteError
from zoo import get_model, load_dataset


class ClaimGate:
    """The local executor's gate: claims one (model, attack) unit at a time.

    Processes that run one grid share it by units: all ε of an attack on a model (so a
    minimum-norm attack's one search serves all of them). The first cell of a unit that is not
    recorded claims the unit; the claim is held until the gate moves on to another unit (or
    :meth:`release`), so every record of the unit is appended under it. A unit claimed by
    another live process reads :attr:`GateState.BUSY` for each of its cells; ``wait`` blocks
    until the holder releases it or dies. ``only`` limits the gate to those keys (others read
    :attr:`GateState.OTHER`).
    """

    def __init__(self, rec: Recorder, unit_of: dict[str, str], *, wait: bool = False,
                 only: set[str] | None = None) -> None:
        self.rec, self.unit_of, self.wait, self.only = rec, unit_of, wait, only
        self.unit: str | None = None
        self.claim = None

    def release(self) -> None:
        if self.claim is not None:
            self.claim.release()
        self.unit, self.claim = None, None

    @contextlib.contextmanager
    def __call__(self, key: str) -> Iterator[GateState]:
        if self.only is not None and key not in self.only:
            yield GateState.OTHER
            return
        log = self.rec.log
        log.refresh()
        if self.rec.done(key):
            yield GateState.DONE
            return
        unit = self.unit_of[key]
        if unit != self.unit:
            self.release()
            self.unit, self.claim = unit, log.claim(unit, wait=self.wait)
        if self.claim is not None:
            log.refresh()  # the unit's previous holder may have recorded this cell meanwhile
        if self.rec.done(key):
            yield GateState.DONE
        else:
            yield GateState.RUN if self.claim is not None else GateState.BUSY


@dataclass(frozen=True)
class Local:
    """Compute every cell in this process (the default executor)."""

    def execute(self, plan: Plan, rec: Recorder, run: RunOptions) -> None:
        grid = plan.grid
        device = resolve_device(run.device)
        data = load_dataset(grid.dataset, run.data_root)
        deferred: dict[str, set[str]] = {}

        def run_model(name: str, on_skip: Callable[[str, GateState], None], *,
                      wait: bool = False, only: set[str] | None = None) -> None:
            cells = plan.of(name)
            sha, stage = "", "training"
            gate = None
            try:
                model, card = get_model(name, device=device, weights=run.weights,
                                        retrain=run.retrain, progress=run.progress,
                                        data_root=run.data_root,
                                        max_train_steps=run.max_train_steps)
                sha, stage = card["weights_sha256"], "clean pass"
                gate = ClaimGate(rec, {c.key(sha, grid.seed): f"{name}.{c.attack}.{sha[:16]}"
                                       for c in cells}, wait=wait, only=only)
                for _ in evaluate_cells(
                    model, cells, model_name=name, model_sha256=sha, suite=grid.suite,
                    dataset=data, n=grid.n, seed=grid.seed, device=device, gate=gate,
                    on_record=rec.record, on_skip=on_skip, on_start=rec.describe,
                ):
                    pass  # each record is appended as its cell finishes
            except (RecordWriteError, CorruptWeightsError):
                # the records cannot be written (a full disk), or a weights file or card is
                # not what it must be: a problem of this machine's files, not of the model.
                # The run stops with one line; every finished cell is kept
                raise
            except Exception as exc:  # noqa: BLE001 - one model's failure must not stop the grid
                rec.fail(name, sha, StageError.reason(stage, exc), cells, device)
                return
            finally:
                if gate is not None:
                    gate.release()
            if rec.wants_model_record(name, sha):
                rec.model_done(name, sha, lambda: model_record(model, name, sha, card, grid,
                                                               data, device))

        def first_pass_skip(name: str) -> Callable[[str, GateState], None]:
            def skip(key: str, state: GateState) -> None:
                if state is GateState.BUSY:
                    deferred.setdefault(name, set()).add(key)
                elif state is GateState.DONE:
                    rec.skipped()
            return skip

        def second_pass_skip(key: str, state: GateState) -> None:
            if state is GateState.DONE:
                rec.shared_done()

        for name in grid.models:
            run_model(name, first_pass_skip(name))
        for name, keys in deferred.items():  # cells other processes held: wait, then check
            run_model(name, second_pass_skip, wait=True, only=keys)
