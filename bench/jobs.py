"""Several local processes on one grid: ``python -m bench run --jobs N``.

Small models use the threads of one process badly: an MLP step on a batch of 256 gains little
from a second thread, Foolbox's Brendel-Bethge solver runs on one core, and combinatorial
attacks (IPROP) run many tiny operations.
``N`` processes with an equal share of the threads each (one each on a 2-core machine) finish
a grid sooner. They share it through the records' claims (:class:`bench.runner.ClaimGate`):
every (model, attack) unit is computed by exactly one of them, and a unit whose process dies
is computed by another at the end.

This process trains (or loads) every model of the grid first, at its own thread count:
trained weights depend on the torch thread count, and the zoo's published weights were
trained with two threads. It then starts ``N - 1`` helper processes, runs the grid itself and
merges their summaries into its own.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

import torch

from bench import provenance
from bench.determinism import enable_deterministic
from bench.runner import Grid, RunSummary, plan_cells, resolve_device, run_grid
from results import cells_path
from results.errors import QBenchError
from results.store import CellLog
from zoo import get_model, load_dataset


def threads_per_job(jobs: int, threads: int | None = None) -> int:
    """Each process's torch threads: an equal share of ``threads`` (default: this process's),
    at least one."""
    return max(1, (threads or torch.get_num_threads()) // jobs)


def prepare_worker(threads: int, deterministic: bool) -> None:
    """Set a worker's torch threads, and deterministic mode when the driver runs in it."""
    torch.set_num_threads(threads)
    if deterministic:
        enable_deterministic()


def train_models(grid: Grid, *, device: str, retrain: bool, progress: bool,
                 data_root: str | None, max_train_steps: int | None,
                 weights: str = "shipped") -> dict[str, str]:
    """Train (or load) the grid's models here, on ``device`` (resolved: cpu, cuda, …): their
    weights' sha256 by name. A model that fails is left to the run, which records the failure
    in its cells."""
    shas = {}
    for name in grid.models:
        try:
            _, card = get_model(name, device=device, weights=weights, retrain=retrain,
                                progress=progress, data_root=data_root,
                                max_train_steps=max_train_steps)
            shas[name] = card["weights_sha256"]
        except Exception as exc:  # noqa: BLE001 - the run records it, cell by cell
            print(f"warning: training {name} failed ({type(exc).__name__}: {exc}); its cells "
                  "will record the failure", file=sys.stderr)
    return shas


def pending(grid: Grid, shas: dict[str, str], *, results_root: Path | None,
            data_root: str | None) -> int:
    """How many cells of the grid are not recorded ``ok`` (all of a model without weights)."""
    log = CellLog(cells_path(grid.suite, results_root))
    log.refresh()
    data = load_dataset(grid.dataset, data_root)
    todo = 0
    for name in grid.models:
        plan = plan_cells(data, grid.attacks, grid.eps, grid.n, grid.limits.get(name, {}))
        sha = shas.get(name)
        todo += sum(sha is None or not log.done(c.key(sha, grid.seed), "") for c in plan)
    return todo


#: exit status of a helper that stopped because the process that started it died
ORPHANED_EXIT = 3


def exit_with_parent() -> None:
    """Stop this process as soon as the process that started it is gone, killed or not.

    A helper outlives a first process killed by a signal (even SIGKILL: no ``finally`` runs),
    and would go on computing and recording cells nobody waits for. A daemon thread waits on
    the parent's sentinel and ends the helper; what it was computing is left as after any kill
    (its claim lapses, a later run computes the cell). No-op in a process without a parent.
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()
        os._exit(ORPHANED_EXIT)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _helper(conn: Connection, grid: Grid, threads: int, deterministic: bool,
            kwargs: dict) -> None:
    """One helper process: the grid at ``threads`` threads, no progress bar; its summary (or
    its failure) goes back through ``conn``. It stops when the first process dies."""
    exit_with_parent()
    try:
        prepare_worker(threads, deterministic)
        summary = run_grid(grid, progress=False, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - reported by the first process
        summary = RunSummary(failures=[f"a helper process failed: {type(exc).__name__}: "
                                       f"{exc}"[:500]])
    conn.send(summary)
    conn.close()


def _collect(proc: BaseProcess, conn: Connection) -> RunSummary:
    """A helper's summary, once it has finished (or a failure if it died without one)."""
    while not conn.poll(0.5):
        if not proc.is_alive() and not conn.poll():
            return RunSummary(failures=[f"a helper process died (exit code {proc.exitcode}); "
                                        "the first process computed what it left"])
    summary = conn.recv()
    proc.join()
    return summary


def merge(summary: RunSummary, other: RunSummary, total: int) -> None:
    """Add a helper's summary to ``summary`` (in place); ``total`` is the grid's cell count."""
    summary.by_process = (summary.by_process or [summary.ran]) + [other.ran]
    summary.records.extend(other.records)
    summary.errors += other.errors
    summary.failures.extend(f for f in other.failures if f not in summary.failures)
    summary.shared = 0
    summary.skipped = max(0, total - summary.ran)


def run_jobs(grid: Grid, jobs: int, *, device: str, results_root: Path | None, force: bool,
             retrain: bool, progress: bool, data_root: str | None,
             max_train_steps: int | None, weights: str = "shipped") -> RunSummary:
    """Run ``grid`` in ``jobs`` processes (this one and ``jobs - 1`` helpers) that share it."""
    if jobs < 1:
        raise QBenchError(f"--jobs must be a positive number of processes, got {jobs}")
    threads = threads_per_job(jobs)
    device = resolve_device(device)
    shas = train_models(grid, device=device, retrain=retrain, progress=progress,
                        data_root=data_root, max_train_steps=max_train_steps, weights=weights)
    if not force and not pending(grid, shas, results_root=results_root, data_root=data_root):
        jobs = 1  # everything is recorded: no helper process to start
    since = provenance.now() if force else None
    # the helpers load what this process trained: retrained weights are "trained" ones
    kwargs = dict(device=device, results_root=results_root, force=force, retrain=False,
                  data_root=data_root, max_train_steps=max_train_steps, since=since,
                  weights="trained" if retrain else weights)
    deterministic = torch.are_deterministic_algorithms_enabled()
    # spawn, not fork: a forked copy of a process that has run torch's thread pool may hang
    ctx = multiprocessing.get_context("spawn")
    helpers = []
    for _ in range(jobs - 1):
        ours, theirs = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_helper, args=(theirs, grid, threads, deterministic, kwargs),
                           daemon=True)
        proc.start()
        theirs.close()
        helpers.append((proc, ours))
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        summary = run_grid(grid, progress=progress, **kwargs)
        # every unit is recorded now: this run waited for those its helpers held
        total = len(grid.cells())
        for proc, conn in helpers:
            merge(summary, _collect(proc, conn), total)
    finally:
        torch.set_num_threads(saved)
        for proc, _ in helpers:  # interrupted: the helpers stop too (finished cells stay)
            if proc.is_alive():
                proc.terminate()
                proc.join()
    return summary
