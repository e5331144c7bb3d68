"""The grid and its plan: which cells a run has, and what identifies each of them.

A :class:`Grid` holds resolved names (models, attacks), ε per norm, a sample count and a seed,
plus a suite's limits (attacks run at fewer ε or on fewer points on some models). Its
:meth:`Grid.plan` is the one place that decides an attack's ε values and sample count on a
model, and an attack whose traits do not apply to a model (IPROP on a convnet) has no cells
there. :func:`plan_grid` turns a grid into a :class:`Plan`: every model's
:class:`PlannedCell` list, computed once by the driver and handed to an executor. A cell's key
(:func:`cell_key`) is what makes a record reusable: model weights, attack configuration, ε,
test inputs, seed.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from attacks import attack_spec, check_eps, create_attack, list_attacks
from bench.suites import LimitRules, limit_rules
from results.errors import BadEpsilonError, QBenchError, UnknownNameError
from results.vocabulary import match_names
from zoo import list_models, load_dataset, model_spec, tensor_sha256
from zoo.data import Dataset, dataset_info


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


def model_fields(name: str) -> dict[str, str] | None:
    """The card fields an attack's ``applies_to`` is matched against (None: not registered)."""
    try:
        spec = model_spec(name)
    except UnknownNameError:
        return None
    return {"arch": spec.arch, "quant": spec.quant}


def attack_applies(attack: str, model: str) -> bool:
    """Whether the attack's traits apply to the model (see :func:`results.vocabulary.applies`)."""
    return attack_spec(attack).traits.applies(model_fields(model))


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
        """The ε values and the sample count of one attack on one model (default: the first);
        no ε where the attack does not apply to the model (see
        :func:`results.vocabulary.applies`)."""
        model = model if model is not None else self.models[0]
        if not attack_applies(attack, model):
            return [], self.n
        return self.limits.get(model, {}).get(
            attack, (self.eps.get(attack_spec(attack).norm, []), self.n))

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
    idle = inapplicable(attack_names, model_names)
    if len(idle) == len(attack_names):
        wanted = attack_spec(idle[0]).traits.applies_to
        raise QBenchError(
            f"{idle[0]} applies to models with "
            f"{', '.join(f'{k} {v}' for k, v in wanted.items())}, and none of the selected "
            f"models ({', '.join(model_names[:3])}{', …' if len(model_names) > 3 else ''}) is "
            "one: select such models (list them with `python -m bench list models`) or other "
            "attacks")
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


def inapplicable(attack_names: list[str], model_names: list[str]) -> list[str]:
    """The attacks whose traits apply to none of the models (they get no cells)."""
    return [a for a in attack_names if not any(attack_applies(a, m) for m in model_names)]


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
        norm = attack_spec(name).norm
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
    norms = {attack_spec(a).norm for a in attack_names}
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


def plan_cells(dataset: Dataset, runs: Iterable[tuple[str, Sequence[float], int]]
               ) -> list[PlannedCell]:
    """The cells of ``runs`` in order: each (attack, ε values, n) gives one cell per ε on the
    first n test points of ``dataset``."""
    hashes: dict[int, str] = {}
    out = []
    for attack_name, eps_values, n in runs:
        attack = create_attack(attack_name)
        if n not in hashes:
            hashes[n] = tensor_sha256(*dataset.test_subset(n))
        out.extend(PlannedCell(attack_name, attack.norm, float(e), n, attack.config(),
                               hashes[n]) for e in eps_values)
    return out


@dataclass(frozen=True)
class Plan:
    """Every model's planned cells, in run order: what an executor runs."""

    grid: Grid
    cells: dict[str, list[PlannedCell]]

    def of(self, model: str) -> list[PlannedCell]:
        return self.cells[model]

    def __len__(self) -> int:
        return sum(len(c) for c in self.cells.values())


def plan_grid(grid: Grid, dataset: Dataset) -> Plan:
    """The grid's :class:`Plan` (``dataset``: the grid's, loaded)."""
    return Plan(grid, {m: plan_cells(dataset, [(a, *grid.plan(a, m)) for a in grid.attacks])
                       for m in grid.models})
