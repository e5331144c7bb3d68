"""The processes executor: several local processes on one grid (``python -m bench run --jobs N``).

Small models use the threads of one process badly: an MLP step on a batch of 256 gains little
from a second thread, Foolbox's Brendel-Bethge solver runs on one core, and combinatorial
attacks (IPROP) run many tiny operations.
``N`` processes with an equal share of the threads each (one each on a 2-core machine) finish
a grid sooner. Each runs the local executor; they share the grid through the records' claims
(:class:`bench.executors.local.ClaimGate`): every (model, attack) unit is computed by exactly
one of them, and a unit whose process dies is computed by another at the end.

This process trains (or loads) every model of the grid first, at its own thread count:
trained weights depend on the torch thread count, and the zoo's published weights were
trained with two threads. It then starts ``N - 1`` helper processes, runs the grid itself and
merges their summaries into its own.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import sys
import threading
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

import torch

from bench.engine import prepare_worker, resolve_device
from bench.executors.base import RunOptions
from bench.executors.local import Local
from bench.grid import Plan
from bench.recorder import Recorder, RunSummary
from results.errors import QBenchError
from zoo import get_model


def threads_per_job(jobs: int, threads: int | None = None) -> int:
    """Each process's torch threads: an equal share of ``threads`` (default: this process's),
    at least one."""
    return max(1, (threads or torch.get_num_threads()) // jobs)


def train_models(plan: Plan, run: RunOptions) -> dict[str, str]:
    """Train (or load) the grid's models here, on ``run.device`` (resolved: cpu, cuda, …):
    their weights' sha256 by name. A model that fails is left to the run, which records the
    failure in its cells."""
    shas = {}
    for name in plan.grid.models:
        try:
            _, card = get_model(name, device=run.device, weights=run.weights,
                                retrain=run.retrain, progress=run.progress,
                                data_root=run.data_root, max_train_steps=run.max_train_steps)
            shas[name] = card["weights_sha256"]
        except Exception as exc:  # noqa: BLE001 - the run records it, cell by cell
            print(f"warning: training {name} failed ({type(exc).__name__}: {exc}); its cells "
                  "will record the failure", file=sys.stderr)
    return shas


def pending(plan: Plan, rec: Recorder, shas: dict[str, str]) -> int:
    """How many cells of the plan are not recorded ``ok`` (all of a model without weights)."""
    rec.log.refresh()
    seed = plan.grid.seed
    return sum(shas.get(name) is None or not rec.done(c.key(shas[name], seed))
               for name in plan.grid.models for c in plan.of(name))


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


@dataclasses.dataclass(frozen=True)
class HelperJob:
    """What a helper process needs: the plan, where the records are, and how to run."""

    plan: Plan
    results_root: Path | None
    force: bool
    since: str
    run: RunOptions
    threads: int
    deterministic: bool


def _helper(conn: Connection, job: HelperJob) -> None:
    """One helper process: the local executor on the plan at ``job.threads`` threads, no
    progress bar; its summary (or its failure) goes back through ``conn``. It stops when the
    first process dies."""
    exit_with_parent()
    try:
        prepare_worker(job.threads, job.deterministic)
        rec = Recorder(job.plan, results_root=job.results_root, force=job.force,
                       progress=False, since=job.since or None)
        try:
            Local().execute(job.plan, rec, job.run)
        finally:
            rec.close()
        summary = rec.summary
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


@dataclasses.dataclass(frozen=True)
class Processes:
    """Run the plan in ``jobs`` processes (this one and ``jobs - 1`` helpers) that share it."""

    jobs: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1:
            raise QBenchError(f"--jobs must be a positive number of processes, got "
                              f"{self.jobs}")

    def execute(self, plan: Plan, rec: Recorder, run: RunOptions) -> None:
        threads = threads_per_job(self.jobs)
        run = dataclasses.replace(run, device=resolve_device(run.device))
        shas = train_models(plan, run)
        jobs = self.jobs
        if not rec.force and not pending(plan, rec, shas):
            jobs = 1  # everything is recorded: no helper process to start
        # the helpers load what this process trained: retrained weights are "trained" ones
        run = dataclasses.replace(run, retrain=False,
                                  weights="trained" if run.retrain else run.weights)
        job = HelperJob(plan, rec.results_root, rec.force, rec.since,
                        dataclasses.replace(run, progress=False), threads,
                        torch.are_deterministic_algorithms_enabled())
        # spawn, not fork: a forked copy of a process that has run torch's thread pool may hang
        ctx = multiprocessing.get_context("spawn")
        helpers = []
        for _ in range(jobs - 1):
            ours, theirs = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_helper, args=(theirs, job), daemon=True)
            proc.start()
            theirs.close()
            helpers.append((proc, ours))
        saved = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            Local().execute(plan, rec, run)
            # every unit is recorded now: this run waited for those its helpers held
            for proc, conn in helpers:
                rec.summary.merge(_collect(proc, conn), len(plan))
        finally:
            torch.set_num_threads(saved)
            for proc, _ in helpers:  # interrupted: the helpers stop too (finished cells stay)
                if proc.is_alive():
                    proc.terminate()
                    proc.join()
