"""One board: models × attacks at one threat model, read from the recorded facts only.

``python -m bench board`` (through :mod:`results.tables`) and the static site both render the
:class:`Board` this module returns, so the command line and the published pages show the same
numbers. What a board uses:

* **Cells.** The current cells of each model (:func:`results.load` already dropped cells whose
  attack was redefined): those of the model's most recent weights and, among them, of its most
  common seed. Best-known accuracy combines only such cells (:mod:`results.bestknown`).
* **Attack traits** (family, base attack, scaler, gradients, the models it applies to) are read
  from each cell's recorded ``attack_config["traits"]``. Cells recorded before attacks carried
  traits get them from their recorded configuration (its class and hyperparameters, see
  :func:`results.vocabulary.traits_from_config`); such columns are marked
  ``traits_source = "config"``. Nothing is inferred from an attack's name.
* **Columns** are grouped by family in a fixed order: PGD, its PGD++ NJS and HNS versions and
  the other PGD variants first, then FGSM and its variants, the other gradient attacks
  (APGD, AutoAttack), minimum-norm (DeepFool, Brendel-Bethge), gradient-free (Square) and
  combinatorial (IPROP, flip search) attacks, and last the exact verifier (the MILP oracle).
* **Exact ground truth.** Where a board row has a verifier cell, the row carries its summary
  (:mod:`results.exact`): proved-robust share, exact robust accuracy or the interval it lies
  in, each attack's gap to it, and contradictions.
* **Not applicable.** An attack whose traits restrict it to some models (IPROP: BNN-WAQ MLPs)
  shows "n/a" on the others (by their model cards), never an error.

This module imports no torch: the site renders in an environment without it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from results.bestknown import best_known, current_runs
from results.exact import Exact, exact_summaries
from results.vocabulary import applies, traits_from_config

FAMILY_LABEL = {"gradient": "gradient", "gradient-temperature": "gradient, temperature (PGD++)",
                "minimum-norm": "minimum-norm", "gradient-free": "gradient-free",
                "combinatorial": "combinatorial", "exact": "exact (verifier)",
                "unknown": "unclassified"}
#: Column groups: gradient attacks and their temperature versions share a group (by base)
_GROUP = {"gradient": 0, "gradient-temperature": 0, "minimum-norm": 1, "gradient-free": 2,
          "combinatorial": 3, "exact": 4}
#: Bases whose columns come first, in this order
BASE_ORDER = ("pgd-linf", "pgd-l2", "fgsm")
_SCALER_ORDER = {"njs": 1, "hns": 2, "njs-raw": 3, "fixed": 4}


@dataclass(frozen=True)
class AttackColumn:
    name: str
    family: str
    base: str
    scaler: str
    uses_gradients: bool
    applies_to: dict[str, str]
    version: int | None  # None: recorded before attacks carried versions
    traits_source: str  # "recorded", "config" or "unknown"

    @property
    def sort_key(self) -> tuple:
        base_rank = BASE_ORDER.index(self.base) if self.base in BASE_ORDER else len(BASE_ORDER)
        variant = 0 if self.name == self.base else _SCALER_ORDER.get(self.scaler, 4)
        return (_GROUP.get(self.family, 9), base_rank, self.base, variant, self.name)


def attack_column(name: str, config: dict[str, Any] | None) -> AttackColumn:
    traits, source = traits_from_config(config)
    version = config.get("version") if isinstance(config, dict) else None
    return AttackColumn(name, str(traits.get("family")), str(traits.get("base")),
                        str(traits.get("scaler", "none")), bool(traits.get("uses_gradients")),
                        dict(traits.get("applies_to") or {}),
                        version if isinstance(version, int) else None, source)


def attack_columns(cells: pd.DataFrame) -> dict[str, AttackColumn]:
    """The column of every attack of ``cells`` (from its most recently created cell)."""
    if cells.empty:
        return {}
    order = cells.sort_values("created", kind="stable") if "created" in cells else cells
    last = order.drop_duplicates("attack", keep="last")
    return {r.attack: attack_column(r.attack, r.attack_config) for r in last.itertuples()}


def ordered(columns: Iterable[AttackColumn]) -> list[AttackColumn]:
    """Columns in board order (see the module docstring)."""
    return sorted(columns, key=lambda c: c.sort_key)


# ------------------------------------------------------------------ board


@dataclass(frozen=True)
class BoardCell:
    attack: str
    status: str  # "ok", "error", "n/a" (the attack does not apply) or "not run"
    acc: float | None = None  # robust accuracy (fraction), for "ok"
    n: int | None = None  # test points of the cell (a prefix of the row's)
    error: str | None = None
    rejected: int = 0
    ms_per_sample: float | None = None
    forwards_per_sample: float | None = None
    backwards_per_sample: float | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BoardRow:
    model: str
    model_sha256: str
    seed: int
    n: int  # test points of the best-known value
    clean: float | None  # clean accuracy on those points
    best_known: float | None
    best_attack: str | None
    best_attack_acc: float | None
    unique_breaks: dict[str, int]
    cells: dict[str, BoardCell]  # attack → cell, for every column of the board
    exact: Exact | None = None  # the verifier's ground truth, where the row has one
    #: points best-known counts as broken because a cell of a smaller ε broke them:
    #: "<attack> at ε=<ε>" → points
    from_smaller_eps: dict[str, int] = field(default_factory=dict)

    @property
    def best_cell(self) -> BoardCell | None:
        return self.cells.get(self.best_attack) if self.best_attack else None


@dataclass(frozen=True)
class Board:
    suite: str
    dataset: str
    norm: str
    eps: float
    columns: list[AttackColumn]
    rows: list[BoardRow]  # ranked: best-known accuracy, most robust first
    not_run: list[str]  # models of the suite without a cell at this threat model

    @property
    def n(self) -> int:
        counts = [r.n for r in self.rows]
        return max(set(counts), key=counts.count) if counts else 0


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _cell(attack: str, c: Any) -> BoardCell:
    if c.status != "ok":
        return BoardCell(attack, "error", n=int(c.n), error=str(c.error))
    return BoardCell(attack, "ok", acc=_num(c.robust_acc), n=int(c.n),
                     rejected=int(c.rejected or 0),
                     ms_per_sample=None if _num(c.seconds_per_sample) is None
                     else 1000 * float(c.seconds_per_sample),
                     forwards_per_sample=_num(c.forwards_per_sample),
                     backwards_per_sample=_num(c.backwards_per_sample),
                     info=c.info if isinstance(c.info, dict) else {})


def model_cards(models: pd.DataFrame | None) -> dict[tuple[str, str], dict]:
    """(suite, model) → model card, from :func:`results.load_models`."""
    if models is None or models.empty:
        return {}
    return {(r.suite, r.model): r.card if isinstance(r.card, dict) else {}
            for r in models.itertuples()}


def boards(cells: pd.DataFrame, models: pd.DataFrame | None = None) -> list[Board]:
    """Every board of the records: one per (suite, norm, ε), in that order."""
    if cells.empty:
        return []
    current = current_runs(cells)
    columns = attack_columns(current)
    cards = model_cards(models)
    best = best_known(current)
    exact = exact_summaries(current)
    out = []
    for (suite, norm, eps), group in current.groupby(["suite", "norm", "eps"], sort=True):
        out.append(_board(suite, norm, float(eps), group, columns, cards,
                          best[(best["suite"] == suite) & (best["norm"] == norm)
                               & (best["eps"] == eps)], models, exact))
    return out


def board(cells: pd.DataFrame, norm: str, eps: float,
          models: pd.DataFrame | None = None) -> Board | None:
    """The board of one threat model (one suite's cells), or None without cells there. Its
    best-known column counts the breaks of smaller ε too (:func:`results.best_known`), so the
    boards of every ε of the norm are computed and this one is picked."""
    found = [b for b in boards(cells[cells["norm"] == norm], models) if abs(b.eps - eps) < 1e-9]
    return found[0] if found else None


def _carried(broken_by: list[str]) -> dict[str, int]:
    """How many points each cell of a smaller ε broke for best-known (labels "… at ε=…")."""
    out: dict[str, int] = {}
    for label in broken_by:
        if " at ε=" in label:
            out[label] = out.get(label, 0) + 1
    return out


def _board(suite: str, norm: str, eps: float, group: pd.DataFrame,
           all_columns: dict[str, AttackColumn], cards: dict, best: pd.DataFrame,
           models: pd.DataFrame | None, exact: dict[tuple, Exact] | None = None) -> Board:
    columns = ordered(all_columns[a] for a in group["attack"].unique())
    bk = {r.model: r for r in best.itertuples()}
    rows = []
    for model, mg in group.groupby("model", sort=True):
        card = cards.get((suite, model))
        by_attack = {r.attack: r for r in mg.itertuples()}
        row_cells = {}
        for col in columns:
            c = by_attack.get(col.name)
            if not applies(col.applies_to, card):
                row_cells[col.name] = BoardCell(col.name, "n/a")
            elif c is None:
                row_cells[col.name] = BoardCell(col.name, "not run")
            else:
                row_cells[col.name] = _cell(col.name, c)
        b = bk.get(model)
        rows.append(BoardRow(
            model=model, model_sha256=str(mg["model_sha256"].iloc[0]),
            seed=int(mg["seed"].iloc[0]),
            n=int(b.n) if b is not None else int(mg["n"].max()),
            clean=_num(b.clean_acc) if b is not None else None,
            best_known=_num(b.best_known_acc) if b is not None else None,
            best_attack=b.best_attack if b is not None else None,
            best_attack_acc=_num(b.best_attack_acc) if b is not None else None,
            unique_breaks={k: int(v) for k, v in (b.unique_breaks or {}).items()}
            if b is not None else {},
            cells=row_cells,
            exact=(exact or {}).get((suite, model, norm, eps)),
            from_smaller_eps=_carried(b.broken_by) if b is not None else {},
        ))
    rows.sort(key=lambda r: (r.best_known is None, -(r.best_known or 0), -(r.clean or 0),
                             r.model))
    suite_models = (set(models.loc[models["suite"] == suite, "model"])
                    if models is not None and not models.empty else set())
    return Board(suite, str(group["dataset"].iloc[0]), norm, eps, columns, rows,
                 sorted(suite_models - set(group["model"])))
