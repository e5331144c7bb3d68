"""The engine: attack one model's planned cells, verify every candidate, make the records.

Everything here is a function of its inputs (a model in eval mode, its planned cells, the
dataset, the seed, the device) and returns records; nothing here writes them. The executors
(:mod:`bench.executors`) decide where these functions run and hand what they return to the one
writer, :class:`bench.recorder.Recorder`. A gate (:data:`Gate`) tells the engine, cell by cell,
whether to compute it (:attr:`GateState.RUN`) or skip it.
"""

from __future__ import annotations

import contextlib
import enum
import time
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from attacks import create_attack
from attacks.base import AttackContext, AttackResult, MinimumNormAttack
from attacks.pgdpp import reference_beta1
from bench import provenance
from bench.calibrate import attack_context, diagnostics
from bench.determinism import enable_deterministic
from bench.grid import Grid, PlannedCell, cell_seed
from bench.instrument import CountingModel
from bench.verify import predict, verify
from results import CellRecord, ModelRecord
from results.errors import QBenchError
from results.schema import RecordError, finite
from zoo.data import Dataset
from zoo.deployed import integer_model
from zoo.layers import frozen


class GateState(enum.Enum):
    """What a gate says of a cell."""

    RUN = "run"  # compute it (and record it while the gate is held)
    DONE = "done"  # it is recorded
    BUSY = "busy"  # another process holds it
    OTHER = "other"  # not one of the cells this gate hands out (a second pass, a Ray unit)


Gate = Callable[[str], contextlib.AbstractContextManager[GateState]]


def prepare_worker(threads: int, deterministic: bool) -> None:
    """Set a worker process's torch threads, and deterministic mode when the driver runs in
    it (the processes and Ray executors call it before running cells)."""
    torch.set_num_threads(threads)
    if deterministic:
        enable_deterministic()


def resolve_device(device: str) -> str:
    """``auto`` picks ``cuda`` when a GPU is present, else ``cpu``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise QBenchError(f"device {device!r} was asked for but no CUDA GPU is available; "
                          "use --device cpu or --device auto")
    if device != "cpu" and not device.startswith("cuda"):
        raise QBenchError(f"unknown device {device!r}; allowed: auto, cpu, cuda, cuda:N")
    return device


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def attack_cell(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, clean_correct: torch.Tensor, *,
    attack_name: str, eps: float, seed: int, device: str, batch_size: int = 1000,
    context: AttackContext | None = None, searches: dict | None = None,
    deployed: nn.Module | None = None,
) -> dict:
    """Run one attack at one ε on the correctly classified points and verify the candidates.

    Returns the measured fields of a CellRecord. Exceptions from the attack are caught and
    reported as an error cell; the grid goes on. When the device runs out of memory, the
    attack is run once more from the start with half the batch (``info["oom_batch_size"]``
    says so). ``context`` (default: an empty one) is what the attack's one-off
    :meth:`attacks.base.Attack.setup` gets (reference images, σ, training inputs; see
    :func:`bench.calibrate.attack_context`); its work is not counted in ``seconds`` or the
    pass counts. ``deployed`` (a multi-bit model's exact integer evaluation,
    :func:`zoo.deployed.integer_model`) re-checks every counted adversarial example:
    ``info["deployed_held"]`` of ``info["deployed_checked"]`` are misclassified there too.
    """
    attack = create_attack(attack_name)
    idx = clean_correct.nonzero().squeeze(1)
    out: dict = {"attack_config": attack.config(), "norm": attack.norm,
                 "n_attacked": len(idx), "rejected": 0, "info": {}}
    batch = min(batch_size, max(len(idx), 1))
    for retry in (False, True):
        robust = clean_correct.clone()
        cost = {"seconds": 0.0, "forwards": 0, "backwards": 0}
        out.update(rejected=0, info={"oom_batch_size": batch} if retry else {}, per_point={})
        try:
            _attack_batches(attack, model, x, y, idx, robust, out, cost, eps=eps, seed=seed,
                            device=device, batch_size=batch, context=context, deployed=deployed,
                            searches=None if retry else searches)
        except torch.OutOfMemoryError as exc:
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
            if not retry and batch > 1:
                batch = max(batch // 2, 1)
                continue
            out.update(status="error", error=f"{type(exc).__name__}: {exc}"[:500],
                       robust_acc=None)
        except Exception as exc:  # noqa: BLE001 - an attack's failure must not stop the grid
            out.update(status="error", error=f"{type(exc).__name__}: {exc}"[:500],
                       robust_acc=None)
        else:
            out.update(status="ok", error=None, robust_acc=int(robust.sum()) / len(robust))
        break
    n_att = max(len(idx), 1)
    per_point = out.pop("per_point", {})
    if out.get("status") == "ok":
        try:
            out["info"].update(spread_per_point(per_point, idx.tolist(), len(clean_correct)))
        except RuntimeError as exc:  # the attack's own bug: this cell fails, the grid goes on
            out.update(status="error", error=str(exc)[:500], robust_acc=None)
    out.update(
        robust=[int(v) for v in robust.tolist()],
        clean_correct=[int(v) for v in clean_correct.tolist()],
        seconds=round(cost["seconds"], 6),
        seconds_per_sample=cost["seconds"] / n_att,
        forwards_per_sample=cost["forwards"] / n_att,
        backwards_per_sample=cost["backwards"] / n_att,
    )
    return out


def _attack_batches(
    attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor,
    robust: torch.Tensor, out: dict, cost: dict, *, eps: float, seed: int, device: str,
    batch_size: int, context: AttackContext | None, searches: dict | None,
    deployed: nn.Module | None = None,
) -> None:
    """The batches of one attack cell: attack, verify, and fill ``robust``, ``out``, ``cost``."""
    counted = CountingModel(model).eval()
    with torch.random.fork_rng(devices=[torch.device(device)] if device != "cpu" else []), \
            frozen(model):
        torch.manual_seed(seed)
        gen = torch.Generator(device=device).manual_seed(seed)
        if len(idx):  # one-off, not timed: compile a solver, calibrate NJS β1, …
            attack.setup(model, context if context is not None else AttackContext())
        for start in range(0, len(idx), batch_size):
            b = idx[start : start + batch_size]
            if isinstance(attack, MinimumNormAttack) and searches is not None:
                if start not in searches:  # the first ε of this attack: search once
                    searches[start] = _measured(
                        lambda b=b: attack.search(counted, x[b], y[b], generator=gen),
                        counted, device)
                found, spent = searches[start]
                result = AttackResult(attack.restrict(x[b], found.x_adv, eps), found.info)
                out["info"]["search_shared_across_eps"] = True
            else:
                result, spent = _measured(
                    lambda b=b: attack(counted, x[b], y[b], eps=eps, generator=gen),
                    counted, device)
            for k in cost:
                cost[k] += spent[k]
            verdict = verify(model, x[b], y[b], result.x_adv, eps=eps, norm=attack.norm)
            robust[b] = ~verdict.success
            out["rejected"] += verdict.rejected
            _merge_info(out["info"], result.info, len(b))
            if deployed is not None:  # the counted examples, in the deployed arithmetic
                hits = verdict.success
                held = predict(deployed, result.x_adv[hits]) != y[b][hits]
                out["info"]["deployed_checked"] = (out["info"].get("deployed_checked", 0)
                                                   + int(hits.sum()))
                out["info"]["deployed_held"] = (out["info"].get("deployed_held", 0)
                                                + int(held.sum()))
            for k, values in result.per_point.items():
                out.setdefault("per_point", {}).setdefault(k, []).extend(values)


def spread_per_point(per_point: dict[str, list], attacked: list[int], n: int
                     ) -> dict[str, list]:
    """An attack's per-point lists (one entry per attacked point, in order) over all ``n``
    test points, ``""`` where a point was not attacked."""
    out = {}
    for k, values in per_point.items():
        if len(values) != len(attacked):
            raise RuntimeError(f"per-point list {k!r} has {len(values)} entries for "
                               f"{len(attacked)} attacked points")
        full: list = [""] * n
        for i, v in zip(attacked, values, strict=True):
            full[i] = v
        out[k] = full
    return out


def _measured(call: Callable[[], AttackResult], counted: CountingModel, device: str
              ) -> tuple[AttackResult, dict[str, float]]:
    """Run an attack call; its result with its wall time and the passes it made."""
    before = counted.forwards, counted.backwards
    _sync(device)
    t0 = time.perf_counter()
    result = call()
    _sync(device)
    return result, {"seconds": time.perf_counter() - t0,
                    "forwards": counted.forwards - before[0],
                    "backwards": counted.backwards - before[1]}


def _merge_info(acc: dict, info: dict, weight: int) -> None:
    """Combine per-batch attack info: counts add up, min/max combine, other numbers average."""
    acc["_w"] = acc.get("_w", 0) + weight
    for k, v in info.items():
        if not isinstance(v, int | float) or isinstance(v, bool) or k not in acc:
            acc[k] = v
        elif k.endswith("_min"):
            acc[k] = min(acc[k], v)
        elif k.endswith("_max"):
            acc[k] = max(acc[k], v)
        elif isinstance(v, int):
            acc[k] += v
        else:
            acc[k] = acc[k] + (v - acc[k]) * weight / acc["_w"]


class StageError(RuntimeError):
    """A model failed before its cells could run (training, calibration, clean pass)."""

    def __init__(self, stage: str, exc: BaseException) -> None:
        self.stage = stage
        super().__init__(f"{stage} failed: {type(exc).__name__}: {exc}"[:500])

    @staticmethod
    def reason(stage: str, exc: BaseException) -> str:
        """What failed, in one line: ``exc``'s own text if it is a StageError already."""
        return str(exc) if isinstance(exc, StageError) else StageError(stage, exc).args[0]


def clean_pass(model: nn.Module, x: torch.Tensor, y: torch.Tensor, classes: int
               ) -> torch.Tensor:
    """Which test points the model classifies correctly, batched as verification batches
    (:func:`bench.verify.predict`); refuses logits of the wrong shape."""
    probe = x[:2]
    with torch.no_grad():
        logits = model(probe)
    if not isinstance(logits, torch.Tensor) or logits.shape != (len(probe), classes):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
        raise QBenchError(f"the model returned {shape} for {len(probe)} inputs; expected "
                          f"logits of shape ({len(probe)}, {classes})")
    with torch.no_grad():
        return predict(model, x) == y


def evaluate_cells(
    model: nn.Module, cells: Sequence[PlannedCell], *, model_name: str, model_sha256: str,
    suite: str, dataset: Dataset, n: int, seed: int, device: str, gate: Gate | None = None,
    on_record: Callable[[CellRecord], None] | None = None,
    on_skip: Callable[[str, GateState], None] | None = None,
    on_start: Callable[[str], None] | None = None,
) -> Iterator[CellRecord]:
    """Yield one verified CellRecord per planned cell for a model already in eval mode.

    The clean pass runs on the first ``n`` test points, each cell on its own first
    ``cell.n`` ≤ ``n``. ``gate(key)`` (optional) decides per cell whether to compute it
    (:attr:`GateState.RUN`) or to skip it (``on_skip(key, state)`` is called), and is held
    while the cell is computed and recorded (``on_record``). ``on_start`` hears which cell is
    about to be looked at (a progress bar's text). A failing clean pass raises
    :class:`StageError`.
    """
    too_big = [c for c in cells if c.n > n]
    if too_big:
        raise QBenchError(f"attack {too_big[0].attack} asks for {too_big[0].n} test points, "
                          f"more than the {n} given")
    try:
        x, y = (t.to(device) for t in dataset.test_subset(n))
        clean_correct = clean_pass(model, x, y, dataset.num_classes)
    except Exception as exc:  # noqa: BLE001 - reported as error cells by the caller
        raise StageError("clean pass", exc) from exc
    context = attack_context(dataset, device)  # shared by the model's cells
    deployed = integer_model(model)  # multi-bit models: their integer arithmetic
    searches: dict[str, dict] = {}  # a minimum-norm attack searches once for all its ε
    for cell in cells:
        key = cell.key(model_sha256, seed)
        if on_start is not None:
            on_start(f"{model_name} {cell.attack} ε={cell.eps:g}")
        with gate(key) if gate is not None else contextlib.nullcontext(GateState.RUN) as state:
            if state is not GateState.RUN:
                if on_skip:
                    on_skip(key, state)
                continue
            measured = attack_cell(model, x[:cell.n], y[:cell.n], clean_correct[:cell.n],
                                   attack_name=cell.attack, eps=cell.eps,
                                   seed=cell_seed(seed, model_name, cell.attack, cell.eps),
                                   device=device, context=context, deployed=deployed,
                                   searches=searches.setdefault(cell.attack, {}))
            measured["info"].pop("_w", None)
            measured["info"] = finite(measured["info"])
            record = cell_record(
                measured, cell, key=key, suite=suite, dataset=dataset.name, model=model_name,
                model_sha256=model_sha256, seed=seed, device=device,
                clean_acc=int(clean_correct[:cell.n].sum()) / cell.n)
            if on_record:
                on_record(record)
        yield record


def cell_record(measured: dict, cell: PlannedCell, **fields) -> CellRecord:
    """A validated record of a measured cell; one that fails validation becomes an error cell
    with the reason (the grid goes on)."""
    common = dict(attack=cell.attack, eps=cell.eps, n=cell.n, inputs_sha256=cell.inputs_sha256,
                  **provenance.stamp(fields["device"]), **fields)
    try:
        return CellRecord(**common, **measured).validate()
    except (RecordError, TypeError, ValueError) as exc:
        failed = {**measured, "status": "error", "robust_acc": None,
                  "error": f"invalid record: {exc}"[:500], "info": {}}
        failed["robust"] = list(failed["clean_correct"])
        return CellRecord(**common, **failed).validate()


def error_cells(plan: Sequence[PlannedCell], reason: str, **fields) -> list[CellRecord]:
    """Error records for planned cells that could not run because their model failed."""
    return [CellRecord(
        key=cell.key(fields["model_sha256"], fields["seed"]), attack=cell.attack,
        attack_config=cell.attack_config, norm=cell.norm, eps=cell.eps, n=cell.n,
        n_attacked=0, clean_acc=None, robust_acc=None, seconds=0.0, seconds_per_sample=0.0,
        robust=[], clean_correct=[], inputs_sha256=cell.inputs_sha256, status="error",
        error=reason, **provenance.stamp(fields["device"]), **fields,
    ).validate() for cell in plan]


def model_record(model: nn.Module, name: str, sha: str, card: dict, grid: Grid, data: Dataset,
                 device: str) -> ModelRecord:
    """The model's record for a grid: card, clean accuracy and gradient diagnostics on the
    grid's test points."""
    x, y = (t.to(device) for t in data.test_subset(grid.n))
    with torch.no_grad():
        pred = model(x).argmax(1)
    clean = int((pred == y).sum()) / len(y)
    found = diagnostics(model, x, y, reference_beta1(model, attack_context(data, device)))
    deployed = integer_model(model)
    if deployed is not None:  # test points the deployed arithmetic classifies otherwise
        found["deployed_clean_disagree"] = int((predict(deployed, x) != pred).sum())
    return ModelRecord(
        suite=grid.suite, dataset=grid.dataset, model=name, model_sha256=sha, clean_acc=clean,
        n=grid.n, card=card, diagnostics=found,
        **provenance.stamp(device, with_host=False),
    )
