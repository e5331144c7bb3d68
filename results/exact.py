"""Exact ground truth from verifier cells, and every attack's distance to it.

A verifier (an attack of family ``exact``, e.g. ``milp-linf``) records one verdict per test
point in ``info["verdicts"]``: ``robust`` (proved: no input in the ε-ball changes the
prediction), ``broken`` (a verified counterexample), ``unknown`` (its time limit ran out) or
``""`` (misclassified clean). From them, per (suite, model, norm, ε) of the current runs:

* the exact robust accuracy when no point is unknown; otherwise the interval it lies in, from
  the share proved robust up to the best-known accuracy of the same points;
* each attack's **optimality gap**: its robust accuracy minus the exact one, both on the points
  the verifier decided (clean mistakes count as decided and non-robust for both), on the
  prefix of test points the attack and the verifier share;
* **contradictions**: an attack that broke a point the verifier proved robust. That cannot
  happen unless the verifier or the verification of adversarial examples is wrong; the site
  flags it and a test fails on it.

This module imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from results.vocabulary import family_of

KEY = ("suite", "model", "norm", "eps")


@dataclass(frozen=True)
class Exact:
    """The verifier's ground truth for one board row."""

    verifier: str  # the verifier's attack name
    n: int  # its test points (a prefix of the row's)
    proved: int
    broken: int
    unknown: int
    clean_wrong: int
    upper: float  # best-known robust accuracy on the verifier's n points (all cells)
    gaps: dict[str, float] = field(default_factory=dict)  # attack → gap on decided points
    decided_of: dict[str, int] = field(default_factory=dict)  # attack → decided points compared
    contradictions: dict[str, list[int]] = field(default_factory=dict)  # attack → points

    @property
    def lower(self) -> float:
        """The share proved robust: a lower bound on the exact robust accuracy."""
        return self.proved / self.n if self.n else 0.0

    @property
    def exact(self) -> float | None:
        """The exact robust accuracy, when every point was decided."""
        return self.lower if self.unknown == 0 else None

    @property
    def decided(self) -> int:
        return self.n - self.unknown


def verdicts_of(cell: Any) -> list[str] | None:
    """The per-point verdicts of a verifier cell, or None for any other cell."""
    info = cell.info if isinstance(cell.info, dict) else {}
    v = info.get("verdicts")
    if family_of(cell.attack_config) != "exact" or not isinstance(v, list):
        return None
    return [str(x) for x in v]


def exact_summaries(cells: pd.DataFrame) -> dict[tuple, Exact]:
    """(suite, model, norm, ε) → :class:`Exact`, for the groups of ``cells`` (one run per
    model, see :func:`results.bestknown.current_runs`) that hold an ok verifier cell; with
    several, the one on the most test points."""
    out: dict[tuple, Exact] = {}
    if cells.empty:
        return out
    ok = cells[cells["status"] == "ok"]
    for key, group in ok.groupby(list(KEY), sort=True):
        verifiers = [(c, v) for c in group.itertuples() if (v := verdicts_of(c)) is not None]
        if not verifiers:
            continue
        cell, verdicts = max(verifiers, key=lambda t: (len(t[1]), t[0].attack))
        n = len(verdicts)
        v = np.array(verdicts)
        proved, decided = v == "robust", v != "unknown"
        robust_all = np.ones(n, dtype=bool)
        gaps, compared, contra = {}, {}, {}
        for c in group.itertuples():
            vec = np.array(c.robust, dtype=bool)
            m = min(len(vec), n)
            robust_all[:m] &= vec[:m]
            if c.attack == cell.attack:
                continue
            hit = np.flatnonzero(proved[:m] & ~vec[:m])
            if len(hit):
                contra[c.attack] = hit.tolist()
            d = decided[:m]
            if d.any():
                gaps[c.attack] = float(vec[:m][d].mean() - proved[:m][d].mean())
                compared[c.attack] = int(d.sum())
        out[tuple(key)] = Exact(
            verifier=cell.attack, n=n, proved=int(proved.sum()),
            broken=int((v == "broken").sum()), unknown=int((v == "unknown").sum()),
            clean_wrong=int((v == "").sum()), upper=float(robust_all.mean()),
            gaps=gaps, decided_of=compared, contradictions=contra)
    return out


def contradictions(cells: pd.DataFrame) -> list[dict]:
    """Every (suite, model, norm, ε, attack, point) where an attack broke a point that a
    verifier proved robust, over all runs in ``cells`` (each run's weights and seed apart)."""
    out = []
    if cells.empty:
        return out
    for (sha, seed), run in cells.groupby(["model_sha256", "seed"], sort=True):
        for key, ex in exact_summaries(run).items():
            for attack, points in ex.contradictions.items():
                out.extend({**dict(zip(KEY, key, strict=True)), "model_sha256": sha,
                            "seed": int(seed), "attack": attack, "verifier": ex.verifier,
                            "point": p} for p in points)
    return out


__all__ = ["Exact", "contradictions", "exact_summaries", "verdicts_of"]
