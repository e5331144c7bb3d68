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
from bench.calibrate import calibrate, diagnostics
from bench.instrument import CountingModel
from bench.suites import LimitRules, limit_rules
from bench.verify import predict, verify
from results import CellRecord, ModelRecord, append, cells_path, latest_cells, models_path
from results.store import latest_models
from zoo import get_model, list_models, load_dataset, model_spec, tensor_sha256
from zoo.data import Dataset, dataset_info
from zoo.errors import BadEpsilonError, QBenchError, match_names


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
    records: list[CellRecord] = field(default_factory=list)
    skipped: int = 0
    errors: int = 0

    @property
    def ran(self) -> int:
        return len(self.records)


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """No parameter gradients while attacking: attacks need input gradients only."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


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
    reported as an error cell; the grid goes on. ``train_x`` (the dataset's training inputs)
    is handed to attacks that take reference points (Brendel-Bethge's fallback starts). An
    attack's one-off ``warm_up()`` (if it has one) is not counted in ``seconds`` or the pass
    counts.
    """
    attack = create_attack(attack_name)
    idx = clean_correct.nonzero().squeeze(1)
    robust = clean_correct.clone()
    counted = CountingModel(model).eval()
    out: dict = {"attack_config": attack.config(), "norm": attack.norm,
                 "n_attacked": len(idx), "rejected": 0, "info": {}}
    seconds = 0.0
    passes = {"forwards": 0, "backwards": 0}
    try:
        with torch.random.fork_rng(devices=[torch.device(device)] if device != "cpu" else []), \
                frozen_parameters(model):
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
                    found, cost = searches[start]
                    result = AttackResult(attack.restrict(x[b], found.x_adv, eps), found.info)
                    out["info"]["search_shared_across_eps"] = True
                else:
                    result, cost = _measured(
                        lambda b=b: attack(counted, x[b], y[b], eps=eps, generator=gen),
                        counted, device)
                seconds += cost["seconds"]
                passes["forwards"] += cost["forwards"]
                passes["backwards"] += cost["backwards"]
                verdict = verify(model, x[b], y[b], result.x_adv, eps=eps, norm=attack.norm)
                robust[b] = ~verdict.success
                out["rejected"] += verdict.rejected
                _merge_info(out["info"], result.info, len(b))
    except Exception as exc:  # noqa: BLE001 - an attack's failure must not stop the grid
        out.update(status="error", error=f"{type(exc).__name__}: {exc}"[:500], robust_acc=None)
    else:
        out.update(status="ok", error=None, robust_acc=int(robust.sum()) / len(robust))
    n_att = max(len(idx), 1)
    out.update(
        robust=[int(v) for v in robust.tolist()],
        clean_correct=[int(v) for v in clean_correct.tolist()],
        seconds=round(seconds, 6),
        seconds_per_sample=seconds / n_att,
        forwards_per_sample=passes["forwards"] / n_att,
        backwards_per_sample=passes["backwards"] / n_att,
    )
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


def evaluate_cells(
    model: nn.Module, *, model_name: str, model_sha256: str, suite: str, dataset: Dataset,
    attacks: list[str], eps: dict[str, list[float]], n: int, seed: int, device: str,
    known: dict[str, CellRecord] | None = None, force: bool = False,
    on_record: Callable[[CellRecord], None] | None = None,
    on_skip: Callable[[], None] | None = None, progress: tqdm | None = None,
    limits: dict[str, tuple[list[float], int]] | None = None,
) -> Iterator[CellRecord]:
    """Yield one verified CellRecord per (attack, ε) for a model already in eval mode.

    ``limits`` (see :class:`Grid`) gives attacks their own ε values and sample count ``n_a``
    ≤ ``n``; such an attack runs on the first ``n_a`` test points.
    """
    known = known or {}
    limits = limits or {}
    x, y = (t.to(device) for t in dataset.test_subset(n))
    clean_correct = predict(model, x) == y  # batched as verification batches
    for attack_name in attacks:
        attack = create_attack(attack_name)
        eps_a, n_a = limits.get(attack_name, (eps.get(attack.norm, []), n))
        if n_a > n:
            raise QBenchError(f"attack {attack_name} asks for {n_a} test points, more than the "
                              f"grid's {n}")
        inputs_sha = tensor_sha256(*dataset.test_subset(n_a))
        clean_acc = int(clean_correct[:n_a].sum()) / n_a
        searches: dict = {}  # a minimum-norm attack searches once for all its ε
        for e in eps_a:
            key = cell_key(model_sha256=model_sha256, attack_config=attack.config(),
                           norm=attack.norm, eps=e, n=n_a, inputs_sha256=inputs_sha, seed=seed)
            if progress is not None:
                progress.set_postfix_str(f"{model_name} {attack_name} ε={e:g}")
            if key in known and not force:
                if on_skip:
                    on_skip()
                if progress is not None:
                    progress.update()
                continue
            measured = attack_cell(model, x[:n_a], y[:n_a], clean_correct[:n_a],
                                   attack_name=attack_name, eps=e,
                                   seed=cell_seed(seed, model_name, attack_name, e),
                                   device=device, train_x=dataset.train_x, searches=searches)
            measured["info"].pop("_w", None)
            record = CellRecord(
                key=key, suite=suite, dataset=dataset.name, model=model_name,
                model_sha256=model_sha256, attack=attack_name, eps=float(e), n=n_a,
                clean_acc=clean_acc, device=device, seed=seed, inputs_sha256=inputs_sha,
                versions=provenance.versions(), hardware=provenance.hardware(device),
                created=provenance.now(), **measured,
            ).validate()
            if on_record:
                on_record(record)
            if progress is not None:
                progress.update()
            yield record


def run_grid(
    grid: Grid, *, device: str = "auto", results_root: Path | None = None, force: bool = False,
    retrain: bool = False, progress: bool = True, data_root: str | None = None,
    max_train_steps: int | None = None,
) -> RunSummary:
    """Run a grid, appending each finished cell to ``<results_root>/<suite>.cells.jsonl``.

    ``max_train_steps`` caps the training of models not yet cached (a smoke run, see
    :func:`zoo.get_model`).
    """
    device = resolve_device(device)
    cpath, mpath = cells_path(grid.suite, results_root), models_path(grid.suite, results_root)
    known = latest_cells(grid.suite, results_root)
    known_models = latest_models(grid.suite, results_root)
    data = load_dataset(grid.dataset, data_root)
    summary = RunSummary()
    cells = grid.cells()
    bar = tqdm(total=len(cells), desc=f"suite {grid.suite}", unit="cell", disable=not progress)

    def record(r: CellRecord) -> None:
        append(cpath, r)
        summary.records.append(r)
        summary.errors += r.status == "error"

    def skip() -> None:
        summary.skipped += 1

    try:
        for name in grid.models:
            model, card = get_model(name, device=device, retrain=retrain, progress=progress,
                                    data_root=data_root, max_train_steps=max_train_steps)
            sha = card["weights_sha256"]
            calibrate(model, data, device)  # NJS β1 on the first 101 test images
            # consume the generator: records are appended one by one as cells finish
            for _ in evaluate_cells(
                model, model_name=name, model_sha256=sha, suite=grid.suite, dataset=data,
                attacks=grid.attacks, eps=grid.eps, n=grid.n, seed=grid.seed, device=device,
                known=known, force=force, on_record=record, on_skip=skip, progress=bar,
                limits=grid.limits.get(name, {}),
            ):
                pass
            prev = known_models.get(name)
            if (force or prev is None or prev.model_sha256 != sha or prev.n != grid.n
                    or not prev.diagnostics):
                append(mpath, model_record(model, name, sha, card, grid, data, device))
    finally:
        bar.close()
    return summary


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
