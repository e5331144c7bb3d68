"""Best-known robust accuracy: a test point is robust only if every attack failed on it.

Computed from the per-sample ``robust`` vectors of the recorded cells, per
(suite, model, norm, ε). Error cells do not count (they attacked nothing). Attacks are
considered in a fixed order (cheapest first, by seconds per sample), and each broken point is
credited to the first attack that broke it.

Cells of different sample counts. A suite may run an expensive attack on fewer test points
than the others (e.g. Brendel-Bethge on the first 200 of 1,000). The test points of a cell with
``n`` points are always the first ``n`` of the split, so a smaller cell covers a prefix of a
larger one. The best-known value is computed over the largest ``n`` of the group: a point is
broken if any cell that covers it broke it (a smaller cell contributes its breaks on its
prefix and says nothing about the points after it). Every broken point was verified, so this
is still an upper bound on the true robust accuracy, and the tightest one the records give.
``best_attack`` is chosen among the cells of the largest ``n`` (their accuracies are
comparable). Cells whose ``clean_correct`` vectors disagree on their common prefix cannot
come from the same test points and raise :class:`results.schema.RecordError` (a ValueError).

Only cells of one measurement setting are combined: the same weights (``model_sha256``), the
same seed and the same test inputs (``inputs_sha256`` of each sample count). Per-sample vectors
of two different networks, or of two different draws of test points, must not be combined:
:func:`best_known` makes one row per (suite, dataset, model, weights, seed, norm, ε) and raises
ValueError when two cells of one row and one sample count saw different inputs.

Across ε. An adversarial example inside the ε-ball is inside every larger ball of the same
norm, so a point broken at ε (by any verified candidate: an attack's or the exact verifier's)
is broken at every larger ε of the same model, weights, seed and norm, in any suite of the same
dataset (suites attack prefixes of one fixed split): best-known at a larger ε counts it (on the
test points both cells cover), and its ``broken_by`` names the attack and the ε, e.g.
``milp-linf at ε=0.02 in mnist5k-oracle``. Without this, a point the verifier breaks at 0.02
but no attack breaks at 0.05 would count as robust at 0.05 although it provably is not.

Retrained models. Records are append-only, so a model that was retrained (other weights, other
``model_sha256``) keeps the cells of its old weights. Boards show each model's current run
(:func:`current_runs`): the weights of its most recently created cell and, among those cells,
the most common seed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from results.schema import RecordError
from results.vocabulary import NORM_LABEL

KEYS = ["suite", "dataset", "model", "model_sha256", "seed", "norm", "eps"]


def best_known(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per (suite, dataset, model, weights, seed, norm, ε).

    Columns: the keys, ``n`` (the largest sample count of the group), ``clean_acc``,
    ``best_known_acc`` (per-sample minimum over the attacks), ``best_attack`` (the single
    attack with the lowest robust accuracy among the cells of ``n`` points),
    ``attacks`` (how many ok cells were combined), ``broken_by`` (attack name per broken test
    point, "<attack> at ε=<ε>" where a cell of a smaller ε broke it, or "" for robust points
    and clean mistakes), ``unique_breaks`` (dict attack → points only that attack broke at
    this ε), ``from_smaller_eps`` (points broken only at a smaller ε).
    """
    columns = [*KEYS, "n", "clean_acc", "best_known_acc", "best_attack", "best_attack_acc",
               "attacks", "broken_by", "unique_breaks", "from_smaller_eps"]
    ok = cells[cells["status"] == "ok"] if len(cells) else cells
    rows = []
    for key, group in ok.groupby(KEYS, sort=True):
        group = group.sort_values(["seconds_per_sample", "attack"])
        if "inputs_sha256" in group and (group.groupby("n")["inputs_sha256"].nunique() > 1).any():
            raise RecordError(f"cells of {key} with the same number of test points have "
                             "different inputs_sha256: they did not see the same test points")
        n = int(group["n"].max())
        full = group[group["n"] == n]
        clean_ok = np.array(full["clean_correct"].iloc[0], dtype=bool)
        # (attacks, n): a point beyond a smaller cell's prefix was not broken by that cell
        robust = np.ones((len(group), n), dtype=bool)
        for row, (vec, clean) in enumerate(zip(group["robust"], group["clean_correct"],
                                               strict=True)):
            m = len(vec)
            if not np.array_equal(np.array(clean, dtype=bool), clean_ok[:m]):
                raise RecordError(f"cells of {key} disagree on which of their common test "
                                 "points are correctly classified: they did not see the same "
                                 "test points")
            robust[row, :m] = np.array(vec, dtype=bool)
        combined = robust.all(axis=0)
        broken_by = [""] * n
        for name, vec in zip(group["attack"], robust, strict=True):
            for i in np.flatnonzero(~vec & clean_ok):
                if not broken_by[i]:
                    broken_by[i] = name
        unique = {}
        for i, name in enumerate(group["attack"]):
            others = np.delete(robust, i, axis=0).all(axis=0) if len(robust) > 1 else clean_ok
            unique[name] = int((~robust[i] & others & clean_ok).sum())
        best = full.loc[full["robust_acc"].idxmin()]
        rows.append({
            **dict(zip(KEYS, key, strict=True)), "n": n,
            "clean_acc": float(full["clean_acc"].iloc[0]),
            "best_known_acc": float(combined.mean()),
            "best_attack": best["attack"], "best_attack_acc": float(best["robust_acc"]),
            "attacks": len(group), "broken_by": broken_by, "unique_breaks": unique,
            "from_smaller_eps": 0, "_clean": clean_ok,
        })
    _carry_over_eps(rows)
    for r in rows:
        del r["_clean"]
    return pd.DataFrame(rows, columns=columns)


def _carry_over_eps(rows: list[dict]) -> None:
    """Credit each row with the points broken at a smaller ε of the same model, weights, seed
    and norm, in any suite of the same dataset (on the test points both rows cover; the first
    n test points of a split are the same in every suite), in place."""
    runs: dict[tuple, list[dict]] = {}
    for r in rows:
        runs.setdefault(tuple(r[k] for k in KEYS if k not in ("eps", "suite")), []).append(r)
    for run in runs.values():
        # per point, the first break at a smaller ε: (attack, ε, suite), or None
        broken: list[tuple[str, float, str] | None] = []
        clean = np.zeros(0, dtype=bool)
        levels: dict[float, list[dict]] = {}
        for r in run:
            levels.setdefault(float(r["eps"]), []).append(r)
        for eps in sorted(levels):
            for r in levels[eps]:
                m = min(len(broken), len(r["broken_by"]))
                if not np.array_equal(clean[:m], r["_clean"][:m]):
                    continue  # not the same test points: nothing to carry over
                labels = r["broken_by"]
                for i in range(m):
                    if broken[i] is not None and not labels[i] and r["_clean"][i]:
                        attack, at, suite = broken[i]
                        where = "" if suite == r["suite"] else f" in {suite}"
                        labels[i] = f"{attack} at ε={at:g}{where}"
                        r["from_smaller_eps"] += 1
                standing = np.array([b == "" for b in labels], dtype=bool) & r["_clean"]
                r["best_known_acc"] = float(standing.mean())
            for r in levels[eps]:  # this level's own breaks serve the larger ε
                own = [(b, eps, r["suite"]) if b and " at ε=" not in b else None
                       for b in r["broken_by"]]
                broken = [old or new for old, new in zip(broken, own, strict=False)] \
                    + own[len(broken):] + broken[len(own):]
                if len(r["_clean"]) > len(clean):
                    clean = r["_clean"]


def current_runs(cells: pd.DataFrame) -> pd.DataFrame:
    """The cells of each model's current run: its most recent weights (:func:`current_weights`)
    and, among their cells, the most common seed (ties: the seed of the latest cell)."""
    cells = current_weights(cells)
    if "seed" not in cells.columns or cells.empty:
        return cells
    keys = ["suite", "dataset", "model"]
    order = cells.sort_values("created", kind="stable") if "created" in cells.columns else cells
    chosen = {}
    for key, g in order.groupby(keys, sort=False):
        counts = g["seed"].value_counts()
        top = counts[counts == counts.max()].index
        chosen[key] = next(s for s in reversed(g["seed"].tolist()) if s in set(top))
    mask = [chosen[(r.suite, r.dataset, r.model)] == r.seed
            for r in cells[keys + ["seed"]].itertuples()]
    return cells[mask]


def current_weights(cells: pd.DataFrame) -> pd.DataFrame:
    """The cells of each model's most recent weights (by ``created``, then by row order)."""
    if "model_sha256" not in cells.columns or cells.empty:
        return cells
    order = cells.sort_values("created", kind="stable") if "created" in cells.columns else cells
    latest = order.groupby(["suite", "dataset", "model"])["model_sha256"].last()
    current = cells.join(latest.rename("_current"), on=["suite", "dataset", "model"])
    return cells[current["_current"] == cells["model_sha256"]]


def best_known_or_note(cells: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """:func:`best_known` per norm, every suite together (a point broken at a smaller ε, in any
    suite of the dataset, counts at every larger one), for readers that must not fail on
    records that do not fit together (the site). Where a norm's cells do not, it goes per
    suite and threat model; a group whose cells did not see the same test points keeps the
    cells of its most common (n, test inputs), and one that still does not fit has no
    best-known value; each such group gets a line in ``notes``."""
    if cells.empty:
        return best_known(cells)
    parts = []
    for _, by_norm in cells.groupby("norm", sort=True):
        try:
            parts.append(best_known(by_norm))
            continue
        except ValueError:
            pass
        for (suite, norm, eps), group in by_norm.groupby(["suite", "norm", "eps"], sort=True):
            try:
                parts.append(best_known(group))
                continue
            except ValueError:
                pass
            where = f"suite {suite}, {NORM_LABEL.get(norm, norm)} ε = {eps:g}"
            n, inputs = group.groupby(["n", "inputs_sha256"]).size().idxmax()
            kept = group[(group["n"] == n) & (group["inputs_sha256"] == inputs)]
            try:
                parts.append(best_known(kept))
            except ValueError as exc:
                notes.append(f"{where}: no best-known value, its cells do not fit together "
                             f"({exc})")
                continue
            notes.append(f"{where}: its cells did not all see the same test points; "
                         f"best-known values use the {len(kept)} of {len(group)} cells on the "
                         f"most common ones (n = {n}) only")
    return pd.concat(parts, ignore_index=True) if parts else best_known(cells.iloc[:0])
