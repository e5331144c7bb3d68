"""How far from optimal are the attacks? Every attack against the exact verifier's truth.

Where a board row (suite, model, norm, ε) has a verifier cell (family ``exact``, e.g.
``milp-linf``: see :mod:`results.exact`), its per-point verdicts say which test points are
truly breakable (``broken``: a verified counterexample exists) and which are proved robust.
For each attack of that row, on the test points it shares with the verifier:

* its robust accuracy beside the exact one (or the interval [proved, best-known] where the
  verifier left points undecided);
* how many of the truly breakable points it **missed** (left standing), and their share;
* the same for **all attacks together** (a point missed only if every attack covering it
  left it standing): what the harness's best-known misses of the truth.

This module imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from results.exact import KEY, Exact, exact_summaries, verdicts_of

#: the label of the combined row
TOGETHER = "all attacks together"


@dataclass(frozen=True)
class Miss:
    """One attack (or all together) against the verifier on ``n`` shared test points."""

    attack: str
    n: int
    robust: int  # points it left standing (correct and not broken)
    breakable: int  # points the verifier broke among the n
    missed: int  # breakable points it left standing

    @property
    def robust_acc(self) -> float:
        return self.robust / self.n if self.n else float("nan")

    @property
    def missed_share(self) -> float | None:
        return self.missed / self.breakable if self.breakable else None


@dataclass(frozen=True)
class Optimality:
    """One board row with a verifier: its truth and every attack's distance to it."""

    suite: str
    model: str
    norm: str
    eps: float
    exact: Exact
    misses: list[Miss] = field(default_factory=list)  # per attack, then TOGETHER last


def optimality(cells: pd.DataFrame) -> list[Optimality]:
    """Rows of ``cells`` (current runs, ok cells) that hold a verifier, in (suite, model, norm,
    ε) order."""
    out: list[Optimality] = []
    if cells.empty:
        return out
    ok = cells[cells["status"] == "ok"]
    summaries = exact_summaries(ok)
    for key, group in ok.groupby(list(KEY), sort=True):
        ex = summaries.get(tuple(key))
        if ex is None:
            continue
        verdicts = np.array(next(verdicts_of(c) for c in group.itertuples()
                                 if c.attack == ex.verifier))
        breakable = verdicts == "broken"
        standing_all = np.ones(ex.n, dtype=bool)
        covered = np.zeros(ex.n, dtype=bool)
        misses = []
        for c in sorted(group.itertuples(), key=lambda c: c.attack):
            if c.attack == ex.verifier or verdicts_of(c) is not None:
                continue
            vec = np.array(c.robust, dtype=bool)
            m = min(len(vec), ex.n)
            standing_all[:m] &= vec[:m]
            covered[:m] = True
            misses.append(Miss(c.attack, m, int(vec[:m].sum()), int(breakable[:m].sum()),
                               int((breakable[:m] & vec[:m]).sum())))
        if misses:
            # a point no attack covers says nothing about the attacks: left out of the n
            together = standing_all & covered
            misses.append(Miss(TOGETHER, int(covered.sum()), int(together.sum()),
                               int((breakable & covered).sum()),
                               int((breakable & together).sum())))
        out.append(Optimality(*key[:3], float(key[3]), ex, misses))
    return out


def exact_robust(cells: pd.DataFrame) -> dict[tuple, list[int]]:
    """(suite, model, norm, ε) → the verifier's robust flags on its decided points (1: proved
    robust, 0: broken or misclassified clean; undecided points left out), with the indices of
    those points: ``(flags, indices)``."""
    out = {}
    ok = cells[cells["status"] == "ok"] if len(cells) else cells
    for key, ex in exact_summaries(ok).items():
        cell = next(c for c in ok.itertuples() if (c.suite, c.model, c.norm, c.eps) == key
                    and c.attack == ex.verifier)
        v = verdicts_of(cell)
        idx = [i for i, s in enumerate(v) if s != "unknown"]
        out[key] = ([int(v[i] == "robust") for i in idx], idx)
    return out


__all__ = ["TOGETHER", "Miss", "Optimality", "exact_robust", "optimality"]
