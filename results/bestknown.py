"""Best-known robust accuracy: a test point is robust only if every attack failed on it.

Computed from the per-sample ``robust`` vectors of the recorded cells, per
(suite, model, norm, ε). Error cells do not count (they attacked nothing). Attacks are
considered in a fixed order (cheapest first, by seconds per sample), and each broken point is
credited to the first attack that broke it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

KEYS = ["suite", "dataset", "model", "norm", "eps"]


def best_known(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per (suite, dataset, model, norm, ε).

    Columns: the keys, ``n``, ``clean_acc``, ``best_known_acc`` (per-sample minimum over the
    attacks), ``best_attack`` (the single attack with the lowest robust accuracy),
    ``attacks`` (how many ok cells were combined), ``broken_by`` (attack name per broken test
    point, or "" for robust points and clean mistakes), ``unique_breaks`` (dict attack → points
    only that attack broke).
    """
    columns = [*KEYS, "n", "clean_acc", "best_known_acc", "best_attack", "best_attack_acc",
               "attacks", "broken_by", "unique_breaks"]
    ok = cells[cells["status"] == "ok"] if len(cells) else cells
    rows = []
    for key, group in ok.groupby(KEYS, sort=True):
        group = group.sort_values(["seconds_per_sample", "attack"])
        n = int(group["n"].iloc[0])
        if (group["n"] != n).any():
            raise ValueError(f"cells of {key} have different sample counts; rerun with one n")
        robust = np.array(group["robust"].tolist(), dtype=bool)  # (attacks, n)
        combined = robust.all(axis=0)
        clean_ok = np.array(group["clean_correct"].iloc[0], dtype=bool)
        broken_by = [""] * n
        for name, vec in zip(group["attack"], robust, strict=True):
            for i in np.flatnonzero(~vec & clean_ok):
                if not broken_by[i]:
                    broken_by[i] = name
        unique = {}
        for i, name in enumerate(group["attack"]):
            others = np.delete(robust, i, axis=0).all(axis=0) if len(robust) > 1 else clean_ok
            unique[name] = int((~robust[i] & others & clean_ok).sum())
        best = group.loc[group["robust_acc"].idxmin()]
        rows.append({
            **dict(zip(KEYS, key, strict=True)), "n": n,
            "clean_acc": float(group["clean_acc"].iloc[0]),
            "best_known_acc": float(combined.mean()),
            "best_attack": best["attack"], "best_attack_acc": float(best["robust_acc"]),
            "attacks": len(group), "broken_by": broken_by, "unique_breaks": unique,
        })
    return pd.DataFrame(rows, columns=columns)

