"""The runner: crosses models × attacks × ε, verifies every candidate and records each cell.

Every cell is appended to its suite's records as soon as it finishes, so an interrupted run
loses no finished cell, and a re-run skips every cell whose key (model weights, attack
configuration, ε, test inputs, seed) is already recorded unless ``force`` is set.
"""

from __future__ import annotations

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
from bench import provenance
from bench.instrument import CountingModel
from bench.verify import verify
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
    """A concrete grid: resolved names, ε per norm, sample count, seed."""

    suite: str
    dataset: str
    models: list[str]
    attacks: list[str]
    eps: dict[str, list[float]]
    n: int
    seed: int = 0

    def cells(self) -> list[tuple[str, str, float]]:
        """(model, attack, ε) triples in run order."""
        out = []
        for m in self.models:
            for a in self.attacks:
                norm = create_attack(a).norm
                out.extend((m, a, e) for e in self.eps.get(norm, []))
        return out


def build_grid(*, suite: str, dataset: str, models: str, attacks: str,
               eps: dict[str, list[float]], n: int, seed: int = 0,
               data_root: str | None = None) -> Grid:
    """Resolve patterns and check every input before anything is trained or attacked."""
    model_names = match_names(models, list_models(), "model")
    attack_names = match_names(attacks, list_attacks(), "attack")
    wrong = [m for m in model_names if model_spec(m).dataset != dataset]
    if wrong:
        raise QBenchError(f"models {wrong} are not trained on dataset {dataset!r}; a grid "
                          f"runs on one dataset (pick models matching '{dataset}-*')")
    checked, _ = check_inputs(dataset, attack_names, eps, n, data_root)
    return Grid(suite, dataset, model_names, attack_names, checked, n, seed)


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


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def attack_cell(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, clean_correct: torch.Tensor, *,
    attack_name: str, eps: float, seed: int, device: str, batch_size: int = 1000,
) -> dict:
    """Run one attack at one ε on the correctly classified points and verify the candidates.

    Returns the measured fields of a CellRecord. Exceptions from the attack are caught and
    reported as an error cell; the grid goes on.
    """
    attack = create_attack(attack_name)
    idx = clean_correct.nonzero().squeeze(1)
    robust = clean_correct.clone()
    counted = CountingModel(model).eval()
    out: dict = {"attack_config": attack.config(), "norm": attack.norm,
                 "n_attacked": len(idx), "rejected": 0, "info": {}}
    seconds = 0.0
    try:
        with torch.random.fork_rng(devices=[torch.device(device)] if device != "cpu" else []):
            torch.manual_seed(seed)
            gen = torch.Generator(device=device).manual_seed(seed)
            for start in range(0, len(idx), batch_size):
                b = idx[start : start + batch_size]
                _sync(device)
                t0 = time.perf_counter()
                result = attack(counted, x[b], y[b], eps=eps, generator=gen)
                _sync(device)
                seconds += time.perf_counter() - t0
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
        forwards_per_sample=counted.forwards / n_att,
        backwards_per_sample=counted.backwards / n_att,
    )
    return out


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
) -> Iterator[CellRecord]:
    """Yield one verified CellRecord per (attack, ε) for a model already in eval mode."""
    known = known or {}
    x, y = (t.to(device) for t in dataset.test_subset(n))
    inputs_sha = tensor_sha256(*dataset.test_subset(n))
    with torch.no_grad():
        clean_correct = model(x).argmax(1) == y
    clean_acc = int(clean_correct.sum()) / len(clean_correct)
    for attack_name in attacks:
        attack = create_attack(attack_name)
        for e in eps.get(attack.norm, []):
            key = cell_key(model_sha256=model_sha256, attack_config=attack.config(),
                           norm=attack.norm, eps=e, n=n, inputs_sha256=inputs_sha, seed=seed)
            if progress is not None:
                progress.set_postfix_str(f"{model_name} {attack_name} ε={e:g}")
            if key in known and not force:
                if on_skip:
                    on_skip()
                if progress is not None:
                    progress.update()
                continue
            measured = attack_cell(model, x, y, clean_correct, attack_name=attack_name, eps=e,
                                   seed=cell_seed(seed, model_name, attack_name, e),
                                   device=device)
            measured["info"].pop("_w", None)
            record = CellRecord(
                key=key, suite=suite, dataset=dataset.name, model=model_name,
                model_sha256=model_sha256, attack=attack_name, eps=float(e), n=n,
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
) -> RunSummary:
    """Run a grid, appending each finished cell to ``<results_root>/<suite>.cells.jsonl``."""
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
                                    data_root=data_root)
            sha = card["weights_sha256"]
            # consume the generator: records are appended one by one as cells finish
            for _ in evaluate_cells(
                model, model_name=name, model_sha256=sha, suite=grid.suite, dataset=data,
                attacks=grid.attacks, eps=grid.eps, n=grid.n, seed=grid.seed, device=device,
                known=known, force=force, on_record=record, on_skip=skip, progress=bar,
            ):
                pass
            prev = known_models.get(name)
            if force or prev is None or prev.model_sha256 != sha or prev.n != grid.n:
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
        n=grid.n, card=card, versions=provenance.versions(),
        hardware=provenance.hardware(device), created=provenance.now(),
    )
