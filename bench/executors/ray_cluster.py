"""The Ray executor: the same plan, records and resume on many CPUs, GPUs and machines.

The driver (the process that runs ``python -m bench run --executor ray``) has the plan every
executor gets (the same cells, keys and suite limits; cells recorded ``ok`` are skipped),
trains or loads each model once and puts its weights file and card into Ray's object store.
It then sends one task per (model, attack) holding the cells of that attack not yet
recorded, at all its ε (a minimum-norm attack searches once for all of them, as locally).
A task is a pure function of its inputs: it rebuilds the network from the zoo by name, checks
the weights against the card's sha256, runs the cells with the engine
(:func:`bench.engine.evaluate_cells`) as locally and returns their records. The driver is the
only writer of the records, so resume, keys and :func:`results.load` are unchanged; a rerun
of a killed driver's command resumes it.

Faults. Ray reruns a task whose worker died (``max_retries``); a task that raises or is lost
for good becomes error cells, as locally, and is retried by the next run.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import socket
from dataclasses import dataclass

import torch
from safetensors.torch import load as load_safetensors
from torch import nn

from bench.engine import (
    GateState,
    StageError,
    error_cells,
    evaluate_cells,
    model_record,
    prepare_worker,
)
from bench.executors.base import RunOptions
from bench.grid import Grid, Plan, PlannedCell
from bench.recorder import Recorder
from results import CellRecord, ModelRecord
from results.errors import CorruptWeightsError, QBenchError
from zoo import get_model, load_dataset, model_spec
from zoo.data import Dataset
from zoo.registry import weights_path

#: A task whose worker process died is run again this many times before its cells are errors.
MAX_RETRIES = 3


@dataclass(frozen=True)
class Unit:
    """One task: the cells of one attack on one model that are not recorded yet."""

    model: str
    attack: str
    cells: tuple[PlannedCell, ...]


@dataclass(frozen=True)
class Shipped:
    """A trained model as it travels to the workers: its weights file and its card."""

    name: str
    blob: bytes
    card: dict

    @property
    def sha256(self) -> str:
        return self.card["weights_sha256"]


def pack(name: str, card: dict) -> Shipped:
    """The weights file behind a card :func:`zoo.get_model` returned (shipped or cached)."""
    return Shipped(name, weights_path(card).read_bytes(), card)


_WORKER_MODELS: dict[tuple[str, str], nn.Module] = {}  # per worker process: (sha, device)
_WORKER_DATA: dict[tuple[str, str | None], Dataset] = {}


def unpack(shipped: Shipped, data: Dataset, device: str) -> nn.Module:
    """The shipped model in eval mode, weights verified (cached per worker)."""
    cached = _WORKER_MODELS.get((shipped.sha256, device))
    if cached is not None:
        return cached
    actual = hashlib.sha256(shipped.blob).hexdigest()
    if actual != shipped.sha256:
        raise CorruptWeightsError(f"the weights of {shipped.name} arrived with sha256 "
                                  f"{actual[:12]}…, not the card's {shipped.sha256[:12]}…")
    model = model_spec(shipped.name).factory()
    model.load_state_dict(load_safetensors(shipped.blob))
    model = model.to(device).eval()
    _WORKER_MODELS[(shipped.sha256, device)] = model
    return model


def dataset(name: str, data_root: str | None) -> Dataset:
    if (name, data_root) not in _WORKER_DATA:
        _WORKER_DATA[(name, data_root)] = load_dataset(name, data_root)
    return _WORKER_DATA[(name, data_root)]


def execute_unit(unit: Unit, shipped: Shipped, *, grid: Grid, data_root: str | None,
                 device: str, threads: int, deterministic: bool = False) -> list[CellRecord]:
    """Run one unit's cells where this function runs; their records (errors included)."""
    prepare_worker(threads, deterministic)
    data = dataset(grid.dataset, data_root)
    fields = dict(suite=grid.suite, dataset=grid.dataset, model=unit.model,
                  model_sha256=shipped.sha256, device=device, seed=grid.seed)
    stage = "loading the shipped weights"
    try:
        model = unpack(shipped, data, device)
        stage = "clean pass"
        return list(evaluate_cells(
            model, unit.cells, model_name=unit.model, model_sha256=shipped.sha256,
            suite=grid.suite, dataset=data, n=grid.n, seed=grid.seed, device=device,
            gate=lambda k: contextlib.nullcontext(GateState.RUN)))
    except Exception as exc:  # noqa: BLE001 - a failing model becomes error cells
        return error_cells(unit.cells, StageError.reason(stage, exc), **fields)


def describe_model(shipped: Shipped, *, grid: Grid, data_root: str | None, device: str,
                   threads: int, deterministic: bool = False) -> ModelRecord:
    """The model's record (clean accuracy, gradient diagnostics), computed on a worker."""
    prepare_worker(threads, deterministic)
    data = dataset(grid.dataset, data_root)
    model = unpack(shipped, data, device)
    return model_record(model, shipped.name, shipped.sha256, shipped.card, grid, data, device)


def check_task_size(gpus_per_task: float, threads_per_task: int) -> None:
    """Refuse task sizes Ray cannot schedule, naming the value."""
    if isinstance(threads_per_task, bool) or not isinstance(threads_per_task, int) \
            or threads_per_task < 1:
        raise QBenchError(f"--threads-per-task must be a positive number of CPU threads, got "
                          f"{threads_per_task}")
    if not (math.isfinite(gpus_per_task) and gpus_per_task >= 0):
        raise QBenchError(f"--gpus-per-task must be a number of GPUs ≥ 0 (fractions allowed), "
                          f"got {gpus_per_task}")


#: how long the driver waits for a cluster's head to accept a connection
CONNECT_TIMEOUT_S = 10.0


def probe(address: str) -> None:
    """Refuse, within :data:`CONNECT_TIMEOUT_S`, a ``HOST:PORT`` that is malformed or where
    nothing accepts a connection (``ray.init`` waits on such an address until killed)."""
    host, sep, port = address.split("://", 1)[-1].rpartition(":")  # ray://HOST:PORT too
    hint = ("start one with `ray start --head` and pass the address it prints, use 'auto' on "
            "a node that joined a cluster, or leave --ray-address out to start a local one")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise QBenchError(f"--ray-address {address!r} is not HOST:PORT with a port from 1 to "
                          f"65535 (or 'auto'); {hint}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise QBenchError(f"cannot reach a Ray cluster at {address!r}: nothing accepts a "
                          f"connection there ({exc.strerror or type(exc).__name__}); "
                          f"{hint}") from None


def connect(address: str | None, threads_per_task: int) -> bool:
    """Join the cluster at ``address`` (``auto``, ``HOST:PORT``, or ``$RAY_ADDRESS``), or
    start a local one when neither is given; True when this call started Ray."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address not in (None, "auto"):
        probe(address)
    import ray

    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
    except (ConnectionError, ValueError, RuntimeError) as exc:
        if address not in (None, "auto"):  # something listens there (the probe connected)
            raise QBenchError(
                f"the Ray cluster at {address!r} did not let this driver join ({exc}): with "
                "token authentication (what `ray start` turns on), export RAY_AUTH_MODE=token "
                "and give this machine the head's ~/.ray/auth_token; else check that the "
                f"address is the head's GCS port and that the head runs Ray {ray.__version__}"
            ) from None
        raise QBenchError(f"cannot reach a Ray cluster at {address!r} ({exc}); start one with "
                          "`ray start --head`, or leave --ray-address out to start a local "
                          "one") from None
    cpus = ray.cluster_resources().get("CPU", 0)
    if cpus < threads_per_task:
        raise QBenchError(f"--threads-per-task {threads_per_task} is more than the cluster's "
                          f"{cpus:g} CPUs")
    return True


@dataclass(frozen=True)
class RayCluster:
    """Run the plan as Ray tasks (see the module doc).

    ``address``: a cluster's ``HOST:PORT``, ``auto`` on a node that joined one, or None
    (``$RAY_ADDRESS``, else a local Ray started for the run); ``threads_per_task``: CPU threads
    (and Ray CPUs) per task; ``gpus_per_task``: GPUs per task (fractions share a GPU; 0 runs
    the tasks on CPUs).
    """

    address: str | None = None
    gpus_per_task: float = 0.0
    threads_per_task: int = 1

    def __post_init__(self) -> None:
        check_task_size(self.gpus_per_task, self.threads_per_task)

    def execute(self, plan: Plan, rec: Recorder, run: RunOptions) -> None:
        import ray

        grid = plan.grid
        started = connect(self.address, self.threads_per_task)
        device = "cuda" if self.gpus_per_task > 0 else "cpu"
        opts = dict(num_cpus=self.threads_per_task, num_gpus=self.gpus_per_task,
                    max_retries=MAX_RETRIES)
        cell_task = ray.remote(execute_unit).options(**opts)
        model_task = ray.remote(describe_model).options(**opts)
        common = dict(grid=grid, data_root=run.data_root, device=device,
                      threads=self.threads_per_task,
                      deterministic=torch.are_deterministic_algorithms_enabled())
        pending: dict = {}
        try:
            for name in grid.models:
                cells = plan.of(name)
                try:  # loaded (or trained) once, by the driver, sha256-checked
                    _, card = get_model(name, device="cpu", weights=run.weights,
                                        retrain=run.retrain, progress=run.progress,
                                        data_root=run.data_root,
                                        max_train_steps=run.max_train_steps)
                    shipped = pack(name, card)
                except CorruptWeightsError:
                    raise  # a weights file or card of this machine: one line, not error cells
                except Exception as exc:  # noqa: BLE001 - one model's failure must not stop the grid
                    rec.fail(name, "", StageError.reason("training", exc), cells, device)
                    continue
                todo: dict[str, list[PlannedCell]] = {}
                for cell in cells:
                    if rec.done(cell.key(shipped.sha256, grid.seed)):
                        rec.skipped()
                    else:
                        todo.setdefault(cell.attack, []).append(cell)
                ref = ray.put(shipped)
                for attack, todo_cells in todo.items():
                    unit = Unit(name, attack, tuple(todo_cells))
                    pending[cell_task.remote(unit, ref, **common)] = (unit, shipped)
                if rec.wants_model_record(name, shipped.sha256):
                    pending[model_task.remote(ref, **common)] = (None, shipped)
            while pending:
                (ready,), _ = ray.wait(list(pending), num_returns=1)
                unit, shipped = pending.pop(ready)
                if unit is None:
                    rec.model_done(shipped.name, shipped.sha256,
                                   lambda ready=ready: ray.get(ready))
                    continue
                try:
                    records = ray.get(ready)
                except Exception as exc:  # noqa: BLE001 - a lost task becomes error cells
                    records = error_cells(
                        unit.cells, f"Ray task failed: {type(exc).__name__}: {exc}"[:500],
                        suite=grid.suite, dataset=grid.dataset, model=unit.model,
                        model_sha256=shipped.sha256, device=device, seed=grid.seed)
                for r in records:
                    rec.record(r)
        finally:
            if started:
                ray.shutdown()
