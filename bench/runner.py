"""The runner: crosses models × attacks × ε, verifies every candidate and records each cell.

Every cell is appended to its suite's records as soon as it finishes, so an interrupted run
loses no finished cell, and a re-run skips every cell whose key (model weights, attack
configuration, ε, test inputs, seed) is already recorded unless ``force`` is set.

"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from attacks import check_eps, create_attack, list_attacks
from attacks.base import AttackResult, MinimumNormAttack
from bench import provenance
from bench.calibrate import DIAGNOSTICS_VERSION, calibrate, diagnostics
from bench.instrument import CountingModel
from bench.suites import LimitRules, limit_rules
from bench.verify import predict, verify
from results import CellRecord, ModelRecord, cells_path, latest_cells, models_path
from results.errors import BadEpsilonError, CorruptWeightsError, QBenchError
from results.schema import RecordError, finite
from results.store import (
    CellLog,
    RecordWriteError,
    append_model,
    check_records_folder,
    is_current_model_record,
    latest_models,
    latest_models_in,
)
from results.vocabulary import match_names
from zoo import get_model, list_models, load_dataset, model_spec, tensor_sha256
from zoo.data import Dataset, dataset_info
from zoo.layers import frozen


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


def cell_seed(seed: int, *parts: object) -> int:
    """A per-cell seed derived from the run seed and the cell's identity."""
    blob = json.dumps([seed, *map(str, parts)]).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:7], "big")


def cell_key(*, model_sha256: str, attack_config: dict, norm: str, eps: float, n: int,
             inputs_sha256: str, seed: int) -> str:
    blob = json.dumps(
        {"model": model_sha256, "attack": attack_config, "norm": norm, "eps": eps, "n": n,
         "inputs": inputs_sha256, "seed": seed}, sort_keys=True,
    ).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


@dataclass(frozen=True)
class Grid:
    """A concrete grid: resolved names, ε per norm, sample count, seed.

    ``limits`` maps a model name to the attacks whose (ε values, n) differ from the grid's for
    that model: a suite runs its costliest attacks, or its costliest models, at fewer ε or on
    the first n test points only (an empty ε list: the attack does not run on that model).
    """

    suite: str
    dataset: str
    models: list[str]
    attacks: list[str]
    eps: dict[str, list[float]]
    n: int
    seed: int = 0
    limits: dict[str, dict[str, tuple[list[float], int]]] = field(default_factory=dict)

    def plan(self, attack: str, model: str | None = None) -> tuple[list[float], int]:
        """The ε values and the sample count of one attack on one model (default: the first)."""
        limited = self.limits.get(model if model is not None else self.models[0], {})
        return limited.get(attack, (self.eps.get(create_attack(attack).norm, []), self.n))

    def cells(self) -> list[tuple[str, str, float]]:
        """(model, attack, ε) triples in run order."""
        out = []
        for m in self.models:
            for a in self.attacks:
                out.extend((m, a, e) for e in self.plan(a, m)[0])
        return out


def build_grid(*, suite: str, dataset: str, models: str, attacks: str,
               eps: dict[str, list[float]], n: int, seed: int = 0,
               data_root: str | None = None, limits: LimitRules | None = None) -> Grid:
    """Resolve patterns and check every input before anything is trained or attacked.

    ``limits`` (attack pattern → :class:`bench.suites.Limit`, or a sequence of such pairs)
    defaults to the limits of the registered suite named ``suite``, if any. A suite's limits
    apply only where the grid uses the suite's own values: the ε limits of a norm when ``eps``
    of that norm equals the suite's, the n limits when ``n`` equals the suite's. A grid that
    overrides ε or n (``--eps``, ``--n``) runs every attack at exactly the values given.
    """
    from bench.suites import SUITES

    model_names = match_names(models, list_models(), "model")
    attack_names = match_names(attacks, list_attacks(), "attack")
    wrong = [m for m in model_names if model_spec(m).dataset != dataset]
    if wrong:
        raise QBenchError(f"models {wrong} are not trained on dataset {dataset!r}; a grid "
                          f"runs on one dataset (pick models matching '{dataset}-*')")
    checked, _ = check_inputs(dataset, attack_names, eps, n, data_root)
    base = SUITES.get(suite)
    if limits is None:
        limits = base.limits if base is not None else ()
    resolved = {
        m: r for m in model_names
        if (r := resolve_limits(attack_names, checked, n, limits, model=m,
                                suite_eps=base.eps if base is not None else None,
                                suite_n=base.n if base is not None else None))
    }
    return Grid(suite, dataset, model_names, attack_names, checked, n, seed, resolved)


def resolve_limits(attack_names: list[str], eps: dict[str, list[float]], n: int,
                   limits: LimitRules, *, model: str | None = None,
                   suite_eps: dict[str, list[float]] | None = None,
                   suite_n: int | None = None) -> dict[str, tuple[list[float], int]]:
    """(ε values, n) per limited attack of one model; the first matching rule wins.

    A rule matches an attack by its pattern and a model by the limit's ``models`` patterns
    (every model when it has none, or when ``model`` is None).
    """
    rules = limit_rules(limits)
    out: dict[str, tuple[list[float], int]] = {}
    for name in attack_names:
        limit = next((lim for pat, lim in rules
                      if fnmatch.fnmatchcase(name, pat) and (model is None or lim.covers(model))),
                     None)
        if limit is None:
            continue
        norm = create_attack(name).norm
        values = list(eps.get(norm, []))
        if limit.eps is not None and norm in limit.eps and (
                suite_eps is None or values == [float(e) for e in suite_eps.get(norm, [])]):
            values = [e for e in values if any(abs(e - k) < 1e-12 for k in limit.eps[norm])]
        size = n
        if limit.n is not None and (suite_n is None or n == suite_n):
            size = min(n, limit.n)
        if (values, size) != (list(eps.get(norm, [])), n):
            out[name] = (values, size)
    return out


def check_inputs(dataset: str, attack_names: list[str], eps: dict[str, list[float]], n: int,
                 data_root: str | None = None) -> tuple[dict[str, list[float]], Dataset]:
    """Validate ε per norm and n against the dataset; returns the ε values the attacks use."""
    c, h, w = dataset_info(dataset).input_shape
    norms = {create_attack(a).norm for a in attack_names}
    checked = {norm: [check_eps(e, norm, c * h * w) for e in values]
               for norm, values in eps.items() if norm in norms}
    missing = sorted(norm for norm in norms if not checked.get(norm))
    if missing:
        raise BadEpsilonError(
            f"no ε given for the {', '.join(missing)} norm of the selected attacks; pass e.g. "
            f"--eps {missing[0]}=0.1 or select attacks of another norm")
    data = load_dataset(dataset, data_root)
    data.test_subset(n)  # raises a clear error when n is out of range
    return checked, data


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


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def attack_cell(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, clean_correct: torch.Tensor, *,
    attack_name: str, eps: float, seed: int, device: str, batch_size: int = 1000,
    train_x: torch.Tensor | None = None, searches: dict | None = None,
) -> dict:
    """Run one attack at one ε on the correctly classified points and verify the candidates.

    Returns the measured fields of a CellRecord. Exceptions from the attack are caught and
    reported as an error cell; the grid goes on. When the device runs out of memory, the
    attack is run once more from the start with half the batch (``info["oom_batch_size"]``
    says so). ``train_x`` (the dataset's training inputs) is handed to attacks that take
    reference points (Brendel-Bethge's fallback starts). An attack's one-off ``warm_up()`` (if
    it has one) is not counted in ``seconds`` or the pass counts.
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
                            device=device, batch_size=batch, train_x=train_x,
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
    batch_size: int, train_x: torch.Tensor | None, searches: dict | None,
) -> None:
    """The batches of one attack cell: attack, verify, and fill ``robust``, ``out``, ``cost``."""
    counted = CountingModel(model).eval()
    with torch.random.fork_rng(devices=[torch.device(device)] if device != "cpu" else []), \
            frozen(model):
        torch.manual_seed(seed)
        gen = torch.Generator(device=device).manual_seed(seed)
        if len(idx) and hasattr(attack, "warm_up"):
            attack.warm_up()  # one-off per process (e.g. numba compilation): not timed
        if hasattr(attack, "set_reference_points"):
            attack.set_reference_points(train_x)
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


@dataclass(frozen=True)
class PlannedCell:
    """One (attack, ε) cell of a model as planned: what identifies it apart from the weights."""

    attack: str
    norm: str
    eps: float
    n: int  # runs on the first n test points
    attack_config: dict
    inputs_sha256: str

    def key(self, model_sha256: str, seed: int) -> str:
        return cell_key(model_sha256=model_sha256, attack_config=self.attack_config,
                        norm=self.norm, eps=self.eps, n=self.n,
                        inputs_sha256=self.inputs_sha256, seed=seed)


def plan_cells(dataset: Dataset, attacks: list[str], eps: dict[str, list[float]], n: int,
               limits: dict[str, tuple[list[float], int]] | None = None) -> list[PlannedCell]:
    """The cells of one model in run order; ``limits`` (see :class:`Grid`) give attacks their
    own ε values and a sample count ``n_a`` ≤ ``n`` (the first ``n_a`` test points)."""
    limits = limits or {}
    hashes: dict[int, str] = {}
    out = []
    for attack_name in attacks:
        attack = create_attack(attack_name)
        eps_a, n_a = limits.get(attack_name, (eps.get(attack.norm, []), n))
        if n_a > n:
            raise QBenchError(f"attack {attack_name} asks for {n_a} test points, more than the "
                              f"grid's {n}")
        if n_a not in hashes:
            hashes[n_a] = tensor_sha256(*dataset.test_subset(n_a))
        out.extend(PlannedCell(attack_name, attack.norm, float(e), n_a, attack.config(),
                               hashes[n_a]) for e in eps_a)
    return out


class StageError(RuntimeError):
    """A model failed before its cells could run (training, calibration, clean pass)."""

    def __init__(self, stage: str, exc: BaseException) -> None:
        self.stage = stage
        super().__init__(f"{stage} failed: {type(exc).__name__}: {exc}"[:500])


#: What a gate says of a cell: compute it, it is recorded, or another process is on it.
RUN, DONE, BUSY = "run", "done", "busy"
Gate = Callable[[str], contextlib.AbstractContextManager[str]]


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
    model: nn.Module, *, model_name: str, model_sha256: str, suite: str, dataset: Dataset,
    attacks: list[str], eps: dict[str, list[float]], n: int, seed: int, device: str,
    gate: Gate | None = None, on_record: Callable[[CellRecord], None] | None = None,
    on_skip: Callable[[str, str], None] | None = None, progress: tqdm | None = None,
    limits: dict[str, tuple[list[float], int]] | None = None,
) -> Iterator[CellRecord]:
    """Yield one verified CellRecord per (attack, ε) for a model already in eval mode.

    ``limits`` (see :class:`Grid`) gives attacks their own ε values and sample count ``n_a``
    ≤ ``n``; such an attack runs on the first ``n_a`` test points. ``gate(key)`` (optional)
    decides per cell whether to compute it (:data:`RUN`) or to skip it (``on_skip(key,
    state)`` is called), and is held while the cell is computed and recorded (``on_record``).
    A failing clean pass raises :class:`StageError`.
    """
    plan = plan_cells(dataset, attacks, eps, n, limits)
    try:
        x, y = (t.to(device) for t in dataset.test_subset(n))
        clean_correct = clean_pass(model, x, y, dataset.num_classes)
    except Exception as exc:  # noqa: BLE001 - reported as error cells by the caller
        raise StageError("clean pass", exc) from exc
    searches: dict[str, dict] = {}  # a minimum-norm attack searches once for all its ε
    for cell in plan:
        key = cell.key(model_sha256, seed)
        if progress is not None:
            progress.set_postfix_str(f"{model_name} {cell.attack} ε={cell.eps:g}")
        with gate(key) if gate is not None else contextlib.nullcontext(RUN) as state:
            if state != RUN:
                if on_skip:
                    on_skip(key, state)
                if progress is not None and state == DONE:
                    progress.update()
                continue
            measured = attack_cell(model, x[:cell.n], y[:cell.n], clean_correct[:cell.n],
                                   attack_name=cell.attack, eps=cell.eps,
                                   seed=cell_seed(seed, model_name, cell.attack, cell.eps),
                                   device=device, train_x=dataset.train_x,
                                   searches=searches.setdefault(cell.attack, {}))
            measured["info"].pop("_w", None)
            measured["info"] = finite(measured["info"])
            record = _cell_record(
                measured, cell, key=key, suite=suite, dataset=dataset.name, model=model_name,
                model_sha256=model_sha256, seed=seed, device=device,
                clean_acc=int(clean_correct[:cell.n].sum()) / cell.n)
            if on_record:
                on_record(record)
            if progress is not None:
                progress.update()
        yield record


def _cell_record(measured: dict, cell: PlannedCell, **fields) -> CellRecord:
    """A validated record of a measured cell; one that fails validation becomes an error cell
    with the reason (the grid goes on)."""
    common = dict(attack=cell.attack, eps=cell.eps, n=cell.n, inputs_sha256=cell.inputs_sha256,
                  versions=provenance.versions(), hardware=provenance.hardware(fields["device"]),
                  created=provenance.now(), host=provenance.host(), **fields)
    try:
        return CellRecord(**common, **measured).validate()
    except (RecordError, TypeError, ValueError) as exc:
        failed = {**measured, "status": "error", "robust_acc": None,
                  "error": f"invalid record: {exc}"[:500], "info": {}}
        failed["robust"] = list(failed["clean_correct"])
        return CellRecord(**common, **failed).validate()


def error_cells(plan: list[PlannedCell], reason: str, **fields) -> list[CellRecord]:
    """Error records for planned cells that could not run because their model failed."""
    return [CellRecord(
        key=cell.key(fields["model_sha256"], fields["seed"]), attack=cell.attack,
        attack_config=cell.attack_config, norm=cell.norm, eps=cell.eps, n=cell.n,
        n_attacked=0, clean_acc=None, robust_acc=None, seconds=0.0, seconds_per_sample=0.0,
        robust=[], clean_correct=[], inputs_sha256=cell.inputs_sha256, status="error",
        error=reason, versions=provenance.versions(),
        hardware=provenance.hardware(fields["device"]), created=provenance.now(),
        host=provenance.host(), **fields,
    ).validate() for cell in plan]


class Recorder:
    """The driver's side of a run, and the only writer of its records.

    Holds the suite's :class:`results.store.CellLog`, the run's summary and progress bar.
    ``since`` is empty, or with ``force`` the run's start (given: the start of the run this
    process helps, see :mod:`bench.jobs`): cells recorded ``ok`` after it count as done.
    """

    def __init__(self, grid: Grid, *, results_root: Path | None, force: bool, progress: bool,
                 since: str | None = None) -> None:
        self.grid, self.force = grid, force
        self.mpath = models_path(grid.suite, results_root)
        latest_cells(grid.suite, results_root)  # a corrupt records file stops here
        self.known_models = latest_models(grid.suite, results_root)
        self.log = CellLog(cells_path(grid.suite, results_root))
        self.log.refresh()
        self.since = "" if not force else since or provenance.now()
        self.summary = RunSummary()
        self.bar = tqdm(total=len(grid.cells()), desc=f"suite {grid.suite}", unit="cell",
                        disable=not progress)

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

    def fail(self, name: str, sha: str, reason: str, plan: list[PlannedCell], device: str
             ) -> None:
        """A model stage failed: error records for its cells that are not done."""
        self.summary.failures.append(f"{name}: {reason}")
        mine = {r.key for r in self.summary.records}
        todo = [c for c in plan if c.key(sha, self.grid.seed) not in mine
                and not self.done(c.key(sha, self.grid.seed))]
        for r in error_cells(todo, reason, suite=self.grid.suite, dataset=self.grid.dataset,
                             model=name, model_sha256=sha, device=device, seed=self.grid.seed):
            self.record(r)
            self.bar.update()

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


def run_grid(
    grid: Grid, *, device: str = "auto", results_root: Path | None = None, force: bool = False,
    retrain: bool = False, progress: bool = True, data_root: str | None = None,
    max_train_steps: int | None = None, executor: str = "local", ray_address: str | None = None,
    gpus_per_task: float = 0.0, threads_per_task: int = 1, jobs: int = 1,
    since: str | None = None, weights: str = "shipped",
) -> RunSummary:
    """Run a grid, appending each finished cell to ``<results_root>/<suite>.cells.jsonl``.

    Cells recorded ``ok`` are skipped (with ``force``: those recorded after this run started).
    A model whose training, calibration or clean pass fails gets error records for its cells
    and the grid goes on; error cells are retried by the next run. ``max_train_steps`` caps
    the training of models not yet cached (a smoke run, see :func:`zoo.get_model`).
    ``weights`` picks the shipped weights (default) or those trained here (``"trained"``;
    ``retrain`` trains them again first), as in :func:`zoo.get_model`.

    ``executor="local"`` computes every cell in this process. Several such processes may run
    one grid into one folder at once: each cell is claimed by the process computing it, others
    skip it on their first pass and, at the end, wait for it (and compute it themselves if its
    claimant died without recording it). ``executor="ray"`` sends one task per (model, attack)
    to a Ray cluster (``ray_address``; see :mod:`bench.distributed`) and records what the tasks
    return: the same cells, keys and records.

    ``jobs`` > 1 (local executor only) runs the grid in that many processes, with an equal
    share of the threads each, after training its models here (see :mod:`bench.jobs`).
    ``since`` is for those helper processes: the start of the run they help (what ``force``
    recomputes).
    """
    if executor not in ("local", "ray"):
        raise QBenchError(f"unknown executor {executor!r}; allowed: local, ray")
    check_records_folder(grid.suite, results_root, write=True)
    if jobs != 1:
        if executor != "local":
            raise QBenchError(f"--jobs {jobs} runs local processes; with --executor ray use "
                              "--threads-per-task to size the tasks")
        from bench.jobs import run_jobs

        return run_jobs(grid, jobs, device=device, results_root=results_root, force=force,
                        retrain=retrain, progress=progress, data_root=data_root,
                        max_train_steps=max_train_steps, weights=weights)
    if executor == "ray":
        from bench.distributed import run_on_ray

        rec = Recorder(grid, results_root=results_root, force=force, progress=progress)
        try:
            run_on_ray(grid, rec, address=ray_address, gpus_per_task=gpus_per_task,
                       threads_per_task=threads_per_task, retrain=retrain, data_root=data_root,
                       max_train_steps=max_train_steps, progress=progress, weights=weights)
        finally:
            rec.bar.close()
        return rec.summary
    device = resolve_device(device)
    rec = Recorder(grid, results_root=results_root, force=force, progress=progress, since=since)
    data = load_dataset(grid.dataset, data_root)
    deferred: dict[str, set[str]] = {}

    def run_model(name: str, on_skip: Callable[[str, str], None], *, wait: bool = False,
                  only: set[str] | None = None) -> None:
        plan = plan_cells(data, grid.attacks, grid.eps, grid.n, grid.limits.get(name, {}))
        sha, stage = "", "training"
        gate = None
        try:
            model, card = get_model(name, device=device, weights=weights, retrain=retrain,
                                    progress=progress, data_root=data_root,
                                    max_train_steps=max_train_steps)
            sha, stage = card["weights_sha256"], "calibration"
            gate = ClaimGate(rec, {c.key(sha, grid.seed): f"{name}.{c.attack}.{sha[:16]}"
                                   for c in plan}, wait=wait, only=only)
            calibrate(model, data, device)  # NJS β1 on the first 101 test images
            for _ in evaluate_cells(
                model, model_name=name, model_sha256=sha, suite=grid.suite, dataset=data,
                attacks=grid.attacks, eps=grid.eps, n=grid.n, seed=grid.seed, device=device,
                gate=gate, on_record=rec.record, on_skip=on_skip, progress=rec.bar,
                limits=grid.limits.get(name, {}),
            ):
                pass  # each record is appended as its cell finishes
        except (RecordWriteError, CorruptWeightsError):
            # the records cannot be written (a full disk), or a weights file or card is not
            # what it must be: a problem of this machine's files, not of the model. The run
            # stops with one line; every finished cell is kept
            raise
        except Exception as exc:  # noqa: BLE001 - one model's failure must not stop the grid
            reason = str(exc) if isinstance(exc, StageError) else \
                StageError(stage, exc).args[0]
            rec.fail(name, sha, reason, plan, device)
            return
        finally:
            if gate is not None:
                gate.release()
        if rec.wants_model_record(name, sha):
            rec.model_done(name, sha,
                           lambda: model_record(model, name, sha, card, grid, data, device))

    def first_pass_skip(name: str) -> Callable[[str, str], None]:
        def skip(key: str, state: str) -> None:
            if state == BUSY:
                deferred.setdefault(name, set()).add(key)
            else:
                rec.summary.skipped += 1
        return skip

    def second_pass_skip(key: str, state: str) -> None:
        if state == DONE:
            rec.summary.shared += 1

    try:
        for name in grid.models:
            run_model(name, first_pass_skip(name))
        for name, keys in deferred.items():  # cells other processes held: wait, then check
            run_model(name, second_pass_skip, wait=True, only=keys)
    finally:
        rec.bar.close()
    return rec.summary


class ClaimGate:
    """The local executor's gate: claims one (model, attack) unit at a time.

    Processes that run one grid share it by units: all ε of an attack on a model (so a
    minimum-norm attack's one search serves all of them). The first cell of a unit that is not
    recorded claims the unit; the claim is held until the gate moves on to another unit (or
    :meth:`release`), so every record of the unit is appended under it. A unit claimed by
    another live process reads :data:`BUSY` for each of its cells; ``wait`` blocks until the
    holder releases it or dies. ``only`` limits the gate to those keys (others read "other").
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
    def __call__(self, key: str) -> Iterator[str]:
        if self.only is not None and key not in self.only:
            yield "other"
            return
        log = self.rec.log
        log.refresh()
        if self.rec.done(key):
            yield DONE
            return
        unit = self.unit_of[key]
        if unit != self.unit:
            self.release()
            self.unit, self.claim = unit, log.claim(unit, wait=self.wait)
        if self.claim is not None:
            log.refresh()  # the unit's previous holder may have recorded this cell meanwhile
        yield DONE if self.rec.done(key) else (RUN if self.claim is not None else BUSY)


def model_record(model: nn.Module, name: str, sha: str, card: dict, grid: Grid, data: Dataset,
                 device: str) -> ModelRecord:
    x, y = (t.to(device) for t in data.test_subset(grid.n))
    with torch.no_grad():
        clean = int((model(x).argmax(1) == y).sum()) / len(y)
    return ModelRecord(
        suite=grid.suite, dataset=grid.dataset, model=name, model_sha256=sha, clean_acc=clean,
        n=grid.n, card=card, diagnostics=diagnostics(model, x, y),
        versions=provenance.versions(), hardware=provenance.hardware(device),
        created=provenance.now(),
    )
